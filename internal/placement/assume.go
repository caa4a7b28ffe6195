package placement

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Claim is capacity a Sandbox holds, as the informer cache shows it. Node is
// empty for a sandbox the cache shows unplaced.
type Claim struct {
	UID       types.UID
	Node      string
	Resources Resources
}

type assumption struct {
	node      string
	resources Resources
	at        time.Time
}

// Assumer remembers placements that were decided but that the informer
// cache may not show yet, so the next decision counts them. An assumption
// ends when the cache shows the sandbox on its node (confirmed), when it is
// forgotten (the binding write failed, or the sandbox is gone), or after
// TTL (a safety net against a lost event).
//
// Place runs filter, score and assume under one lock: two concurrent
// reconciles cannot both take the last slot of a node.
type Assumer struct {
	TTL time.Duration
	Now func() time.Time

	mu      sync.Mutex
	assumed map[types.UID]assumption
}

// NewAssumer returns an Assumer whose assumptions expire after ttl.
func NewAssumer(ttl time.Duration) *Assumer {
	return &Assumer{TTL: ttl, Now: time.Now, assumed: map[types.UID]assumption{}}
}

// Assumed returns the node an in-flight placement chose for uid, if any.
func (a *Assumer) Assumed(uid types.UID) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	as, ok := a.assumed[uid]
	if !ok || a.expired(as) {
		return "", false
	}
	return as.node, true
}

// Forget drops the assumption for uid.
func (a *Assumer) Forget(uid types.UID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.assumed, uid)
}

// Len is the number of live assumptions (for metrics and tests).
func (a *Assumer) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.assumed)
}

func (a *Assumer) expired(as assumption) bool {
	return a.TTL > 0 && a.Now().Sub(as.at) > a.TTL
}

// used sums claims per node, adding assumptions the cache does not show yet
// and dropping the ones it confirms. Callers hold a.mu.
func (a *Assumer) used(claims []Claim) map[string]Resources {
	out := map[string]Resources{}
	seen := make(map[types.UID]string, len(claims))
	for _, c := range claims {
		seen[c.UID] = c.Node
		if c.Node != "" {
			out[c.Node] = out[c.Node].Add(c.Resources)
		}
	}
	for uid, as := range a.assumed {
		node, inCache := seen[uid]
		switch {
		case a.expired(as):
			delete(a.assumed, uid)
		case inCache && node == as.node:
			delete(a.assumed, uid) // confirmed: already counted above
		default:
			out[as.node] = out[as.node].Add(as.resources)
		}
	}
	return out
}

// Place schedules req against nodes, counting claims (listed by the caller
// while holding no lock; a claim listed before a concurrent assumption is
// still covered by that assumption) and assumes the result.
func (a *Assumer) Place(req Request, nodes []Node, claims func() []Claim) Result {
	a.mu.Lock()
	defer a.mu.Unlock()
	used := a.used(claims())
	res := Schedule(req, nodes, used)
	if res.Node != "" {
		a.assumed[req.UID] = assumption{node: res.Node, resources: req.Resources, at: a.Now()}
	}
	return res
}
