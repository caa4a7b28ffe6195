package controller

import (
	"context"
	"fmt"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	sandboxv1alpha1ac "github.com/microvm-dev/sandbox-operator/pkg/client/applyconfiguration/api/v1alpha1"
)

func metaName(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name} }

// nodeOpt changes a test SandboxNode before it is created.
type nodeOpt func(*sandboxv1alpha1.SandboxNode, *coordinationv1.Lease)

func withCapacity(cpus int32, memMiB int64, slots int32) nodeOpt {
	return func(n *sandboxv1alpha1.SandboxNode, _ *coordinationv1.Lease) {
		n.Status.Allocatable = sandboxv1alpha1.NodeResources{CPUs: cpus, MemoryMiB: memMiB, Sandboxes: slots}
	}
}

func withLabels(kv ...string) nodeOpt {
	return func(n *sandboxv1alpha1.SandboxNode, _ *coordinationv1.Lease) {
		for i := 0; i+1 < len(kv); i += 2 {
			n.Labels[kv[i]] = kv[i+1]
		}
	}
}

func withTaint(key string) nodeOpt {
	return func(n *sandboxv1alpha1.SandboxNode, _ *coordinationv1.Lease) {
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: key, Value: "true", Effect: corev1.TaintEffectNoSchedule})
	}
}

func notReady() nodeOpt {
	return func(n *sandboxv1alpha1.SandboxNode, _ *coordinationv1.Lease) {
		n.Status.Conditions[0].Status = metav1.ConditionFalse
		n.Status.Conditions[0].Reason = "AgentStopping"
	}
}

// leaseFor makes the node's Lease valid for d from now (negative: expired).
func leaseFor(d time.Duration) nodeOpt {
	return func(_ *sandboxv1alpha1.SandboxNode, l *coordinationv1.Lease) {
		secs := int32(max(d, time.Second) / time.Second)
		renew := time.Now()
		if d < 0 {
			renew = time.Now().Add(d - time.Second)
			secs = 1
		}
		l.Spec.LeaseDurationSeconds = ptr.To(secs)
		l.Spec.RenewTime = &metav1.MicroTime{Time: renew}
	}
}

// createNode registers a SandboxNode and its Lease the way a node agent
// does: a Ready node with room for 8 sandboxes of 1 vCPU / 512 MiB by
// default, and a Lease valid for an hour.
func createNode(ctx context.Context, name string, opts ...nodeOpt) {
	n := &sandboxv1alpha1.SandboxNode{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testLeaseNamespace},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(name)},
	}
	status := sandboxv1alpha1.SandboxNodeStatus{
		Capacity:    sandboxv1alpha1.NodeResources{CPUs: 8, MemoryMiB: 4096, Sandboxes: 8},
		Allocatable: sandboxv1alpha1.NodeResources{CPUs: 8, MemoryMiB: 4096, Sandboxes: 8},
		Accelerator: sandboxv1alpha1.AcceleratorTCG,
		Conditions: []metav1.Condition{{Type: sandboxv1alpha1.NodeConditionReady, Status: metav1.ConditionTrue,
			Reason: "AgentReady", Message: "test node", LastTransitionTime: metav1.Now()}},
	}
	n.Status = status
	leaseFor(time.Hour)(n, l)
	for _, o := range opts {
		o(n, l)
	}
	status = n.Status
	Expect(k8sClient.Create(ctx, n)).To(Succeed())
	n.Status = status
	Expect(k8sClient.Status().Update(ctx, n)).To(Succeed())
	Expect(k8sClient.Create(ctx, l)).To(Succeed())
}

func deleteAllNodes(ctx context.Context) {
	Expect(k8sClient.DeleteAllOf(ctx, &sandboxv1alpha1.SandboxNode{})).To(Succeed())
	Expect(k8sClient.DeleteAllOf(ctx, &coordinationv1.Lease{}, client.InNamespace(testLeaseNamespace))).To(Succeed())
}

// sbxOpt changes a test Sandbox before it is created.
type sbxOpt func(*sandboxv1alpha1.Sandbox)

