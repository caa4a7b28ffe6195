package nodeagent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"go.uber.org/goleak"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

var (
	cfg       *rest.Config
	k8sClient client.Client
)

// TestMain starts one real kube-apiserver + etcd for the package and checks
// that no goroutine outlives the tests (the agent's manager and heartbeat
// must stop with their context).
func TestMain(m *testing.M) {
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: filepath.Join("..", "..", "bin", "k8s"),
	}
	var err error
	if cfg, err = env.Start(); err != nil {
		_, _ = os.Stderr.WriteString("starting envtest (run `make control-plane`): " + err.Error() + "\n")
		os.Exit(1)
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(sandboxv1alpha1.AddToScheme(scheme))
	if k8sClient, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		panic(err)
	}
	if err := k8sClient.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sandbox-system"}}); err != nil {
		panic(err)
	}
	code := m.Run()
	_ = env.Stop()
	if code == 0 {
		if err := goleak.Find(
			// client-go's and klog's process-wide background goroutines.
			goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
			goleak.IgnoreAnyFunction("k8s.io/client-go/util/workqueue.(*Typed[...]).updateUnfinishedWorkLoop"),
			goleak.IgnoreAnyFunction("k8s.io/apimachinery/pkg/watch.(*Broadcaster).loop"),
			goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreAnyFunction("internal/poll.runtime_pollWait"),
		); err != nil {
			_, _ = os.Stderr.WriteString("leaked goroutines: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

func testArgs(node string) Args {
	a := DefaultArgs()
	a.NodeName = node
	a.RenewInterval = 200 * time.Millisecond
	a.LeaseDuration = 2 * time.Second
	a.MetricsAddr, a.ProbeAddr = "0", "0"
	a.KVMPath = filepath.Join(os.TempDir(), "no-such-kvm-device")
	a.Reserve = Reserve{CPUs: 1, MemoryMiB: 512}
	a.MaxSandboxes = 7
	a.Labels = map[string]string{"pool": "test"}
	return a
}

// runAgent runs an agent until the returned stop function is called.
func runAgent(t *testing.T, args Args) (stop func()) {
	t.Helper()
	a, err := New(WithArgs(args), WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent stopped with %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("agent did not stop")
		}
	}
}

func sandboxNode(g Gomega, name string) *sandboxv1alpha1.SandboxNode {
	sn := &sandboxv1alpha1.SandboxNode{}
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKey{Name: name}, sn)).To(Succeed())
	return sn
}

func TestAgentRegistersItsNodeAndHeartbeats(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{"kubernetes.io/hostname": "node-a", "zone": "z1"}}}
	g.Expect(k8sClient.Create(ctx, node)).To(Succeed())

	args := testArgs("node-a")
	args.AllowEmulation = true
	stop := runAgent(t, args)
	host := ProbeHost(args.KVMPath, args.QEMUBinary, true)

	g.Eventually(func(g Gomega) {
		sn := sandboxNode(g, "node-a")
		ready := meta.FindStatusCondition(sn.Status.Conditions, sandboxv1alpha1.NodeConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(ready.Reason).To(Equal(ReasonAgentReady))
		g.Expect(sn.Status.Accelerator).To(Equal(sandboxv1alpha1.AcceleratorTCG), "no /dev/kvm here, emulation allowed")
		g.Expect(sn.Status.Capacity).To(Equal(sandboxv1alpha1.NodeResources{CPUs: host.CPUs, MemoryMiB: host.MemoryMiB, Sandboxes: 7}))
		g.Expect(sn.Status.Allocatable).To(Equal(sandboxv1alpha1.NodeResources{CPUs: max(host.CPUs-1, 0), MemoryMiB: host.MemoryMiB - 512, Sandboxes: 7}))
		g.Expect(sn.Labels).To(HaveKeyWithValue("zone", "z1"), "the Node's labels, for nodeSelector")
		g.Expect(sn.Labels).To(HaveKeyWithValue("pool", "test"))
		g.Expect(sn.Labels).To(HaveKeyWithValue(AcceleratorLabel, "tcg"))
		g.Expect(sn.OwnerReferences).To(ConsistOf(HaveField("UID", node.UID)), "owned by its Node")
		g.Expect(sn.Status.Versions.Agent).NotTo(BeEmpty())
	}).WithTimeout(20 * time.Second).Should(Succeed())

	By := func(string) {}
	By("renewing the Lease")
	lease := &coordinationv1.Lease{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: "sandbox-system", Name: "node-a"}, lease)).To(Succeed())
	g.Expect(*lease.Spec.HolderIdentity).To(Equal("node-a"))
	g.Expect(*lease.Spec.LeaseDurationSeconds).To(Equal(int32(2)))
	first := lease.Spec.RenewTime.Time
	g.Eventually(func(g Gomega) time.Time {
		l := &coordinationv1.Lease{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: "sandbox-system", Name: "node-a"}, l)).To(Succeed())
		return l.Spec.RenewTime.Time
	}).WithTimeout(5 * time.Second).Should(BeTemporally(">", first))

	By("marking the SandboxNode not ready when it stops")
	stop()
	sn := sandboxNode(g, "node-a")
	ready := meta.FindStatusCondition(sn.Status.Conditions, sandboxv1alpha1.NodeConditionReady)
	g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
	g.Expect(ready.Reason).To(Equal(ReasonAgentStopped))
}

