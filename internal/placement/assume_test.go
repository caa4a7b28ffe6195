package placement

import (
	"fmt"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"
)

// fakeClock is a settable clock for Assumer.Now.
type fakeClock struct{ now time.Time }

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time       { return c.now }
func (c *fakeClock) Step(d time.Duration) { c.now = c.now.Add(d) }

// slots builds a node modifier with ample cpus and memory and n sandbox slots.
func slots(n int64) func(*Node) { return withAllocatable(64, 65536, n) }

func requestWithUID(uid types.UID) Request {
	return request(func(r *Request) { r.UID = uid })
}

// placedOn is a claim for a default sandbox (1 cpu, 512 MiB) on node.
func placedOn(uid types.UID, node string) Claim {
	return Claim{UID: uid, Node: node, Resources: Resources{CPUs: 1, MemoryMiB: 512, Sandboxes: 1}}
}

func claimsOf(cs ...Claim) func() []Claim { return func() []Claim { return cs } }

func noClaims() []Claim { return nil }

func TestAssumer(t *testing.T) {
	const ttl = time.Minute

	tests := []struct {
		name  string
		nodes []Node
		// between runs after the first sandbox, "first", was placed.
		between func(a *Assumer, clock *fakeClock)
		// claims is what the cache shows when the second sandbox is placed.
		claims []Claim

		wantSecondNode    string
		wantSecondMessage string
		wantFirstAssumed  bool
		wantLen           int
	}{
		{
			name:              "the next placement counts an assumption the cache does not show yet",
			nodes:             []Node{node("a", slots(1))},
			wantSecondMessage: "0/1 nodes are available: 1 too many sandboxes.",
			wantFirstAssumed:  true,
			wantLen:           1,
		},
		{
			name:              "an assumption confirmed by a claim on the same node is dropped and counted once",
			nodes:             []Node{node("a", slots(1))},
			claims:            []Claim{placedOn("first", "a")},
			wantSecondMessage: "0/1 nodes are available: 1 too many sandboxes.",
			wantFirstAssumed:  false,
			wantLen:           0,
		},
		{
			name:             "a confirmed assumption is not counted on top of its claim",
			nodes:            []Node{node("a", slots(2))},
			claims:           []Claim{placedOn("first", "a")},
			wantSecondNode:   "a",
			wantFirstAssumed: false,
			wantLen:          1,
		},
		{
			name:              "a claim that shows the sandbox unplaced keeps the assumption counted",
			nodes:             []Node{node("a", slots(1))},
			claims:            []Claim{placedOn("first", "")},
			wantSecondMessage: "0/1 nodes are available: 1 too many sandboxes.",
			wantFirstAssumed:  true,
			wantLen:           1,
		},
		{
			name:              "a claim on another node does not confirm the assumption",
			nodes:             []Node{node("a", slots(1)), node("b", slots(1))},
			claims:            []Claim{placedOn("first", "b")},
			wantSecondMessage: "0/2 nodes are available: 2 too many sandboxes.",
			wantFirstAssumed:  true,
			wantLen:           1,
		},
		{
			name:              "claims of other sandboxes are counted with the assumption",
			nodes:             []Node{node("a", slots(2))},
			claims:            []Claim{placedOn("other", "a")},
			wantSecondMessage: "0/1 nodes are available: 1 too many sandboxes.",
			wantFirstAssumed:  true,
			wantLen:           1,
		},
		{
			name:             "Forget releases the capacity",
			nodes:            []Node{node("a", slots(1))},
			between:          func(a *Assumer, _ *fakeClock) { a.Forget("first") },
			wantSecondNode:   "a",
			wantFirstAssumed: false,
			wantLen:          1,
		},
		{
			name:              "forgetting an unknown sandbox changes nothing",
			nodes:             []Node{node("a", slots(1))},
			between:           func(a *Assumer, _ *fakeClock) { a.Forget("unknown") },
			wantSecondMessage: "0/1 nodes are available: 1 too many sandboxes.",
			wantFirstAssumed:  true,
			wantLen:           1,
		},
		{
			name:             "an assumption older than the TTL releases the capacity",
			nodes:            []Node{node("a", slots(1))},
			between:          func(_ *Assumer, c *fakeClock) { c.Step(ttl + time.Second) },
			wantSecondNode:   "a",
			wantFirstAssumed: false,
			wantLen:          1,
		},
		{
			name:              "an assumption exactly as old as the TTL stays counted",
			nodes:             []Node{node("a", slots(1))},
			between:           func(_ *Assumer, c *fakeClock) { c.Step(ttl) },
			wantSecondMessage: "0/1 nodes are available: 1 too many sandboxes.",
			wantFirstAssumed:  true,
			wantLen:           1,
		},
		{
			name:  "with a TTL of zero assumptions never expire",
			nodes: []Node{node("a", slots(1))},
			between: func(a *Assumer, c *fakeClock) {
				a.TTL = 0
				c.Step(1000 * time.Hour)
			},
			wantSecondMessage: "0/1 nodes are available: 1 too many sandboxes.",
			wantFirstAssumed:  true,
			wantLen:           1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			clock := newFakeClock()
			a := NewAssumer(ttl)
			a.Now = clock.Now

			first := a.Place(requestWithUID("first"), tt.nodes, noClaims)
			g.Expect(first.Node).To(Equal("a"))
			g.Expect(a.Len()).To(Equal(1))

			if tt.between != nil {
				tt.between(a, clock)
			}

			second := a.Place(requestWithUID("second"), tt.nodes, claimsOf(tt.claims...))
			g.Expect(second.Node).To(Equal(tt.wantSecondNode))
			if tt.wantSecondNode == "" {
				g.Expect(second.Message()).To(Equal(tt.wantSecondMessage))
			}

			node, ok := a.Assumed("first")
			g.Expect(ok).To(Equal(tt.wantFirstAssumed))
			if tt.wantFirstAssumed {
				g.Expect(node).To(Equal("a"))
			} else {
				g.Expect(node).To(BeEmpty())
			}
			g.Expect(a.Len()).To(Equal(tt.wantLen))
		})
	}
}

