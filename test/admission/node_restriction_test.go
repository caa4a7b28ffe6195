package admission

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gcustom"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/nodeagent"
	sandboxv1alpha1ac "github.com/microvm-dev/sandbox-operator/pkg/client/applyconfiguration/api/v1alpha1"
)

const (
	root = "../.."
	// agentNamespace and agentServiceAccount are the node agent's identity
	// in config/rbac/node-agent, which the policy matches; agentNamespace
	// is also the Lease namespace.
	agentNamespace      = "sandbox-system"
	agentServiceAccount = "sandbox-node-agent"
	sandboxNamespace    = "sbx-admission"
	nodeA, nodeB        = "node-a", "node-b"
	policyName          = "sandbox-node-agent-restriction"
	// nodeNameExtra is where a Pod-bound token carries its Pod's node.
	nodeNameExtra = "authentication.kubernetes.io/node-name"

	// The API server loads a new policy and binding asynchronously.
	policyLoadTimeout = 30 * time.Second
	timeout           = 10 * time.Second
	poll              = 100 * time.Millisecond
)

var scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(sandboxv1alpha1.AddToScheme(scheme))
}

// agent is one node agent's identity: its Pod's bound token.
type agent struct {
	node   string
	config *rest.Config
	client client.Client
}

// TestNodeAgentRestriction shows the node restriction policy of
// config/admission at work on a real kube-apiserver: each node agent's
// token, bound to its Pod, names its node, and the agent may write that
// node's Sandboxes, SandboxNode and Lease and nothing of another node's; a
// token bound to no Pod may write nothing.
func TestNodeAgentRestriction(t *testing.T) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(root, "bin", "k8s")
	}
	if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
		t.Fatalf("no kube-apiserver in %s (run `make control-plane`, or set KUBEBUILDER_ASSETS): %v", assets, err)
	}
	ctrllog.SetLogger(logr.Discard())
	testEnv := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
	}
	cfg, err := testEnv.Start()
	if err != nil {
		t.Fatalf("starting envtest (kube-apiserver and etcd from %s): %v", assets, err)
	}
	t.Cleanup(func() {
		if err := testEnv.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})
	ctx := t.Context()
	admin, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}

	// The cluster: the policy and the agent's RBAC from config/, two nodes
	// with an agent Pod each (objects only: no kubelet runs them).
	for _, ns := range []string{agentNamespace, sandboxNamespace} {
		must(t, admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	}
	applyKustomization(ctx, t, admin, filepath.Join(root, "config", "admission"))
	applyKustomization(ctx, t, admin, filepath.Join(root, "config", "rbac", "node-agent"))
	a := newAgent(ctx, t, cfg, admin, nodeA)
	b := newAgent(ctx, t, cfg, admin, nodeB)
	unboundCfg := tokenConfig(cfg, mintToken(ctx, t, cfg, nil))
	unbound, err := client.New(unboundCfg, client.Options{Scheme: scheme})
	must(t, err)

	// Node B's objects, as its agent and the manager would have made them.
	must(t, admin.Create(ctx, &sandboxv1alpha1.SandboxNode{ObjectMeta: metav1.ObjectMeta{Name: nodeB}}))
	must(t, admin.Create(ctx, newLease(nodeB)))
	sbxA := createSandbox(ctx, t, admin, "sbx-a", nodeA)
	sbxB := createSandbox(ctx, t, admin, "sbx-b", nodeB)

	t.Run("a token bound to a Pod names the Pod's node; a token bound to no Pod names none", func(t *testing.T) {
		g := NewWithT(t)
		for _, ag := range []*agent{a, b} {
			extra := whoAmI(ctx, g, ag.config).Extra
			g.Expect(extra).To(HaveKeyWithValue(nodeNameExtra, authenticationv1.ExtraValue{ag.node}))
		}
		info := whoAmI(ctx, g, unboundCfg)
		g.Expect(info.Username).To(Equal("system:serviceaccount:" + agentNamespace + ":" + agentServiceAccount))
		g.Expect(info.Extra).NotTo(HaveKey(nodeNameExtra))
	})

	t.Run("the policy is loaded", func(t *testing.T) {
		// Server-side dry run: admission runs, nothing is stored.
		g := NewWithT(t)
		g.Eventually(func() error {
			return a.client.Create(ctx, newLease(nodeB+"-probe"), client.DryRunAll)
		}).WithTimeout(policyLoadTimeout).WithPolling(poll).Should(beRefused("may not write Lease"))
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("the real node agent of node-a registers its SandboxNode and renews its Lease under its own token", func(t *testing.T) {
		g := NewWithT(t)
		runAgent(ctx, t, g, a, admin)
	})

	t.Run("agent A writes the status of a Sandbox placed on node-a, and agent B of one on node-b", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(applyStatus(ctx, a, sbxA)).To(Succeed())
		g.Expect(applyStatus(ctx, b, sbxB)).To(Succeed())
		got := &sandboxv1alpha1.Sandbox{}
		g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(sbxA), got)).To(Succeed())
		g.Expect(got.Status.VM).NotTo(BeNil())
		g.Expect(got.Status.VM.NodeName).To(Equal(nodeA))
	})

	t.Run("agent A may not write the status of a Sandbox placed on node-b", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(applyStatus(ctx, a, sbxB)).To(beRefused("node agent of node-a may not write Sandbox sbx-admission/sbx-b placed on node-b"))
		g.Expect(mergeStatus(ctx, a.client, sbxB, `{"status":{"run":7}}`)).
			To(beRefused("node agent of node-a may not write Sandbox sbx-admission/sbx-b placed on node-b"))
	})

	t.Run("agent A may not move a Sandbox from node-b onto node-a, nor its own to node-b or off any node", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(mergeStatus(ctx, a.client, sbxB, `{"status":{"nodeName":"node-a"}}`)).
			To(beRefused("node agent of node-a may not write Sandbox sbx-admission/sbx-b placed on node-b"))
		g.Expect(mergeStatus(ctx, a.client, sbxA, `{"status":{"nodeName":"node-b"}}`)).
			To(beRefused("node agent of node-a may not move Sandbox sbx-admission/sbx-a to node-b: status.nodeName is the manager's to set"))
		g.Expect(mergeStatus(ctx, a.client, sbxA, `{"status":{"nodeName":null}}`)).
			To(beRefused("node agent of node-a may not move Sandbox sbx-admission/sbx-a to no node"))
		got := &sandboxv1alpha1.Sandbox{}
		g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(sbxB), got)).To(Succeed())
		g.Expect(got.Status.NodeName).To(Equal(nodeB))
	})

	t.Run("agent A may not write SandboxNode node-b or its status, nor create another node's", func(t *testing.T) {
		g := NewWithT(t)
		sn := &sandboxv1alpha1.SandboxNode{ObjectMeta: metav1.ObjectMeta{Name: nodeB}}
		refused := beRefused("node agent of node-a may not write SandboxNode node-b (only its own, node-a)")
		g.Expect(a.client.Patch(ctx, sn, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"stolen":"yes"}}}`)))).To(refused)
		g.Expect(a.client.Status().Patch(ctx, sn, client.RawPatch(types.MergePatchType, []byte(`{"status":{"accelerator":"kvm"}}`)))).To(refused)
		g.Expect(a.client.Create(ctx, &sandboxv1alpha1.SandboxNode{ObjectMeta: metav1.ObjectMeta{Name: "node-c"}})).
			To(beRefused("node agent of node-a may not write SandboxNode node-c"))
	})

	t.Run("agent A may label its own SandboxNode but not uncordon or untaint it", func(t *testing.T) {
		g := NewWithT(t)
		sn := &sandboxv1alpha1.SandboxNode{ObjectMeta: metav1.ObjectMeta{Name: nodeA}}
		g.Expect(admin.Patch(ctx, sn, client.RawPatch(types.MergePatchType,
			[]byte(`{"spec":{"unschedulable":true,"taints":[{"key":"maintenance","effect":"NoSchedule"}]}}`)))).To(Succeed())
		refused := beRefused("node agent of node-a may not change the spec (unschedulable, taints) of SandboxNode node-a")
		g.Expect(a.client.Patch(ctx, sn, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"unschedulable":false}}`)))).To(refused)
		g.Expect(a.client.Patch(ctx, sn, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"taints":null}}`)))).To(refused)
		g.Expect(a.client.Patch(ctx, sn, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"zone":"a"}}}`)))).To(Succeed())
	})

	t.Run("agent A may not write Lease node-b, nor a Lease named node-a outside sandbox-system", func(t *testing.T) {
		g := NewWithT(t)
		lease := &coordinationv1.Lease{}
		g.Expect(admin.Get(ctx, types.NamespacedName{Namespace: agentNamespace, Name: nodeB}, lease)).To(Succeed())
		lease.Spec.HolderIdentity = ptr.To(nodeA)
		g.Expect(a.client.Update(ctx, lease)).
			To(beRefused("node agent of node-a may not write Lease sandbox-system/node-b (only its own heartbeat Lease, sandbox-system/node-a)"))
		elsewhere := newLease(nodeA)
		elsewhere.Namespace = sandboxNamespace
		g.Expect(a.client.Create(ctx, elsewhere)).To(beRefused("node agent of node-a may not write Lease sbx-admission/node-a"))
	})

	t.Run("outside status, agent A may only remove its own finalizer from a Sandbox on node-a", func(t *testing.T) {
		g := NewWithT(t)
		refused := beRefused("node agent of node-a may only remove its finalizer sandbox.microvm.dev/node-agent from Sandbox sbx-admission/sbx-a")
		cur := &sandboxv1alpha1.Sandbox{}
		g.Expect(a.client.Get(ctx, client.ObjectKeyFromObject(sbxA), cur)).To(Succeed())
		g.Expect(a.client.Patch(ctx, cur, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"stolen":"yes"}}}`)))).To(refused)
		g.Expect(a.client.Patch(ctx, cur, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"image":"evil.example/pwn"}}`)))).To(refused)

		// Deleted: the agent releases its finalizer as finalize does, and
		// may not release the manager's.
		g.Expect(admin.Delete(ctx, sbxA.DeepCopy())).To(Succeed())
		g.Expect(a.client.Get(ctx, client.ObjectKeyFromObject(sbxA), cur)).To(Succeed())
		g.Expect(cur.DeletionTimestamp).NotTo(BeNil())
		g.Expect(removeFinalizer(ctx, a.client, cur, sandboxv1alpha1.ManagerFinalizer)).To(refused)
		g.Expect(applyStatus(ctx, a, sbxA)).To(Succeed(), "a deleting Sandbox's VM is still reported")
		g.Expect(removeFinalizer(ctx, a.client, cur, sandboxv1alpha1.NodeAgentFinalizer)).To(Succeed())
		g.Expect(cur.Finalizers).To(Equal([]string{sandboxv1alpha1.ManagerFinalizer}))

		// The manager's own release, for completeness: the Sandbox goes.
		g.Expect(removeFinalizer(ctx, admin, cur, sandboxv1alpha1.ManagerFinalizer)).To(Succeed())
		g.Expect(apierrors.IsNotFound(admin.Get(ctx, client.ObjectKeyFromObject(sbxA), cur))).To(BeTrue())
	})

	t.Run("agent A may not remove the finalizer of a Sandbox on node-b", func(t *testing.T) {
		g := NewWithT(t)
		cur := &sandboxv1alpha1.Sandbox{}
		g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(sbxB), cur)).To(Succeed())
		g.Expect(removeFinalizer(ctx, a.client, cur, sandboxv1alpha1.NodeAgentFinalizer)).
			To(beRefused("node agent of node-a may not write Sandbox sbx-admission/sbx-b placed on node-b"))
	})

	t.Run("a node agent records events with its bound token", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(a.client.Create(ctx, newEvent(sbxB))).To(Succeed())
	})

	t.Run("a token bound to no Pod may write nothing, not even its node's objects", func(t *testing.T) {
		g := NewWithT(t)
		refused := beRefused("the token of system:serviceaccount:sandbox-system:sandbox-node-agent carries no node name (authentication.kubernetes.io/node-name)")
		g.Expect(applyStatus(ctx, &agent{node: nodeB, client: unbound}, sbxB)).To(refused)
		g.Expect(unbound.Status().Patch(ctx, &sandboxv1alpha1.SandboxNode{ObjectMeta: metav1.ObjectMeta{Name: nodeB}},
			client.RawPatch(types.MergePatchType, []byte(`{"status":{"accelerator":"kvm"}}`)))).To(refused)
		lease := &coordinationv1.Lease{}
		g.Expect(admin.Get(ctx, types.NamespacedName{Namespace: agentNamespace, Name: nodeB}, lease)).To(Succeed())
		g.Expect(unbound.Update(ctx, lease)).To(refused)
		g.Expect(unbound.Create(ctx, newLease("node-c"))).To(refused)
		g.Expect(unbound.Create(ctx, newEvent(sbxB))).To(refused)
		// Reads are not admission's: RBAC still lets it read.
		g.Expect(unbound.Get(ctx, client.ObjectKeyFromObject(sbxB), &sandboxv1alpha1.Sandbox{})).To(Succeed())
	})
}

