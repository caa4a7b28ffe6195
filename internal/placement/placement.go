// Package placement decides which SandboxNode a Sandbox runs on.
//
// It is pure: Schedule takes a request, node views and the capacity already
// claimed on each node, and returns a choice or the reasons there is none.
// Filter (ready, schedulable, nodeSelector, taints, accelerator, free
// capacity) → score (least allocated, bonus for a cached image) → pick.
// Binding is the caller's business; Assumer (assume.go) keeps in-flight
// bindings counted until the informer cache shows them, the way
// kube-scheduler's assume cache does, so that two placements never
// over-commit a node.
package placement

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// Node is what placement knows about a SandboxNode.
type Node struct {
	Name          string
	Labels        map[string]string
	Taints        []corev1.Taint
	Unschedulable bool
	// Ready is the SandboxNode's Ready condition AND a live Lease.
	Ready        bool
	Accelerator  sandboxv1alpha1.Accelerator
	Allocatable  Resources
	CachedImages map[string]bool
}

// Resources is an amount of node capacity.
type Resources struct {
	CPUs      int64
	MemoryMiB int64
	Sandboxes int64
}

// Add returns r + o.
func (r Resources) Add(o Resources) Resources {
	return Resources{CPUs: r.CPUs + o.CPUs, MemoryMiB: r.MemoryMiB + o.MemoryMiB, Sandboxes: r.Sandboxes + o.Sandboxes}
}

// Request is what a Sandbox asks of a node.
type Request struct {
	UID          types.UID
	Resources    Resources
	NodeSelector map[string]string
	Tolerations  []corev1.Toleration
	Accelerator  sandboxv1alpha1.AcceleratorRequirement
	// ImageDigest, when known, earns a bonus on nodes that cache it.
	ImageDigest string
}

// RequestFor builds the placement request of a Sandbox.
func RequestFor(sbx *sandboxv1alpha1.Sandbox) Request {
	return Request{
		UID:          sbx.UID,
		Resources:    ResourcesOf(sbx),
		NodeSelector: sbx.Spec.NodeSelector,
		Tolerations:  sbx.Spec.Tolerations,
		Accelerator:  sbx.Spec.Accelerator,
		ImageDigest:  sbx.Status.ImageDigest,
	}
}

// ResourcesOf is the capacity a Sandbox holds on its node: its vCPUs, its
// memory and one sandbox slot. Unset values take the API defaults.
func ResourcesOf(sbx *sandboxv1alpha1.Sandbox) Resources {
	cpus, mem := int64(sbx.Spec.Resources.CPUs), int64(sbx.Spec.Resources.MemoryMiB)
	if cpus == 0 {
		cpus = 1
	}
	if mem == 0 {
		mem = 512
	}
	return Resources{CPUs: cpus, MemoryMiB: mem, Sandboxes: 1}
}

// Reasons a node is filtered out, as they appear in the Unschedulable message.
const (
	ReasonNotReady           = "not ready"
	ReasonUnschedulable      = "unschedulable"
	ReasonNodeSelector       = "didn't match the node selector"
	ReasonUntoleratedTaint   = "had untolerated taint"
	ReasonNoKVM              = "no KVM"
	ReasonTooManySandboxes   = "too many sandboxes"
	ReasonInsufficientCPU    = "insufficient cpus"
	ReasonInsufficientMemory = "insufficient memory"
)

// Result is the outcome of Schedule.
type Result struct {
	// Node is the chosen node, empty when none fits.
	Node string
	// Rejected counts the nodes filtered out by reason.
	Rejected map[string]int
	// Total is the number of nodes considered.
	Total int
}

// Message explains a result in the words of kube-scheduler, e.g.
// "0/3 nodes are available: 2 insufficient memory, 1 not ready."
func (r Result) Message() string {
	if r.Total == 0 {
		return "0/0 nodes are available: no SandboxNodes exist."
	}
	type kv struct {
		reason string
		n      int
	}
	var parts []kv
	for k, v := range r.Rejected {
		parts = append(parts, kv{k, v})
	}
	sort.Slice(parts, func(i, j int) bool {
		if parts[i].n != parts[j].n {
			return parts[i].n > parts[j].n
		}
		return parts[i].reason < parts[j].reason
	})
	strs := make([]string, len(parts))
	for i, p := range parts {
		strs[i] = fmt.Sprintf("%d %s", p.n, p.reason)
	}
	avail := r.Total - sumValues(r.Rejected)
	return fmt.Sprintf("%d/%d nodes are available: %s.", avail, r.Total, strings.Join(strs, ", "))
}

func sumValues(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// cachedImageBonus is added to the score of a node that already holds the
// sandbox's image: a pull is usually the slowest stage of a start.
const cachedImageBonus = 10

// Schedule picks the best node for req. used holds the capacity already
// claimed on each node (see Assumer.Used). Ties go to the node whose name
// sorts first, so the result is deterministic.
func Schedule(req Request, nodes []Node, used map[string]Resources) Result {
	res := Result{Rejected: map[string]int{}, Total: len(nodes)}
	best, bestScore := "", int64(-1)
	for i := range nodes {
		n := &nodes[i]
		if reason := filter(req, n, used[n.Name]); reason != "" {
			res.Rejected[reason]++
			continue
		}
		s := score(req, n, used[n.Name])
		if s > bestScore || (s == bestScore && n.Name < best) {
			best, bestScore = n.Name, s
		}
	}
	res.Node = best
	return res
}

// filter returns why n cannot take req, or "" when it can. The first
// failing check is the reason, in the order of the Reason constants.
func filter(req Request, n *Node, used Resources) string {
	switch {
	case !n.Ready:
		return ReasonNotReady
	case n.Unschedulable:
		return ReasonUnschedulable
	case len(req.NodeSelector) > 0 && !labels.SelectorFromSet(req.NodeSelector).Matches(labels.Set(n.Labels)):
		return ReasonNodeSelector
	case !tolerated(req.Tolerations, n.Taints):
		return ReasonUntoleratedTaint
	case req.Accelerator == sandboxv1alpha1.AcceleratorKVM && n.Accelerator != sandboxv1alpha1.AcceleratorKVMName:
		return ReasonNoKVM
	}
	after := used.Add(req.Resources)
	switch {
	case after.Sandboxes > n.Allocatable.Sandboxes:
		return ReasonTooManySandboxes
	case after.CPUs > n.Allocatable.CPUs:
		return ReasonInsufficientCPU
	case after.MemoryMiB > n.Allocatable.MemoryMiB:
		return ReasonInsufficientMemory
	}
	return ""
}

// tolerated reports whether every NoSchedule or NoExecute taint is
// tolerated. PreferNoSchedule taints never filter.
func tolerated(tols []corev1.Toleration, taints []corev1.Taint) bool {
	for i := range taints {
		t := &taints[i]
		if t.Effect == corev1.TaintEffectPreferNoSchedule {
			continue
		}
		ok := false
		for j := range tols {
			if tols[j].ToleratesTaint(klog.Background(), t, true) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// score is least-allocated: the mean share of CPU and memory left free
// after placing req, 0-100, plus the cached-image bonus.
func score(req Request, n *Node, used Resources) int64 {
	after := used.Add(req.Resources)
	free := func(alloc, u int64) int64 {
		if alloc <= 0 {
			return 0
		}
		return (alloc - u) * 100 / alloc
	}
	s := (free(n.Allocatable.CPUs, after.CPUs) + free(n.Allocatable.MemoryMiB, after.MemoryMiB)) / 2
	if req.ImageDigest != "" && n.CachedImages[req.ImageDigest] {
		s += cachedImageBonus
	}
	return s
}