func TestAssumerAssumed(t *testing.T) {
	tests := []struct {
		name     string
		place    bool
		step     time.Duration
		uid      types.UID
		wantNode string
		wantOK   bool
	}{
		{
			name:     "a placed sandbox is assumed on its node",
			place:    true,
			uid:      "sbx",
			wantNode: "b",
			wantOK:   true,
		},
		{
			name:   "an unknown sandbox is not assumed",
			place:  true,
			uid:    "unknown",
			wantOK: false,
		},
		{
			name:   "an expired assumption is not reported",
			place:  true,
			step:   2 * time.Minute,
			uid:    "sbx",
			wantOK: false,
		},
		{
			name:   "a sandbox that did not fit is not assumed",
			place:  false,
			uid:    "sbx",
			wantOK: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			clock := newFakeClock()
			a := NewAssumer(time.Minute)
			a.Now = clock.Now

			nodes := []Node{node("a", notReady), node("b")}
			if !tt.place {
				nodes = []Node{node("a", notReady)}
			}
			res := a.Place(requestWithUID("sbx"), nodes, noClaims)
			if tt.place {
				g.Expect(res.Node).To(Equal("b"))
			} else {
				g.Expect(res.Node).To(BeEmpty())
				g.Expect(a.Len()).To(BeZero())
			}
			clock.Step(tt.step)

			node, ok := a.Assumed(tt.uid)
			g.Expect(ok).To(Equal(tt.wantOK))
			g.Expect(node).To(Equal(tt.wantNode))
		})
	}
}

func TestAssumerCountsTheAssumedResources(t *testing.T) {
	g := NewWithT(t)
	a := NewAssumer(time.Minute)
	nodes := []Node{node("a", withAllocatable(4, 4096, 10))}

	big := request(func(r *Request) { r.UID = "big" }, asking(3, 1024))
	g.Expect(a.Place(big, nodes, noClaims).Node).To(Equal("a"))

	res := a.Place(request(func(r *Request) { r.UID = "next" }, asking(2, 1024)), nodes, noClaims)
	g.Expect(res.Node).To(BeEmpty())
	g.Expect(res.Message()).To(Equal("0/1 nodes are available: 1 insufficient cpus."))

	g.Expect(a.Place(request(func(r *Request) { r.UID = "small" }, asking(1, 1024)), nodes, noClaims).Node).To(Equal("a"))
}

func TestAssumerPlacesConcurrentlyWithoutOvercommitting(t *testing.T) {
	g := NewWithT(t)
	a := NewAssumer(time.Minute)
	nodes := []Node{node("a", withAllocatable(1000, 1<<20, 10))}

	const callers = 50
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		placed []types.UID
	)
	for i := range callers {
		wg.Go(func() {
			uid := types.UID(fmt.Sprintf("sbx-%d", i))
			res := a.Place(requestWithUID(uid), nodes, noClaims)
			if res.Node != "" {
				mu.Lock()
				placed = append(placed, uid)
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	g.Expect(placed).To(HaveLen(10))
	g.Expect(a.Len()).To(Equal(10))
	for _, uid := range placed {
		node, ok := a.Assumed(uid)
		g.Expect(ok).To(BeTrue())
		g.Expect(node).To(Equal("a"))
	}
}