// runAgent runs the node agent (internal/nodeagent, heartbeat only: no
// state directory) as ag until it has registered, renewed its Lease at
// least once and, stopped, marked its SandboxNode not ready: every write of
// the heartbeat passes the policy.
func runAgent(ctx context.Context, t *testing.T, g Gomega, ag *agent, admin client.Client) {
	t.Helper()
	args := nodeagent.DefaultArgs()
	args.NodeName = ag.node
	args.LeaseNamespace = agentNamespace
	args.RenewInterval = 50 * time.Millisecond
	args.MetricsAddr, args.ProbeAddr = "0", "0"
	// A fixed host: no KVM, no QEMU, emulation allowed (Ready True).
	args.KVMPath = filepath.Join(t.TempDir(), "no-kvm")
	args.QEMUBinary = filepath.Join(t.TempDir(), "no-qemu")
	args.AllowEmulation = true
	na, err := nodeagent.New(nodeagent.WithArgs(args), nodeagent.WithConfig(ag.config))
	g.Expect(err).NotTo(HaveOccurred())
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- na.Run(runCtx) }()

	ready := func(g Gomega) *metav1.Condition {
		sn := &sandboxv1alpha1.SandboxNode{}
		g.Expect(admin.Get(ctx, types.NamespacedName{Name: ag.node}, sn)).To(Succeed())
		g.Expect(sn.OwnerReferences).To(ContainElement(HaveField("Name", ag.node)), "owner reference to its Node")
		c := meta.FindStatusCondition(sn.Status.Conditions, sandboxv1alpha1.NodeConditionReady)
		g.Expect(c).NotTo(BeNil())
		return c
	}
	g.Eventually(func(g Gomega) {
		g.Expect(ready(g).Status).To(Equal(metav1.ConditionTrue))
		lease := &coordinationv1.Lease{}
		g.Expect(admin.Get(ctx, types.NamespacedName{Namespace: agentNamespace, Name: ag.node}, lease)).To(Succeed())
		g.Expect(lease.Spec.RenewTime).NotTo(BeNil())
		g.Expect(lease.Spec.RenewTime.After(lease.Spec.AcquireTime.Time)).To(BeTrue(), "renewed (updated) after its creation")
	}).WithTimeout(timeout).WithPolling(poll).Should(Succeed())

	stop()
	select {
	case err := <-done:
		g.Expect(err).NotTo(HaveOccurred())
	case <-time.After(timeout):
		t.Fatal("the node agent did not stop")
	}
	g.Expect(ready(g).Reason).To(Equal(nodeagent.ReasonAgentStopped), "the shutdown report passed the policy")
}

