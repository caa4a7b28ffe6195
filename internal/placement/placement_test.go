package placement

import (
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// node builds a ready, schedulable kvm node with room for 8 CPUs, 8192 MiB
// and 10 sandboxes, then applies mods.
func node(name string, mods ...func(*Node)) Node {
	n := Node{
		Name:        name,
		Ready:       true,
		Accelerator: sandboxv1alpha1.AcceleratorKVMName,
		Allocatable: Resources{CPUs: 8, MemoryMiB: 8192, Sandboxes: 10},
	}
	for _, m := range mods {
		m(&n)
	}
	return n
}

func notReady(n *Node)      { n.Ready = false }
func unschedulable(n *Node) { n.Unschedulable = true }

func withLabels(kv ...string) func(*Node) {
	return func(n *Node) {
		n.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			n.Labels[kv[i]] = kv[i+1]
		}
	}
}

func withTaint(key, value string, effect corev1.TaintEffect) func(*Node) {
	return func(n *Node) {
		n.Taints = append(n.Taints, corev1.Taint{Key: key, Value: value, Effect: effect})
	}
}

func withAccelerator(a sandboxv1alpha1.Accelerator) func(*Node) {
	return func(n *Node) { n.Accelerator = a }
}

func withAllocatable(cpus, memMiB, sandboxes int64) func(*Node) {
	return func(n *Node) { n.Allocatable = Resources{CPUs: cpus, MemoryMiB: memMiB, Sandboxes: sandboxes} }
}

func withCachedImages(digests ...string) func(*Node) {
	return func(n *Node) {
		n.CachedImages = map[string]bool{}
		for _, d := range digests {
			n.CachedImages[d] = true
		}
	}
}

// request builds a request for 1 CPU, 512 MiB and one sandbox slot, then
// applies mods.
func request(mods ...func(*Request)) Request {
	r := Request{UID: "sbx-1", Resources: Resources{CPUs: 1, MemoryMiB: 512, Sandboxes: 1}}
	for _, m := range mods {
		m(&r)
	}
	return r
}

func asking(cpus, memMiB int64) func(*Request) {
	return func(r *Request) { r.Resources = Resources{CPUs: cpus, MemoryMiB: memMiB, Sandboxes: 1} }
}

func selecting(kv ...string) func(*Request) {
	return func(r *Request) {
		r.NodeSelector = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			r.NodeSelector[kv[i]] = kv[i+1]
		}
	}
}

func tolerating(tols ...corev1.Toleration) func(*Request) {
	return func(r *Request) { r.Tolerations = append(r.Tolerations, tols...) }
}

func requiring(a sandboxv1alpha1.AcceleratorRequirement) func(*Request) {
	return func(r *Request) { r.Accelerator = a }
}

func withImage(digest string) func(*Request) {
	return func(r *Request) { r.ImageDigest = digest }
}