func withResources(cpus, memMiB int32) sbxOpt {
	return func(s *sandboxv1alpha1.Sandbox) {
		s.Spec.Resources = sandboxv1alpha1.SandboxResources{CPUs: cpus, MemoryMiB: memMiB}
	}
}

func newSandbox(ns, name string, opts ...sbxOpt) *sandboxv1alpha1.Sandbox {
	s := &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       sandboxv1alpha1.SandboxSpec{Image: "docker.io/library/busybox:1.36"},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func get(ctx context.Context, s *sandboxv1alpha1.Sandbox) func(Gomega) *sandboxv1alpha1.Sandbox {
	return func(g Gomega) *sandboxv1alpha1.Sandbox {
		out := &sandboxv1alpha1.Sandbox{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), out)).To(Succeed())
		return out
	}
}

func condition(s *sandboxv1alpha1.Sandbox, t string) metav1.Condition {
	if c := meta.FindStatusCondition(s.Status.Conditions, t); c != nil {
		return *c
	}
	return metav1.Condition{}
}

// expectPlaced waits until the sandbox is placed and returns its node.
func expectPlaced(ctx context.Context, s *sandboxv1alpha1.Sandbox) string {
	var node string
	Eventually(func(g Gomega) {
		got := get(ctx, s)(g)
		g.Expect(got.Status.NodeName).NotTo(BeEmpty())
		g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStarting))
		g.Expect(condition(got, sandboxv1alpha1.ConditionScheduled).Status).To(Equal(metav1.ConditionTrue))
		node = got.Status.NodeName
	}).Should(Succeed())
	return node
}

func expectUnschedulable(ctx context.Context, s *sandboxv1alpha1.Sandbox, msg string) {
	Eventually(func(g Gomega) {
		got := get(ctx, s)(g)
		g.Expect(got.Status.NodeName).To(BeEmpty())
		g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseCreated))
		c := condition(got, sandboxv1alpha1.ConditionScheduled)
		g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(c.Reason).To(Equal(sandboxv1alpha1.ReasonUnschedulable))
		g.Expect(c.Message).To(Equal(msg))
		g.Expect(condition(got, sandboxv1alpha1.ConditionReady).Reason).To(Equal(sandboxv1alpha1.ReasonPending))
	}).Should(Succeed())
}

// agentReports applies a VM observation for the sandbox's current run the
// way the node agent does: server-side apply under the agent's field
// manager. (A stand-in for the node agent, which is covered by its own
// suite once it exists; the manager's side of the contract is what is
// tested here.)
func agentReports(ctx context.Context, s *sandboxv1alpha1.Sandbox, state sandboxv1alpha1.VMState, mods ...func(*sandboxv1alpha1ac.VMStatusApplyConfiguration)) {
	cur := &sandboxv1alpha1.Sandbox{}
	Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), cur)).To(Succeed())
	vm := sandboxv1alpha1ac.VMStatus().WithRun(cur.Status.Run).WithNodeName(cur.Status.NodeName).WithState(state).
		WithAccelerator(sandboxv1alpha1.AcceleratorTCG).WithPID(4242)
	if state == sandboxv1alpha1.VMRunning {
		vm.WithBootedAt(metav1.Now())
	}
	for _, m := range mods {
		m(vm)
	}
	ac := sandboxv1alpha1ac.Sandbox(s.Name, s.Namespace).WithStatus(sandboxv1alpha1ac.SandboxStatus().WithVM(vm))
	Expect(k8sClient.Status().Apply(ctx, ac, client.FieldOwner(sandboxv1alpha1.NodeAgentFieldOwner), client.ForceOwnership)).To(Succeed())
}

func exited(reason sandboxv1alpha1.TerminationReason, code int32) func(*sandboxv1alpha1ac.VMStatusApplyConfiguration) {
	return func(vm *sandboxv1alpha1ac.VMStatusApplyConfiguration) {
		vm.WithExitReason(reason).WithExitCode(code).WithExitedAt(metav1.Now())
	}
}