// newAgent makes a Node and an agent Pod placed on it, and returns a client
// authenticated by a token bound to that Pod, as the DaemonSet's projected
// token would be.
func newAgent(ctx context.Context, t *testing.T, cfg *rest.Config, admin client.Client, node string) *agent {
	t.Helper()
	must(t, admin.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}))
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: agentNamespace, Name: "sandbox-node-agent-" + node},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: agentServiceAccount,
			Containers:         []corev1.Container{{Name: "node-agent", Image: "sandbox-node-agent:test"}},
		},
	}
	must(t, admin.Create(ctx, pod))
	config := tokenConfig(cfg, mintToken(ctx, t, cfg, &authenticationv1.BoundObjectReference{
		Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID,
	}))
	c, err := client.New(config, client.Options{Scheme: scheme})
	must(t, err)
	return &agent{node: node, config: config, client: c}
}

// mintToken asks the TokenRequest API for a token of the agent's
// ServiceAccount, bound to ref (nil: bound to nothing but its expiry).
func mintToken(ctx context.Context, t *testing.T, cfg *rest.Config, ref *authenticationv1.BoundObjectReference) string {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	tr, err := cs.CoreV1().ServiceAccounts(agentNamespace).CreateToken(ctx, agentServiceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{BoundObjectRef: ref, ExpirationSeconds: ptr.To(int64(3600))},
	}, metav1.CreateOptions{})
	must(t, err)
	return tr.Status.Token
}