func TestSchedule(t *testing.T) {
	const digest = "sha256:aaaa"

	tests := []struct {
		name     string
		req      Request
		nodes    []Node
		used     map[string]Resources
		wantNode string
		// wantMessage is checked when wantNode is empty.
		wantMessage  string
		wantRejected map[string]int
	}{
		{
			name:         "it picks the only node that fits",
			req:          request(),
			nodes:        []Node{node("a", notReady), node("b"), node("c", unschedulable)},
			wantNode:     "b",
			wantRejected: map[string]int{ReasonNotReady: 1, ReasonUnschedulable: 1},
		},
		{
			name:        "with no nodes it says that no SandboxNodes exist",
			req:         request(),
			nodes:       nil,
			wantMessage: "0/0 nodes are available: no SandboxNodes exist.",
		},
		{
			name: "it counts the reason of each rejected node, most frequent first",
			req:  request(asking(1, 4096)),
			nodes: []Node{
				node("a", withAllocatable(8, 2048, 10)),
				node("b", withAllocatable(8, 1024, 10)),
				node("c", notReady),
			},
			wantMessage:  "0/3 nodes are available: 2 insufficient memory, 1 not ready.",
			wantRejected: map[string]int{ReasonInsufficientMemory: 2, ReasonNotReady: 1},
		},
		{
			name: "reasons with the same count are ordered by name",
			req:  request(asking(4, 4096)),
			nodes: []Node{
				node("a", unschedulable),
				node("b", notReady),
				node("c", withAllocatable(2, 8192, 10)),
				node("d", withAllocatable(8, 1024, 10)),
			},
			wantMessage: "0/4 nodes are available: 1 insufficient cpus, 1 insufficient memory, 1 not ready, 1 unschedulable.",
		},
		{
			name:        "a node that is not ready is filtered out",
			req:         request(),
			nodes:       []Node{node("a", notReady)},
			wantMessage: "0/1 nodes are available: 1 not ready.",
		},
		{
			name:        "not ready is reported before any later check",
			req:         request(selecting("zone", "x"), asking(100, 100000)),
			nodes:       []Node{node("a", notReady, unschedulable)},
			wantMessage: "0/1 nodes are available: 1 not ready.",
		},
		{
			name:        "an unschedulable node is filtered out",
			req:         request(),
			nodes:       []Node{node("a", unschedulable)},
			wantMessage: "0/1 nodes are available: 1 unschedulable.",
		},
		{
			name:     "a node whose labels match the node selector fits",
			req:      request(selecting("zone", "x", "disk", "ssd")),
			nodes:    []Node{node("a", withLabels("zone", "x", "disk", "ssd", "extra", "1"))},
			wantNode: "a",
		},
		{
			name: "a node whose labels do not match the node selector is filtered out",
			req:  request(selecting("zone", "x")),
			nodes: []Node{
				node("a", withLabels("zone", "y")),
				node("b"),
				node("c", withLabels("zone", "x")),
			},
			wantNode:     "c",
			wantRejected: map[string]int{ReasonNodeSelector: 2},
		},
		{
			name:        "a node selector that matches no node makes the sandbox unschedulable",
			req:         request(selecting("zone", "x")),
			nodes:       []Node{node("a", withLabels("zone", "y")), node("b")},
			wantMessage: "0/2 nodes are available: 2 didn't match the node selector.",
		},
		{
			name:        "a NoSchedule taint keeps a sandbox without tolerations off",
			req:         request(),
			nodes:       []Node{node("a", withTaint("dedicated", "gpu", corev1.TaintEffectNoSchedule))},
			wantMessage: "0/1 nodes are available: 1 had untolerated taint.",
		},
		{
			name:        "a NoExecute taint keeps a sandbox without tolerations off",
			req:         request(),
			nodes:       []Node{node("a", withTaint("dedicated", "gpu", corev1.TaintEffectNoExecute))},
			wantMessage: "0/1 nodes are available: 1 had untolerated taint.",
		},
		{
			name:     "a PreferNoSchedule taint does not filter",
			req:      request(),
			nodes:    []Node{node("a", withTaint("dedicated", "gpu", corev1.TaintEffectPreferNoSchedule))},
			wantNode: "a",
		},
		{
			name: "an Exists toleration tolerates the taint whatever its value",
			req: request(tolerating(corev1.Toleration{
				Key: "dedicated", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule,
			})),
			nodes:    []Node{node("a", withTaint("dedicated", "gpu", corev1.TaintEffectNoSchedule))},
			wantNode: "a",
		},
		{
			name: "an Exists toleration with an empty key tolerates every taint",
			req:  request(tolerating(corev1.Toleration{Operator: corev1.TolerationOpExists})),
			nodes: []Node{node("a",
				withTaint("dedicated", "gpu", corev1.TaintEffectNoSchedule),
				withTaint("maintenance", "", corev1.TaintEffectNoExecute),
			)},
			wantNode: "a",
		},
		{
			name: "an Equal toleration tolerates a taint with the same value",
			req: request(tolerating(corev1.Toleration{
				Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "gpu", Effect: corev1.TaintEffectNoSchedule,
			})),
			nodes:    []Node{node("a", withTaint("dedicated", "gpu", corev1.TaintEffectNoSchedule))},
			wantNode: "a",
		},
		{
			name: "an Equal toleration does not tolerate a taint with another value",
			req: request(tolerating(corev1.Toleration{
				Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "cpu", Effect: corev1.TaintEffectNoSchedule,
			})),
			nodes:       []Node{node("a", withTaint("dedicated", "gpu", corev1.TaintEffectNoSchedule))},
			wantMessage: "0/1 nodes are available: 1 had untolerated taint.",
		},
		{
			name: "a toleration with an empty effect tolerates both NoSchedule and NoExecute",
			req: request(tolerating(corev1.Toleration{
				Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "gpu",
			})),
			nodes: []Node{node("a",
				withTaint("dedicated", "gpu", corev1.TaintEffectNoSchedule),
				withTaint("dedicated", "gpu", corev1.TaintEffectNoExecute),
			)},
			wantNode: "a",
		},
		{
			name: "a toleration for another effect does not tolerate the taint",
			req: request(tolerating(corev1.Toleration{
				Key: "dedicated", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule,
			})),
			nodes:       []Node{node("a", withTaint("dedicated", "gpu", corev1.TaintEffectNoExecute))},
			wantMessage: "0/1 nodes are available: 1 had untolerated taint.",
		},
		{
			name: "every filtering taint must be tolerated",
			req: request(tolerating(corev1.Toleration{
				Key: "dedicated", Operator: corev1.TolerationOpExists,
			})),
			nodes: []Node{node("a",
				withTaint("dedicated", "gpu", corev1.TaintEffectNoSchedule),
				withTaint("maintenance", "", corev1.TaintEffectNoSchedule),
			)},
			wantMessage: "0/1 nodes are available: 1 had untolerated taint.",
		},
		{
			name:        "a sandbox that requires KVM does not go to a tcg node",
			req:         request(requiring(sandboxv1alpha1.AcceleratorKVM)),
			nodes:       []Node{node("a", withAccelerator(sandboxv1alpha1.AcceleratorTCG))},
			wantMessage: "0/1 nodes are available: 1 no KVM.",
		},
		{
			name: "a sandbox that requires KVM goes to a kvm node",
			req:  request(requiring(sandboxv1alpha1.AcceleratorKVM)),
			nodes: []Node{
				node("a", withAccelerator(sandboxv1alpha1.AcceleratorTCG)),
				node("b", withAccelerator(sandboxv1alpha1.AcceleratorKVMName)),
			},
			wantNode:     "b",
			wantRejected: map[string]int{ReasonNoKVM: 1},
		},
		{
			name:     "a sandbox that accepts Any goes to a tcg node",
			req:      request(requiring(sandboxv1alpha1.AcceleratorAny)),
			nodes:    []Node{node("a", withAccelerator(sandboxv1alpha1.AcceleratorTCG))},
			wantNode: "a",
		},
		{
			name:     "a sandbox that accepts Any goes to a kvm node",
			req:      request(requiring(sandboxv1alpha1.AcceleratorAny)),
			nodes:    []Node{node("a", withAccelerator(sandboxv1alpha1.AcceleratorKVMName))},
			wantNode: "a",
		},
		{
			name:     "a sandbox with no accelerator requirement goes to a tcg node",
			req:      request(),
			nodes:    []Node{node("a", withAccelerator(sandboxv1alpha1.AcceleratorTCG))},
			wantNode: "a",
		},
		{
			name:     "a request that uses exactly the free cpus fits",
			req:      request(asking(2, 512)),
			nodes:    []Node{node("a", withAllocatable(4, 8192, 10))},
			used:     map[string]Resources{"a": {CPUs: 2, MemoryMiB: 512, Sandboxes: 1}},
			wantNode: "a",
		},
		{
			name:        "a request one cpu over the free cpus is rejected",
			req:         request(asking(3, 512)),
			nodes:       []Node{node("a", withAllocatable(4, 8192, 10))},
			used:        map[string]Resources{"a": {CPUs: 2, MemoryMiB: 512, Sandboxes: 1}},
			wantMessage: "0/1 nodes are available: 1 insufficient cpus.",
		},
		{
			name:     "a request that uses exactly the free memory fits",
			req:      request(asking(1, 1024)),
			nodes:    []Node{node("a", withAllocatable(8, 2048, 10))},
			used:     map[string]Resources{"a": {CPUs: 1, MemoryMiB: 1024, Sandboxes: 1}},
			wantNode: "a",
		},
		{
			name:        "a request one MiB over the free memory is rejected",
			req:         request(asking(1, 1025)),
			nodes:       []Node{node("a", withAllocatable(8, 2048, 10))},
			used:        map[string]Resources{"a": {CPUs: 1, MemoryMiB: 1024, Sandboxes: 1}},
			wantMessage: "0/1 nodes are available: 1 insufficient memory.",
		},
		{
			name:     "the last free sandbox slot can be taken",
			req:      request(),
			nodes:    []Node{node("a", withAllocatable(8, 8192, 2))},
			used:     map[string]Resources{"a": {CPUs: 1, MemoryMiB: 512, Sandboxes: 1}},
			wantNode: "a",
		},
		{
			name:        "a node with every sandbox slot taken is rejected",
			req:         request(),
			nodes:       []Node{node("a", withAllocatable(8, 8192, 2))},
			used:        map[string]Resources{"a": {CPUs: 2, MemoryMiB: 1024, Sandboxes: 2}},
			wantMessage: "0/1 nodes are available: 1 too many sandboxes.",
		},
		{
			name:        "a node with no sandbox slots at all is rejected",
			req:         request(),
			nodes:       []Node{node("a", withAllocatable(8, 8192, 0))},
			wantMessage: "0/1 nodes are available: 1 too many sandboxes.",
		},
		{
			name:        "too many sandboxes is reported before insufficient cpus and memory",
			req:         request(asking(100, 100000)),
			nodes:       []Node{node("a", withAllocatable(8, 8192, 1))},
			used:        map[string]Resources{"a": {Sandboxes: 1}},
			wantMessage: "0/1 nodes are available: 1 too many sandboxes.",
		},
		{
			name:  "used capacity is counted only on its own node",
			req:   request(asking(4, 4096)),
			nodes: []Node{node("a", withAllocatable(4, 4096, 10)), node("b", withAllocatable(4, 4096, 10))},
			used: map[string]Resources{
				"a":       {CPUs: 1, MemoryMiB: 512, Sandboxes: 1},
				"missing": {CPUs: 100, MemoryMiB: 100000, Sandboxes: 100},
			},
			wantNode:     "b",
			wantRejected: map[string]int{ReasonInsufficientCPU: 1},
		},
		{
			name:  "least-allocated scoring picks the emptier node",
			req:   request(),
			nodes: []Node{node("a"), node("b")},
			used: map[string]Resources{
				"a": {CPUs: 4, MemoryMiB: 4096, Sandboxes: 4},
				"b": {CPUs: 1, MemoryMiB: 512, Sandboxes: 1},
			},
			wantNode: "b",
		},
		{
			name:  "least-allocated scoring weighs cpus and memory equally",
			req:   request(asking(1, 1000)),
			nodes: []Node{node("a", withAllocatable(10, 10000, 10)), node("b", withAllocatable(10, 10000, 10))},
			// a: cpus (10-2)/10 = 80, memory (10000-6000)/10000 = 40, score 60.
			// b: cpus (10-5)/10 = 50, memory (10000-2000)/10000 = 80, score 65.
			used: map[string]Resources{
				"a": {CPUs: 1, MemoryMiB: 5000},
				"b": {CPUs: 4, MemoryMiB: 1000},
			},
			wantNode: "b",
		},
		{
			// Allocatable 10 CPUs and 10000 MiB, request 1 CPU and 1000 MiB:
			// b-cached: cpus (10-3)/10 = 70, memory (10000-2000)/10000 = 80,
			//   score 75 + bonus 10 = 85.
			// a-emptier: cpus (10-2)/10 = 80, memory (10000-2000)/10000 = 80,
			//   score 80.
			name: "a cached image outweighs a slightly emptier node",
			req:  request(asking(1, 1000), withImage(digest)),
			nodes: []Node{
				node("a-emptier", withAllocatable(10, 10000, 10)),
				node("b-cached", withAllocatable(10, 10000, 10), withCachedImages(digest)),
			},
			used: map[string]Resources{
				"a-emptier": {CPUs: 1, MemoryMiB: 1000, Sandboxes: 1},
				"b-cached":  {CPUs: 2, MemoryMiB: 1000, Sandboxes: 1},
			},
			wantNode: "b-cached",
		},
		{
			// b-cached scores 85 as above; a-empty: cpus (10-1)/10 = 90,
			// memory (10000-1000)/10000 = 90, score 90.
			name: "a cached image does not outweigh a much emptier node",
			req:  request(asking(1, 1000), withImage(digest)),
			nodes: []Node{
				node("b-cached", withAllocatable(10, 10000, 10), withCachedImages(digest)),
				node("a-empty", withAllocatable(10, 10000, 10)),
			},
			used: map[string]Resources{
				"b-cached": {CPUs: 2, MemoryMiB: 1000, Sandboxes: 1},
			},
			wantNode: "a-empty",
		},
		{
			name: "a node caching another image earns no bonus",
			req:  request(asking(1, 1000), withImage(digest)),
			nodes: []Node{
				node("a-emptier", withAllocatable(10, 10000, 10)),
				node("b-cached", withAllocatable(10, 10000, 10), withCachedImages("sha256:bbbb")),
			},
			used: map[string]Resources{
				"a-emptier": {CPUs: 1, MemoryMiB: 1000, Sandboxes: 1},
				"b-cached":  {CPUs: 2, MemoryMiB: 1000, Sandboxes: 1},
			},
			wantNode: "a-emptier",
		},
		{
			// a: 80 (90 with a wrong bonus, winning the tie by name); b: 90.
			name: "a request without an image digest earns no bonus",
			req:  request(asking(1, 1000)),
			nodes: []Node{
				node("a", withAllocatable(10, 10000, 10), withCachedImages("")),
				node("b", withAllocatable(10, 10000, 10)),
			},
			used:     map[string]Resources{"a": {CPUs: 1, MemoryMiB: 1000, Sandboxes: 1}},
			wantNode: "b",
		},
		{
			name:     "equal scores go to the node whose name sorts first",
			req:      request(),
			nodes:    []Node{node("c"), node("a"), node("b")},
			wantNode: "a",
		},
		{
			name:     "the tie-break does not depend on the order of the nodes",
			req:      request(),
			nodes:    []Node{node("b"), node("c"), node("a")},
			wantNode: "a",
		},
		{
			name:     "the tie-break only applies between nodes with equal scores",
			req:      request(),
			nodes:    []Node{node("a"), node("z")},
			used:     map[string]Resources{"a": {CPUs: 1, MemoryMiB: 512, Sandboxes: 1}},
			wantNode: "z",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			res := Schedule(tt.req, tt.nodes, tt.used)
			g.Expect(res.Node).To(Equal(tt.wantNode))
			g.Expect(res.Total).To(Equal(len(tt.nodes)))
			if tt.wantNode == "" {
				g.Expect(res.Message()).To(Equal(tt.wantMessage))
			}
			if tt.wantRejected != nil {
				g.Expect(res.Rejected).To(Equal(tt.wantRejected))
			}
		})
	}
}

