package netpolicy

import (
	"net/netip"
	"sync"
	"time"
)

// DefaultRecentDenials is the size of the ring of recent denials.
const DefaultRecentDenials = 32

// maxDenialNames bounds the names kept with one recent denial.
const maxDenialNames = 8

// Denial is one denied flow.
type Denial struct {
	Time  time.Time
	Proto Proto
	Dst   netip.AddrPort
	// Names are the flow's names, at most 8.
	Names []string
	// Rule is the deciding rule's index, or RuleNone.
	Rule int
	// Class is Decision.Class.
	Class  string
	Reason string
}

// DenialsSnapshot is a copy of the accounting, for status and metrics.
type DenialsSnapshot struct {
	// Total counts every denial ever recorded.
	Total uint64
	// ByClass counts denials by Decision.Class: "rule", "default",
	// "group:<group>", "reserved", "disabled", "invalid". The keys come from
	// a fixed set, so they are fit for a metrics label.
	ByClass map[string]uint64
	// Recent are the latest denials, oldest first.
	Recent []Denial
}

// Denials counts denied flows and keeps the most recent ones. It is safe
// for concurrent use. The zero value is not usable; use NewDenials.
type Denials struct {
	now func() time.Time

	mu      sync.Mutex
	total   uint64
	byClass map[string]uint64
	// ring holds the recent denials; next is where the next one goes.
	ring []Denial
	next int
	full bool
}

// DenialsOption configures NewDenials.
type DenialsOption func(*Denials)

// WithDenialsClock sets the clock; tests inject a fake one. Default
// time.Now.
func WithDenialsClock(now func() time.Time) DenialsOption {
	return func(d *Denials) { d.now = now }
}

// WithRecentDenials sets the size of the ring of recent denials. Values
// below 1 keep the default.
func WithRecentDenials(size int) DenialsOption {
	return func(d *Denials) {
		if size > 0 {
			d.ring = make([]Denial, size)
		}
	}
}

// NewDenials returns empty accounting.
func NewDenials(opts ...DenialsOption) *Denials {
	d := &Denials{
		now:     time.Now,
		byClass: map[string]uint64{},
		ring:    make([]Denial, DefaultRecentDenials),
	}
	for _, o := range opts {
		o(d)
	}
	return d
}

// Record accounts for a flow Decide denied; allowed decisions are ignored,
// so callers may record every decision.
func (d *Denials) Record(f Flow, dec Decision) {
	if dec.Allow {
		return
	}
	class := dec.Class
	if class == "" {
		class = "unknown"
	}
	names := f.Names
	if len(names) > maxDenialNames {
		names = names[:maxDenialNames]
	}
	den := Denial{
		Proto:  f.Proto,
		Dst:    f.Dst,
		Names:  append([]string(nil), names...),
		Rule:   dec.Rule,
		Class:  class,
		Reason: dec.Reason,
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	den.Time = d.now()
	d.total++
	d.byClass[class]++
	d.ring[d.next] = den
	d.next++
	if d.next == len(d.ring) {
		d.next, d.full = 0, true
	}
}

// Snapshot copies the counters and the recent denials.
func (d *Denials) Snapshot() DenialsSnapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := DenialsSnapshot{Total: d.total, ByClass: make(map[string]uint64, len(d.byClass))}
	for k, v := range d.byClass {
		s.ByClass[k] = v
	}
	if d.full {
		s.Recent = append(s.Recent, d.ring[d.next:]...)
	}
	s.Recent = append(s.Recent, d.ring[:d.next]...)
	// Names slices are never written after Record, so sharing them is safe.
	return s
}