// tokenConfig connects to the API server of cfg with a bearer token only.
func tokenConfig(cfg *rest.Config, token string) *rest.Config {
	c := rest.AnonymousClientConfig(cfg)
	c.BearerToken = token
	return c
}

// whoAmI is the user the API server sees for cfg.
func whoAmI(ctx context.Context, g Gomega, cfg *rest.Config) authenticationv1.UserInfo {
	cs, err := kubernetes.NewForConfig(cfg)
	g.Expect(err).NotTo(HaveOccurred())
	r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	return r.Status.UserInfo
}

// createSandbox makes a Sandbox with both finalizers placed on node, as the
// manager leaves it.
func createSandbox(ctx context.Context, t *testing.T, admin client.Client, name, node string) *sandboxv1alpha1.Sandbox {
	t.Helper()
	sbx := &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: sandboxNamespace, Name: name,
			Finalizers: []string{sandboxv1alpha1.ManagerFinalizer, sandboxv1alpha1.NodeAgentFinalizer},
		},
		Spec: sandboxv1alpha1.SandboxSpec{Image: "docker.io/library/busybox:1.37"},
	}
	must(t, admin.Create(ctx, sbx))
	must(t, mergeStatus(ctx, admin, sbx, `{"status":{"nodeName":"`+node+`","run":1}}`))
	return sbx
}