func TestAgentWithoutKVMOrEmulationIsNotReady(t *testing.T) {
	g := NewWithT(t)
	args := testArgs("node-b")
	args.AllowEmulation = false
	stop := runAgent(t, args)
	defer stop()
	g.Eventually(func(g Gomega) {
		sn := sandboxNode(g, "node-b")
		ready := meta.FindStatusCondition(sn.Status.Conditions, sandboxv1alpha1.NodeConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(ready.Reason).To(Equal(ReasonNoAccelerator))
		g.Expect(ready.Message).To(ContainSubstring("--allow-emulation"))
		g.Expect(sn.Status.Accelerator).To(BeEmpty())
		g.Expect(sn.OwnerReferences).To(BeEmpty(), "no Node object named node-b exists")
	}).WithTimeout(20 * time.Second).Should(Succeed())
}

func TestNewRequiresANodeName(t *testing.T) {
	g := NewWithT(t)
	_, err := New(WithArgs(DefaultArgs()), WithConfig(cfg))
	g.Expect(err).To(MatchError(errNoNodeName))
}

func TestAllocatable(t *testing.T) {
	g := NewWithT(t)
	g.Expect(Allocatable(sandboxv1alpha1.NodeResources{CPUs: 4, MemoryMiB: 8192, Sandboxes: 10}, Reserve{CPUs: 1, MemoryMiB: 1024})).
		To(Equal(sandboxv1alpha1.NodeResources{CPUs: 3, MemoryMiB: 7168, Sandboxes: 10}))
	g.Expect(Allocatable(sandboxv1alpha1.NodeResources{CPUs: 1, MemoryMiB: 512}, Reserve{CPUs: 2, MemoryMiB: 1024})).
		To(Equal(sandboxv1alpha1.NodeResources{}), "never below zero")
}

func TestKVMUsable(t *testing.T) {
	g := NewWithT(t)
	g.Expect(kvmUsable(filepath.Join(t.TempDir(), "missing"))).To(MatchError(os.ErrNotExist))
	notKVM := filepath.Join(t.TempDir(), "kvm")
	g.Expect(os.WriteFile(notKVM, nil, 0o600)).To(Succeed())
	g.Expect(kvmUsable(notKVM)).To(MatchError(ContainSubstring("KVM_GET_API_VERSION")), "a file that is not a KVM device")
}

func TestAcceleratorOverride(t *testing.T) {
	g := NewWithT(t)
	a := DefaultArgs()
	a.Accelerator = "tcg"
	g.Expect(a.probe().Accelerator).To(Equal(sandboxv1alpha1.AcceleratorTCG), "tcg is forced, emulation implied")
	a.Accelerator, a.KVMPath = "kvm", filepath.Join(t.TempDir(), "missing")
	g.Expect(a.probe().Accelerator).To(BeEmpty(), "kvm required and absent: no accelerator")
	a.Accelerator, a.AllowEmulation = "auto", true
	g.Expect(a.probe().Accelerator).To(Equal(sandboxv1alpha1.AcceleratorTCG))
}

func TestMemTotalMiB(t *testing.T) {
	g := NewWithT(t)
	p := filepath.Join(t.TempDir(), "meminfo")
	g.Expect(os.WriteFile(p, []byte("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), 0o600)).To(Succeed())
	g.Expect(memTotalMiB(p)).To(Equal(int64(24000)))
	g.Expect(memTotalMiB(filepath.Join(t.TempDir(), "missing"))).To(BeZero())
}
