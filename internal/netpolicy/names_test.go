package netpolicy

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestNames(t *testing.T) {
	a := netip.MustParseAddr("93.184.216.34")
	b := netip.MustParseAddr("2606:2800:220:1::1")
	tests := []struct {
		name string
		opts []NamesOption
		// run records and steps the clock, then the test looks up a.
		run       func(n *Names, c *fakeClock)
		wantNames []string
		wantLen   int
	}{
		{
			name: "a recorded answer is found by its address, normalized",
			run: func(n *Names, _ *fakeClock) {
				n.Record("Example.COM.", []netip.Addr{a, b}, time.Minute)
			},
			wantNames: []string{"example.com"},
			wantLen:   2,
		},
		{
			name: "several names for one address come back sorted",
			run: func(n *Names, _ *fakeClock) {
				n.Record("b.test", []netip.Addr{a}, time.Minute)
				n.Record("a.test", []netip.Addr{a}, time.Minute)
				n.Record("c.test", []netip.Addr{b}, time.Minute)
			},
			wantNames: []string{"a.test", "b.test"},
			wantLen:   3,
		},
		{
			name: "an IPv4-mapped answer is found by the IPv4 address",
			run: func(n *Names, _ *fakeClock) {
				n.Record("mapped.test", []netip.Addr{netip.MustParseAddr("::ffff:93.184.216.34")}, time.Minute)
			},
			wantNames: []string{"mapped.test"},
			wantLen:   1,
		},
		{
			name: "an answer is forgotten when its TTL expires",
			run: func(n *Names, c *fakeClock) {
				n.Record("short.test", []netip.Addr{a}, 2*time.Minute)
				n.Record("long.test", []netip.Addr{a}, 10*time.Minute)
				c.Step(2 * time.Minute)
			},
			wantNames: []string{"long.test"},
			wantLen:   1,
		},
		{
			name: "a TTL of zero is raised to the floor",
			run: func(n *Names, c *fakeClock) {
				n.Record("zero.test", []netip.Addr{a}, 0)
				c.Step(DefaultNamesMinTTL - time.Second)
			},
			wantNames: []string{"zero.test"},
			wantLen:   1,
		},
		{
			name: "a long TTL is capped",
			run: func(n *Names, c *fakeClock) {
				n.Record("day.test", []netip.Addr{a}, 24*time.Hour)
				c.Step(DefaultNamesMaxTTL)
			},
			wantNames: nil,
			wantLen:   0,
		},
		{
			name: "the floor and the cap can be set",
			opts: []NamesOption{WithNamesTTL(time.Second, 5*time.Second)},
			run: func(n *Names, c *fakeClock) {
				n.Record("zero.test", []netip.Addr{a}, 0)
				n.Record("day.test", []netip.Addr{a}, 24*time.Hour)
				c.Step(2 * time.Second)
			},
			wantNames: []string{"day.test"},
			wantLen:   1,
		},
		{
			name: "recording a pair again refreshes its expiry",
			run: func(n *Names, c *fakeClock) {
				n.Record("again.test", []netip.Addr{a}, time.Minute)
				c.Step(50 * time.Second)
				n.Record("again.test", []netip.Addr{a}, time.Minute)
				c.Step(50 * time.Second)
			},
			wantNames: []string{"again.test"},
			wantLen:   1,
		},
		{
			name: "when full the oldest pair is evicted",
			opts: []NamesOption{WithNamesMaxEntries(3)},
			run: func(n *Names, _ *fakeClock) {
				for i := range 5 {
					n.Record(fmt.Sprintf("n%d.test", i), []netip.Addr{a}, time.Minute)
				}
			},
			wantNames: []string{"n2.test", "n3.test", "n4.test"},
			wantLen:   3,
		},
		{
			name: "a refreshed pair is evicted after newer ones",
			opts: []NamesOption{WithNamesMaxEntries(2)},
			run: func(n *Names, _ *fakeClock) {
				n.Record("first.test", []netip.Addr{a}, time.Minute)
				n.Record("second.test", []netip.Addr{a}, time.Minute)
				n.Record("first.test", []netip.Addr{a}, time.Minute)
				n.Record("third.test", []netip.Addr{a}, time.Minute)
			},
			wantNames: []string{"first.test", "third.test"},
			wantLen:   2,
		},
		{
			name: "empty names and invalid addresses are ignored",
			run: func(n *Names, _ *fakeClock) {
				n.Record(".", []netip.Addr{a}, time.Minute)
				n.Record("x.test", []netip.Addr{{}}, time.Minute)
			},
			wantNames: nil,
			wantLen:   0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c := newFakeClock()
			n := NewNames(append([]NamesOption{WithNamesClock(c.Now)}, tt.opts...)...)
			tt.run(n, c)
			g.Expect(n.Lookup(a)).To(Equal(tt.wantNames))
			g.Expect(n.Len()).To(Equal(tt.wantLen))
		})
	}
}

// TestNamesFeedDecide is the path the stack takes: query, filter, record,
// then decide a flow by the names its address resolved from.
func TestNamesFeedDecide(t *testing.T) {
	g := NewWithT(t)
	p, err := Compile(spec("", allow(suffix(".example.com"), protos("TCP"), port(443))), testHost)
	g.Expect(err).NotTo(HaveOccurred())
	c := newFakeClock()
	names := NewNames(WithNamesClock(c.Now))
	dst := netip.MustParseAddrPort("93.184.216.34:443")

	g.Expect(p.AllowName("api.example.com")).To(BeTrue())
	kept, _ := p.FilterAnswer("api.example.com", []netip.Addr{dst.Addr()})
	names.Record("api.example.com", kept, time.Minute)

	d := p.Decide(Flow{Proto: ProtoTCP, Dst: dst, Names: names.Lookup(dst.Addr())})
	g.Expect(d.Allow).To(BeTrue(), d.Reason)
	g.Expect(d.Reason).To(Equal("allowed by rule 0 (domainSuffix .example.com, TCP, port 443)"))

	c.Step(time.Minute)
	d = p.Decide(Flow{Proto: ProtoTCP, Dst: dst, Names: names.Lookup(dst.Addr())})
	g.Expect(d.Allow).To(BeFalse(), "after the answer expires the address alone is judged")
	g.Expect(d.Class).To(Equal(ClassDefault))
}

func TestNamesIsSafeForConcurrentUse(t *testing.T) {
	g := NewWithT(t)
	n := NewNames(WithNamesMaxEntries(64))
	a := netip.MustParseAddr("93.184.216.34")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				n.Record(fmt.Sprintf("n%d-%d.test", i, j), []netip.Addr{a}, time.Minute)
				_ = n.Lookup(a)
			}
		})
	}
	wg.Wait()
	g.Expect(n.Len()).To(Equal(64))
	g.Expect(n.Lookup(a)).To(HaveLen(64))
}