// applyStatus reports a running VM the way the agent's apply does: a
// server-side apply of status under the agent's field owner.
func applyStatus(ctx context.Context, ag *agent, sbx *sandboxv1alpha1.Sandbox) error {
	vm := sandboxv1alpha1ac.VMStatus().WithRun(1).WithNodeName(ag.node).WithState(sandboxv1alpha1.VMRunning)
	ac := sandboxv1alpha1ac.Sandbox(sbx.Name, sbx.Namespace).WithStatus(sandboxv1alpha1ac.SandboxStatus().WithVM(vm))
	return ag.client.Status().Apply(ctx, ac, client.FieldOwner(sandboxv1alpha1.NodeAgentFieldOwner), client.ForceOwnership)
}

func mergeStatus(ctx context.Context, c client.Client, sbx *sandboxv1alpha1.Sandbox, patch string) error {
	return c.Status().Patch(ctx, sbx.DeepCopy(), client.RawPatch(types.MergePatchType, []byte(patch)))
}

// removeFinalizer removes finalizer from cur as the agent's finalize does:
// a merge patch with an optimistic lock. cur is updated on success.
func removeFinalizer(ctx context.Context, c client.Client, cur *sandboxv1alpha1.Sandbox, finalizer string) error {
	obj := cur.DeepCopy()
	controllerutil.RemoveFinalizer(obj, finalizer)
	if err := c.Patch(ctx, obj, client.MergeFromWithOptions(cur, client.MergeFromWithOptimisticLock{})); err != nil {
		return err
	}
	obj.DeepCopyInto(cur)
	return nil
}

func newLease(name string) *coordinationv1.Lease {
	now := metav1.NowMicro()
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: agentNamespace, Name: name},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity: ptr.To(name), LeaseDurationSeconds: ptr.To(int32(40)),
			AcquireTime: &now, RenewTime: &now,
		},
	}
}

// newEvent is an event about sbx as the agent's recorder writes one.
func newEvent(sbx *sandboxv1alpha1.Sandbox) *eventsv1.Event {
	return &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Namespace: sbx.Namespace, GenerateName: sbx.Name + "-"},
		EventTime:           metav1.NowMicro(),
		ReportingController: "sandbox-node-agent",
		ReportingInstance:   "sandbox-node-agent-test",
		Action:              "Start",
		Reason:              "Started",
		Type:                corev1.EventTypeNormal,
		Note:                "test event",
		Regarding: corev1.ObjectReference{
			APIVersion: sandboxv1alpha1.GroupVersion.String(), Kind: "Sandbox",
			Namespace: sbx.Namespace, Name: sbx.Name, UID: sbx.UID,
		},
	}
}

// beRefused matches the error of a write the policy refused with a message
// containing msg.
func beRefused(msg string) OmegaMatcher {
	return gcustom.MakeMatcher(func(err error) (bool, error) {
		return apierrors.IsForbidden(err) &&
			strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+policyName+"'") &&
			strings.Contains(err.Error(), msg), nil
	}).WithTemplate("Expected the policy to refuse the write with {{.Data}}, got error:\n{{format .Actual 1}}", msg)
}

// applyKustomization creates the objects of the files a kustomization.yaml
// lists under resources (the trees applied here use no transformers).
func applyKustomization(ctx context.Context, t *testing.T, c client.Client, dir string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	must(t, err)
	var k struct {
		Resources []string `json:"resources"`
	}
	must(t, yaml.Unmarshal(data, &k))
	if len(k.Resources) == 0 {
		t.Fatalf("%s/kustomization.yaml lists no resources", dir)
	}
	for _, r := range k.Resources {
		data, err := os.ReadFile(filepath.Join(dir, r))
		must(t, err)
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			u := &unstructured.Unstructured{}
			if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("decoding %s/%s: %v", dir, r, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			if err := c.Create(ctx, u); err != nil {
				t.Fatalf("creating %s %s from %s/%s: %v", u.GetKind(), u.GetName(), dir, r, err)
			}
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