// agentConfirmsDeletion removes the node agent's finalizer, as the agent
// does once the VM and its disks are gone.
func agentConfirmsDeletion(ctx context.Context, s *sandboxv1alpha1.Sandbox) {
	Eventually(func(g Gomega) {
		cur := &sandboxv1alpha1.Sandbox{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), cur)).To(Succeed())
		controllerutil.RemoveFinalizer(cur, sandboxv1alpha1.NodeAgentFinalizer)
		g.Expect(k8sClient.Update(ctx, cur)).To(Succeed())
	}).Should(Succeed())
}

func expectGone(ctx context.Context, s *sandboxv1alpha1.Sandbox) {
	Eventually(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &sandboxv1alpha1.Sandbox{}))
	}).Should(BeTrue())
}

var _ = Describe("Sandbox manager", func() {
	var (
		ctx context.Context
		ns  string
	)

	BeforeEach(func() {
		ctx = context.Background()
		ns = "sbx-" + rand.String(6)
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metaName(ns)})).To(Succeed())
		SetDefaultEventuallyTimeout(20 * time.Second)
		SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
	})

	AfterEach(func() {
		// Let every sandbox of the spec go (the agent's finalizer is the
		// test's to remove), then remove the nodes: specs share the cluster.
		list := &sandboxv1alpha1.SandboxList{}
		Expect(k8sClient.List(ctx, list, client.InNamespace(ns))).To(Succeed())
		for i := range list.Items {
			s := &list.Items[i]
			_ = k8sClient.Delete(ctx, s)
			agentConfirmsDeletionIfPresent(ctx, s)
		}
		for i := range list.Items {
			expectGone(ctx, &list.Items[i])
		}
		deleteAllNodes(ctx)
	})

	Context("placement", func() {
		It("places a sandbox on a node with room, with finalizers and Scheduled=True", func() {
			createNode(ctx, "node-a")
			s := newSandbox(ns, "one")
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			Expect(expectPlaced(ctx, s)).To(Equal("node-a"))

			got := get(ctx, s)(Default)
			Expect(got.Finalizers).To(ConsistOf(sandboxv1alpha1.ManagerFinalizer, sandboxv1alpha1.NodeAgentFinalizer))
			Expect(got.Status.Run).To(Equal(int32(1)))
			Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
			Expect(got.Status.Timings).NotTo(BeNil())
			Expect(got.Status.Timings.ScheduledMillis).NotTo(BeNil())
			Expect(condition(got, sandboxv1alpha1.ConditionReady).Reason).To(Equal(sandboxv1alpha1.ReasonStarting))

			By("listing it with the status.nodeName field selector")
			list := &sandboxv1alpha1.SandboxList{}
			Expect(k8sClient.List(ctx, list, client.InNamespace(ns), client.MatchingFields{"status.nodeName": "node-a"})).To(Succeed())
			Expect(list.Items).To(HaveLen(1))
		})

		It("honours capacity: a sandbox that fits nowhere is Unschedulable, naming what was short", func() {
			createNode(ctx, "small", withCapacity(4, 1024, 8))
			createNode(ctx, "down", notReady())
			createNode(ctx, "busy", withCapacity(1, 8192, 8))
			s := newSandbox(ns, "big", withResources(2, 2048))
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			expectUnschedulable(ctx, s, "0/3 nodes are available: 1 insufficient cpus, 1 insufficient memory, 1 not ready.")

			By("placing it as soon as a node with room appears")
			createNode(ctx, "roomy", withCapacity(4, 4096, 8))
			Expect(expectPlaced(ctx, s)).To(Equal("roomy"))
		})

		It("counts placed sandboxes against a node's allocatable", func() {
			createNode(ctx, "node-a", withCapacity(2, 8192, 8))
			first := newSandbox(ns, "first", withResources(2, 512))
			Expect(k8sClient.Create(ctx, first)).To(Succeed())
			expectPlaced(ctx, first)
			second := newSandbox(ns, "second", withResources(1, 512))
			Expect(k8sClient.Create(ctx, second)).To(Succeed())
			expectUnschedulable(ctx, second, "0/1 nodes are available: 1 insufficient cpus.")

			By("freeing the capacity when the first one is deleted")
			Expect(k8sClient.Delete(ctx, first)).To(Succeed())
			agentConfirmsDeletion(ctx, first)
			expectGone(ctx, first)
			Expect(expectPlaced(ctx, second)).To(Equal("node-a"))
		})

		It("honours nodeSelector and tolerations", func() {
			createNode(ctx, "plain")
			createNode(ctx, "fast", withLabels("disk", "nvme"))
			createNode(ctx, "tainted", withTaint("dedicated"))

			sel := newSandbox(ns, "selector", func(s *sandboxv1alpha1.Sandbox) { s.Spec.NodeSelector = map[string]string{"disk": "nvme"} })
			Expect(k8sClient.Create(ctx, sel)).To(Succeed())
			Expect(expectPlaced(ctx, sel)).To(Equal("fast"))

			zoneB := newSandbox(ns, "zone-b", func(s *sandboxv1alpha1.Sandbox) { s.Spec.NodeSelector = map[string]string{"zone": "b"} })
			Expect(k8sClient.Create(ctx, zoneB)).To(Succeed())
			expectUnschedulable(ctx, zoneB, "0/3 nodes are available: 3 didn't match the node selector.")

			By("rejecting the only matching node for its taint")
			n := &sandboxv1alpha1.SandboxNode{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Name: "tainted"}, n)).To(Succeed())
			n.Labels = map[string]string{"zone": "b"}
			Expect(k8sClient.Update(ctx, n)).To(Succeed())
			expectUnschedulable(ctx, zoneB, "0/3 nodes are available: 2 didn't match the node selector, 1 had untolerated taint.")

			By("placing it there once it tolerates the taint")
			Eventually(func(g Gomega) {
				cur := get(ctx, zoneB)(g)
				cur.Spec.Tolerations = []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpExists}}
				g.Expect(k8sClient.Update(ctx, cur)).To(Succeed())
			}).Should(Succeed())
			Expect(expectPlaced(ctx, zoneB)).To(Equal("tainted"))
		})

		It("skips nodes that are not ready or whose Lease expired", func() {
			createNode(ctx, "not-ready", notReady())
			createNode(ctx, "stale", leaseFor(-time.Minute))
			s := newSandbox(ns, "waits")
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			expectUnschedulable(ctx, s, "0/2 nodes are available: 2 not ready.")

			By("placing it once the stale node renews its Lease")
			l := &coordinationv1.Lease{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: testLeaseNamespace, Name: "stale"}, l)).To(Succeed())
			l.Spec.LeaseDurationSeconds = ptr.To(int32(3600))
			l.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
			Expect(k8sClient.Update(ctx, l)).To(Succeed())
			Expect(expectPlaced(ctx, s)).To(Equal("stale"))
		})

		It("never lets two sandboxes racing for the last slot both land on the node", func() {
			createNode(ctx, "one-slot", withCapacity(8, 8192, 1))
			const racers = 6
			var wg sync.WaitGroup
			for i := range racers {
				wg.Add(1)
				go func() {
					defer GinkgoRecover()
					defer wg.Done()
					Expect(k8sClient.Create(ctx, newSandbox(ns, fmt.Sprintf("racer-%d", i)))).To(Succeed())
				}()
			}
			wg.Wait()
			placedCount := func(g Gomega) int {
				list := &sandboxv1alpha1.SandboxList{}
				g.Expect(k8sClient.List(ctx, list, client.InNamespace(ns))).To(Succeed())
				n, unsched := 0, 0
				for _, s := range list.Items {
					if s.Status.NodeName != "" {
						n++
					}
					if condition(&s, sandboxv1alpha1.ConditionScheduled).Reason == sandboxv1alpha1.ReasonUnschedulable {
						unsched++
					}
				}
				g.Expect(n + unsched).To(Equal(racers))
				return n
			}
			Eventually(placedCount).Should(Equal(1))
			Consistently(placedCount, 2*time.Second).Should(Equal(1))
		})
	})

	Context("lifecycle", func() {
		It("derives Running from the agent's report and stops a run at maxDurationSeconds", func() {
			createNode(ctx, "node-a")
			s := newSandbox(ns, "bounded", func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Lifecycle = &sandboxv1alpha1.Lifecycle{MaxDurationSeconds: ptr.To(int64(2))}
			})
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			expectPlaced(ctx, s)

			agentReports(ctx, s, sandboxv1alpha1.VMRunning)
			Eventually(func(g Gomega) {
				got := get(ctx, s)(g)
				g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
				g.Expect(got.Status.StartedAt).NotTo(BeNil())
				g.Expect(condition(got, sandboxv1alpha1.ConditionReady).Status).To(Equal(metav1.ConditionTrue))
				g.Expect(got.Status.StopRequest).To(BeNil())
			}).Should(Succeed())

			By("asking the agent to stop once the maximum duration has passed")
			Eventually(func(g Gomega) {
				got := get(ctx, s)(g)
				g.Expect(got.Status.StopRequest).NotTo(BeNil())
				g.Expect(got.Status.StopRequest.Reason).To(Equal(sandboxv1alpha1.TerminationMaxDurationExceeded))
				g.Expect(got.Status.StopRequest.RequestedAt.Sub(got.Status.StartedAt.Time)).To(BeNumerically(">=", 2*time.Second))
			}).Should(Succeed())

			By("recording MaxDurationExceeded when the agent reports the VM gone")
			agentReports(ctx, s, sandboxv1alpha1.VMExited, exited(sandboxv1alpha1.TerminationShutdownRequested, 143))
			Eventually(func(g Gomega) {
				got := get(ctx, s)(g)
				g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStopped))
				g.Expect(got.Status.TerminationReason).To(Equal(sandboxv1alpha1.TerminationMaxDurationExceeded))
				g.Expect(got.Status.ExitCode).To(HaveValue(Equal(int32(143))))
				g.Expect(got.Status.StoppedAt).NotTo(BeNil())
				g.Expect(condition(got, sandboxv1alpha1.ConditionReady).Reason).To(Equal(sandboxv1alpha1.ReasonStopped))
			}).Should(Succeed())
			Consistently(func(g Gomega) int32 { return get(ctx, s)(g).Status.Run }, time.Second).Should(Equal(int32(1)))
		})

		It("deletes an ephemeral sandbox once its run ended", func() {
			createNode(ctx, "node-a")
			s := newSandbox(ns, "ephemeral", func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Lifecycle = &sandboxv1alpha1.Lifecycle{Ephemeral: true}
			})
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			expectPlaced(ctx, s)
			agentReports(ctx, s, sandboxv1alpha1.VMRunning)
			Eventually(func(g Gomega) sandboxv1alpha1.SandboxPhase { return get(ctx, s)(g).Status.Phase }).Should(Equal(sandboxv1alpha1.PhaseRunning))
			Consistently(func(g Gomega) bool { return get(ctx, s)(g).DeletionTimestamp.IsZero() }, time.Second).Should(BeTrue())

			agentReports(ctx, s, sandboxv1alpha1.VMExited, exited(sandboxv1alpha1.TerminationCompleted, 0))
			Eventually(func(g Gomega) bool { return get(ctx, s)(g).DeletionTimestamp.IsZero() }).Should(BeFalse())
			agentConfirmsDeletion(ctx, s)
			expectGone(ctx, s)
		})

		It("restarts a failed run with restartPolicy OnFailure after the backoff", func() {
			createNode(ctx, "node-a")
			s := newSandbox(ns, "flaky", func(s *sandboxv1alpha1.Sandbox) { s.Spec.RestartPolicy = sandboxv1alpha1.RestartOnFailure })
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			expectPlaced(ctx, s)
			// Watch from here: the end of run 1 must be published (phase
			// Stopped) before run 2 starts, however short the backoff.
			wc, err := client.NewWithWatch(cfg, client.Options{Scheme: k8sClient.Scheme()})
			Expect(err).NotTo(HaveOccurred())
			w, err := wc.Watch(ctx, &sandboxv1alpha1.SandboxList{}, client.InNamespace(ns), client.MatchingFields{"metadata.name": s.Name})
			Expect(err).NotTo(HaveOccurred())
			defer w.Stop()
			// Exited 2 s ago (an agent reports whole seconds): the backoff
			// is already over when the manager records the end.
			agentReports(ctx, s, sandboxv1alpha1.VMExited, func(vm *sandboxv1alpha1ac.VMStatusApplyConfiguration) {
				vm.WithExitReason(sandboxv1alpha1.TerminationFailed).WithExitCode(1).WithExitedAt(metav1.NewTime(time.Now().Add(-2 * time.Second)))
			})
			sawStopped := false
			Eventually(func() int32 {
				for {
					select {
					case ev := <-w.ResultChan():
						if got, ok := ev.Object.(*sandboxv1alpha1.Sandbox); ok {
							if got.Status.Run == 1 && got.Status.Phase == sandboxv1alpha1.PhaseStopped {
								sawStopped = true
							}
							if got.Status.Run == 2 {
								return 2
							}
						}
					default:
						return 1
					}
				}
			}).Should(Equal(int32(2)))
			Expect(sawStopped).To(BeTrue(), "run 1's end (Stopped, Failed) was published before run 2")
			Eventually(func(g Gomega) {
				got := get(ctx, s)(g)
				g.Expect(got.Status.Run).To(Equal(int32(2)))
				g.Expect(got.Status.RestartCount).To(Equal(int32(1)))
				g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStarting))
				g.Expect(got.Status.TerminationReason).To(BeEmpty())
				g.Expect(got.Status.ExitCode).To(BeNil())
			}).Should(Succeed())
		})

		It("keeps a stopped sandbox and starts a new run when spec.state returns to Running", func() {
			createNode(ctx, "node-a")
			s := newSandbox(ns, "stopped", func(s *sandboxv1alpha1.Sandbox) { s.Spec.State = sandboxv1alpha1.DesiredStateStopped })
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			Eventually(func(g Gomega) {
				got := get(ctx, s)(g)
				g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseCreated))
				g.Expect(condition(got, sandboxv1alpha1.ConditionScheduled).Reason).To(Equal(sandboxv1alpha1.ReasonNotRequested))
			}).Should(Succeed())

			setState := func(state sandboxv1alpha1.DesiredState) {
				Eventually(func(g Gomega) {
					cur := get(ctx, s)(g)
					cur.Spec.State = state
					g.Expect(k8sClient.Update(ctx, cur)).To(Succeed())
				}).Should(Succeed())
			}
			setState(sandboxv1alpha1.DesiredStateRunning)
			expectPlaced(ctx, s)
			agentReports(ctx, s, sandboxv1alpha1.VMRunning)
			Eventually(func(g Gomega) sandboxv1alpha1.SandboxPhase { return get(ctx, s)(g).Status.Phase }).Should(Equal(sandboxv1alpha1.PhaseRunning))

			By("stopping it")
			setState(sandboxv1alpha1.DesiredStateStopped)
			agentReports(ctx, s, sandboxv1alpha1.VMDraining)
			Eventually(func(g Gomega) sandboxv1alpha1.SandboxPhase { return get(ctx, s)(g).Status.Phase }).Should(Equal(sandboxv1alpha1.PhaseDraining))
			agentReports(ctx, s, sandboxv1alpha1.VMExited, exited(sandboxv1alpha1.TerminationShutdownRequested, 0))
			Eventually(func(g Gomega) {
				got := get(ctx, s)(g)
				g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStopped))
				g.Expect(got.Status.TerminationReason).To(Equal(sandboxv1alpha1.TerminationShutdownRequested))
			}).Should(Succeed())

			By("starting it again")
			setState(sandboxv1alpha1.DesiredStateRunning)
			Eventually(func(g Gomega) {
				got := get(ctx, s)(g)
				g.Expect(got.Status.Run).To(Equal(int32(2)))
				g.Expect(got.Status.RestartCount).To(BeZero())
				g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStarting))
			}).Should(Succeed())
		})
	})

	Context("node loss", func() {
		It("crashes the run with NodeLost and re-places it when restartPolicy allows", func() {
			createNode(ctx, "doomed", leaseFor(6*time.Second))
			s := newSandbox(ns, "survivor", func(s *sandboxv1alpha1.Sandbox) { s.Spec.RestartPolicy = sandboxv1alpha1.RestartOnFailure })
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			Expect(expectPlaced(ctx, s)).To(Equal("doomed"))
			agentReports(ctx, s, sandboxv1alpha1.VMRunning)
			Eventually(func(g Gomega) sandboxv1alpha1.SandboxPhase { return get(ctx, s)(g).Status.Phase }).Should(Equal(sandboxv1alpha1.PhaseRunning))

			By("re-placing it on a live node once the Lease expired beyond the grace")
			createNode(ctx, "healthy")
			Eventually(func(g Gomega) {
				got := get(ctx, s)(g)
				g.Expect(got.Status.NodeName).To(Equal("healthy"))
				g.Expect(got.Status.Run).To(Equal(int32(2)))
				g.Expect(got.Status.RestartCount).To(Equal(int32(1)))
				g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStarting))
			}).Should(Succeed())
			events := &eventsList{}
			Eventually(func(g Gomega) []string { return events.reasons(ctx, g, ns, s.Name) }).Should(ContainElement("NodeLost"))
		})

		It("leaves the run Crashed with NodeLost under restartPolicy Never", func() {
			createNode(ctx, "doomed", leaseFor(5*time.Second))
			s := newSandbox(ns, "casualty")
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			expectPlaced(ctx, s)
			agentReports(ctx, s, sandboxv1alpha1.VMRunning)
			Eventually(func(g Gomega) {
				got := get(ctx, s)(g)
				g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseCrashed))
				g.Expect(got.Status.TerminationReason).To(Equal(sandboxv1alpha1.TerminationNodeLost))
				g.Expect(condition(got, sandboxv1alpha1.ConditionReady).Reason).To(Equal(sandboxv1alpha1.ReasonCrashed))
			}).Should(Succeed())
			Consistently(func(g Gomega) int32 { return get(ctx, s)(g).Status.Run }, time.Second).Should(Equal(int32(1)))
		})
	})

	Context("deletion", func() {
		It("waits for a live node agent to confirm the VM is gone", func() {
			createNode(ctx, "node-a")
			s := newSandbox(ns, "doomed")
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			expectPlaced(ctx, s)
			Expect(k8sClient.Delete(ctx, s)).To(Succeed())
			Consistently(func(g Gomega) []string { return get(ctx, s)(g).Finalizers }, 2*time.Second).Should(
				ConsistOf(sandboxv1alpha1.ManagerFinalizer, sandboxv1alpha1.NodeAgentFinalizer))
			agentConfirmsDeletion(ctx, s)
			expectGone(ctx, s)
		})

		It("completes without the agent once its node is lost", func() {
			createNode(ctx, "node-a", leaseFor(2*time.Second))
			s := newSandbox(ns, "orphan")
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			expectPlaced(ctx, s)
			Expect(k8sClient.Delete(ctx, s)).To(Succeed())
			expectGone(ctx, s)
		})

		It("completes at once for a sandbox that was never placed", func() {
			s := newSandbox(ns, "homeless")
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			expectUnschedulable(ctx, s, "0/0 nodes are available: no SandboxNodes exist.")
			Expect(k8sClient.Delete(ctx, s)).To(Succeed())
			expectGone(ctx, s)
		})
	})
})

func agentConfirmsDeletionIfPresent(ctx context.Context, s *sandboxv1alpha1.Sandbox) {
	Eventually(func(g Gomega) {
		cur := &sandboxv1alpha1.Sandbox{}
		err := k8sClient.Get(ctx, client.ObjectKeyFromObject(s), cur)
		if apierrors.IsNotFound(err) {
			return
		}
		g.Expect(err).NotTo(HaveOccurred())
		if !controllerutil.RemoveFinalizer(cur, sandboxv1alpha1.NodeAgentFinalizer) {
			return
		}
		g.Expect(k8sClient.Update(ctx, cur)).To(Succeed())
	}).Should(Succeed())
}

// eventsList reads events.k8s.io Events about a sandbox.
type eventsList struct{}

func (eventsList) reasons(ctx context.Context, g Gomega, ns, name string) []string {
	list := &corev1.EventList{}
	g.Expect(k8sClient.List(ctx, list, client.InNamespace(ns))).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.InvolvedObject.Name == name {
			out = append(out, e.Reason)
		}
	}
	return out
}