func TestScheduleDoesNotModifyItsInputs(t *testing.T) {
	g := NewWithT(t)
	nodes := []Node{node("a"), node("b")}
	used := map[string]Resources{"a": {CPUs: 1, MemoryMiB: 512, Sandboxes: 1}}

	res := Schedule(request(), nodes, used)

	g.Expect(res.Node).To(Equal("b"))
	g.Expect(used).To(Equal(map[string]Resources{"a": {CPUs: 1, MemoryMiB: 512, Sandboxes: 1}}))
	g.Expect(nodes).To(Equal([]Node{node("a"), node("b")}))
}

func TestResultMessage(t *testing.T) {
	tests := []struct {
		name string
		res  Result
		want string
	}{
		{
			name: "no nodes says that no SandboxNodes exist",
			res:  Result{Rejected: map[string]int{}},
			want: "0/0 nodes are available: no SandboxNodes exist.",
		},
		{
			name: "reasons are ordered by count, highest first",
			res: Result{Total: 6, Rejected: map[string]int{
				ReasonNotReady: 1, ReasonInsufficientMemory: 3, ReasonUnschedulable: 2,
			}},
			want: "0/6 nodes are available: 3 insufficient memory, 2 unschedulable, 1 not ready.",
		},
		{
			name: "reasons with equal counts are ordered by name",
			res: Result{Total: 3, Rejected: map[string]int{
				ReasonUntoleratedTaint: 1, ReasonNoKVM: 1, ReasonInsufficientCPU: 1,
			}},
			want: "0/3 nodes are available: 1 had untolerated taint, 1 insufficient cpus, 1 no KVM.",
		},
		{
			name: "available nodes are the ones not rejected",
			res:  Result{Total: 3, Node: "c", Rejected: map[string]int{ReasonNotReady: 2}},
			want: "1/3 nodes are available: 2 not ready.",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(tt.res.Message()).To(Equal(tt.want))
		})
	}
}

