package netpolicy

import (
	"container/list"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Defaults of Names.
const (
	// DefaultNamesMinTTL is the shortest time an answer is remembered. A
	// TTL of 0 is common, and the guest connects right after it resolves:
	// without a floor the flow would arrive after its name was forgotten.
	DefaultNamesMinTTL = 30 * time.Second
	// DefaultNamesMaxTTL caps how long an answer is remembered, so that an
	// address that has since changed hands does not keep a name's Allow rule
	// for a day. Guests that cache longer than this (a JVM with an infinite
	// DNS cache) see their flows judged by address alone after it.
	DefaultNamesMaxTTL = time.Hour
	// DefaultNamesMaxEntries bounds the memory: one entry per (name,
	// address) pair, about 100 bytes each.
	DefaultNamesMaxEntries = 4096
)

// Names remembers which DNS names resolved to which addresses, from the
// answers the stack's resolver served, so that Decide can match domain rules
// against a flow that carries only an address. It is safe for concurrent
// use. The zero value is not usable; use NewNames.
//
// Each (name, address) pair lives for its answer's TTL, clamped to
// [MinTTL, MaxTTL]. When full, the pair recorded or refreshed longest ago is
// evicted first, whether or not it has expired.
type Names struct {
	now        func() time.Time
	minTTL     time.Duration
	maxTTL     time.Duration
	maxEntries int

	mu sync.Mutex
	// byIP maps an address to its pairs; each value is an element of order.
	byIP map[netip.Addr]map[string]*list.Element
	// order holds *nameEntry, least recently recorded first.
	order *list.List
}

type nameEntry struct {
	name    string
	ip      netip.Addr
	expires time.Time
}

// NamesOption configures NewNames.
type NamesOption func(*Names)

// WithNamesClock sets the clock; tests inject a fake one. Default time.Now.
func WithNamesClock(now func() time.Time) NamesOption {
	return func(n *Names) { n.now = now }
}

// WithNamesTTL sets the floor and the cap of a remembered answer's
// lifetime. Values that are not positive keep the defaults.
func WithNamesTTL(minTTL, maxTTL time.Duration) NamesOption {
	return func(n *Names) {
		if minTTL > 0 {
			n.minTTL = minTTL
		}
		if maxTTL > 0 {
			n.maxTTL = maxTTL
		}
	}
}

// WithNamesMaxEntries bounds the number of (name, address) pairs. Values
// below 1 keep the default.
func WithNamesMaxEntries(max int) NamesOption {
	return func(n *Names) {
		if max > 0 {
			n.maxEntries = max
		}
	}
}

// NewNames returns an empty memory.
func NewNames(opts ...NamesOption) *Names {
	n := &Names{
		now:        time.Now,
		minTTL:     DefaultNamesMinTTL,
		maxTTL:     DefaultNamesMaxTTL,
		maxEntries: DefaultNamesMaxEntries,
		byIP:       map[netip.Addr]map[string]*list.Element{},
		order:      list.New(),
	}
	for _, o := range opts {
		o(n)
	}
	if n.minTTL > n.maxTTL {
		n.minTTL = n.maxTTL
	}
	return n
}

// Record remembers that name resolved to ips for ttl (clamped). Record only
// what the guest was actually given: the kept addresses of FilterAnswer. A
// pair recorded again is refreshed: its expiry is reset and it becomes the
// newest.
func (n *Names) Record(name string, ips []netip.Addr, ttl time.Duration) {
	name = normalizeName(name)
	if name == "" {
		return
	}
	ttl = min(max(ttl, n.minTTL), n.maxTTL)
	n.mu.Lock()
	defer n.mu.Unlock()
	expires := n.now().Add(ttl)
	for _, ip := range ips {
		if !ip.IsValid() {
			continue
		}
		ip = canonical(ip)
		byName := n.byIP[ip]
		if byName == nil {
			byName = map[string]*list.Element{}
			n.byIP[ip] = byName
		}
		if el, ok := byName[name]; ok {
			el.Value.(*nameEntry).expires = expires
			n.order.MoveToBack(el)
			continue
		}
		byName[name] = n.order.PushBack(&nameEntry{name: name, ip: ip, expires: expires})
		for n.order.Len() > n.maxEntries {
			n.remove(n.order.Front())
		}
	}
}

// Lookup returns the names, sorted, whose unexpired answers contained ip.
// Expired pairs it meets are forgotten.
func (n *Names) Lookup(ip netip.Addr) []string {
	ip = canonical(ip)
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.now()
	var names []string
	for name, el := range n.byIP[ip] {
		if !now.Before(el.Value.(*nameEntry).expires) {
			n.remove(el)
			continue
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Len is the number of remembered pairs, expired ones included until they
// are met or evicted.
func (n *Names) Len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.order.Len()
}

// remove forgets one pair. n.mu must be held.
func (n *Names) remove(el *list.Element) {
	e := n.order.Remove(el).(*nameEntry)
	byName := n.byIP[e.ip]
	delete(byName, e.name)
	if len(byName) == 0 {
		delete(n.byIP, e.ip)
	}
}