func TestRequestFor(t *testing.T) {
	g := NewWithT(t)
	tols := []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpExists}}
	sbx := &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "ns", UID: "uid-1"},
		Spec: sandboxv1alpha1.SandboxSpec{
			Image:        "docker.io/library/python:3.12",
			Resources:    sandboxv1alpha1.SandboxResources{CPUs: 2, MemoryMiB: 2048},
			NodeSelector: map[string]string{"zone": "x"},
			Tolerations:  tols,
			Accelerator:  sandboxv1alpha1.AcceleratorKVM,
		},
		Status: sandboxv1alpha1.SandboxStatus{ImageDigest: "sha256:aaaa"},
	}

	g.Expect(RequestFor(sbx)).To(Equal(Request{
		UID:          "uid-1",
		Resources:    Resources{CPUs: 2, MemoryMiB: 2048, Sandboxes: 1},
		NodeSelector: map[string]string{"zone": "x"},
		Tolerations:  tols,
		Accelerator:  sandboxv1alpha1.AcceleratorKVM,
		ImageDigest:  "sha256:aaaa",
	}))
}

func TestResourcesOf(t *testing.T) {
	tests := []struct {
		name      string
		resources sandboxv1alpha1.SandboxResources
		want      Resources
	}{
		{
			name: "unset cpus and memory take the defaults of 1 cpu and 512 MiB",
			want: Resources{CPUs: 1, MemoryMiB: 512, Sandboxes: 1},
		},
		{
			name:      "unset cpus alone takes the default",
			resources: sandboxv1alpha1.SandboxResources{MemoryMiB: 1024},
			want:      Resources{CPUs: 1, MemoryMiB: 1024, Sandboxes: 1},
		},
		{
			name:      "unset memory alone takes the default",
			resources: sandboxv1alpha1.SandboxResources{CPUs: 4},
			want:      Resources{CPUs: 4, MemoryMiB: 512, Sandboxes: 1},
		},
		{
			name:      "set values are kept and one sandbox slot is always held",
			resources: sandboxv1alpha1.SandboxResources{CPUs: 64, MemoryMiB: 65536},
			want:      Resources{CPUs: 64, MemoryMiB: 65536, Sandboxes: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			sbx := &sandboxv1alpha1.Sandbox{Spec: sandboxv1alpha1.SandboxSpec{Resources: tt.resources}}
			g.Expect(ResourcesOf(sbx)).To(Equal(tt.want))
		})
	}
}

func TestResourcesAdd(t *testing.T) {
	g := NewWithT(t)
	g.Expect(Resources{CPUs: 1, MemoryMiB: 2, Sandboxes: 3}.Add(Resources{CPUs: 10, MemoryMiB: 20, Sandboxes: 30})).
		To(Equal(Resources{CPUs: 11, MemoryMiB: 22, Sandboxes: 33}))
}
