package controller

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/rand"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	sandboxv1alpha1ac "github.com/microvm-dev/sandbox-operator/pkg/client/applyconfiguration/api/v1alpha1"
)

func withInternalIP(ip string) nodeOpt {
	return func(n *sandboxv1alpha1.SandboxNode, _ *coordinationv1.Lease) {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
}

func withPorts(ports ...sandboxv1alpha1.PublishedPort) sbxOpt {
	return func(s *sandboxv1alpha1.Sandbox) {
		s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Ports: ports}
	}
}

// specNamespace gives each spec of the container a namespace of its own
// (prefix + random) and, after the spec, deletes its Sandboxes (confirming
// for the node agent) and the nodes: specs share the cluster. It returns
// the current spec's namespace.
func specNamespace(prefix string) func() string {
	var ns string
	BeforeEach(func(ctx SpecContext) {
		ns = prefix + rand.String(6)
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metaName(ns)})).To(Succeed())
		SetDefaultEventuallyTimeout(20 * time.Second)
		SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
	})
	AfterEach(func(ctx SpecContext) {
		list := &sandboxv1alpha1.SandboxList{}
		Expect(k8sClient.List(ctx, list, client.InNamespace(ns))).To(Succeed())
		for i := range list.Items {
			_ = k8sClient.Delete(ctx, &list.Items[i])
			agentConfirmsDeletionIfPresent(ctx, &list.Items[i])
		}
		for i := range list.Items {
			expectGone(ctx, &list.Items[i])
		}
		deleteAllNodes(ctx)
	})
	return func() string { return ns }
}

// agentReportsListening applies the VM observation and the published
// ports' endpoints together, as the node agent does: one apply under its
// field manager holds all of its fields, so reporting the VM alone would
// drop the ports.
func agentReportsListening(ctx context.Context, s *sandboxv1alpha1.Sandbox, state sandboxv1alpha1.VMState, ports ...sandboxv1alpha1.PortStatus) {
	cur := &sandboxv1alpha1.Sandbox{}
	Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), cur)).To(Succeed())
	vm := sandboxv1alpha1ac.VMStatus().WithRun(cur.Status.Run).WithNodeName(cur.Status.NodeName).WithState(state).
		WithAccelerator(sandboxv1alpha1.AcceleratorTCG).WithPID(4242)
	if state == sandboxv1alpha1.VMExited {
		vm.WithExitReason(sandboxv1alpha1.TerminationShutdownRequested).WithExitCode(0).WithExitedAt(metav1.Now())
	}
	st := sandboxv1alpha1ac.SandboxStatus().WithVM(vm)
	for _, p := range ports {
		st.WithPorts(sandboxv1alpha1ac.PortStatus().WithGuestPort(p.GuestPort).WithProtocol(p.Protocol).
			WithHostIP(p.HostIP).WithHostPort(p.HostPort))
	}
	Expect(k8sClient.Status().Apply(ctx, sandboxv1alpha1ac.Sandbox(s.Name, s.Namespace).WithStatus(st),
		client.FieldOwner(sandboxv1alpha1.NodeAgentFieldOwner), client.ForceOwnership)).To(Succeed())
}

func endpointSlicesOf(ctx context.Context, g Gomega, ns, service string) []discoveryv1.EndpointSlice {
	list := &discoveryv1.EndpointSliceList{}
	g.Expect(k8sClient.List(ctx, list, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: service})).To(Succeed())
	return list.Items
}

var _ = Describe("Sandbox Service", func() {
	ctx := context.Background()
	var ns string
	namespace := specNamespace("svc-")
	JustBeforeEach(func() { ns = namespace() })

	It("publishes a wildcard-bound port at the node's InternalIP, ready only while Running, and removes the Service with the ports", func() {
		createNode(ctx, "node-svc", withInternalIP("10.0.0.5"))
		s := newSandbox(ns, "web", withPorts(
			sandboxv1alpha1.PublishedPort{Name: "http", GuestPort: 80, HostPort: 8080, Protocol: sandboxv1alpha1.ProtocolTCP, HostIP: "0.0.0.0"},
			sandboxv1alpha1.PublishedPort{GuestPort: 443, HostPort: 8443, Protocol: sandboxv1alpha1.ProtocolTCP, HostIP: "127.0.0.1"},
		))
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Expect(expectPlaced(ctx, s)).To(Equal("node-svc"))
		sbx := get(ctx, s)(Default)

		By("keeping a selectorless Service with both ports, controlled by the Sandbox")
		svc := &corev1.Service{}
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), svc)).To(Succeed())
			g.Expect(svc.Spec.Selector).To(BeEmpty())
			g.Expect(svc.Spec.Ports).To(ConsistOf(
				corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)},
				corev1.ServicePort{Name: "tcp-443", Protocol: corev1.ProtocolTCP, Port: 443, TargetPort: intstr.FromInt32(8443)},
			))
			g.Expect(metav1.IsControlledBy(svc, sbx)).To(BeTrue())
		}).Should(Succeed())

		By("pointing an endpoint at the node's InternalIP for the 0.0.0.0 port only, not ready while starting")
		listening := []sandboxv1alpha1.PortStatus{
			{GuestPort: 80, Protocol: sandboxv1alpha1.ProtocolTCP, HostIP: "0.0.0.0", HostPort: 8080},
			{GuestPort: 443, Protocol: sandboxv1alpha1.ProtocolTCP, HostIP: "127.0.0.1", HostPort: 8443},
		}
		agentReportsListening(ctx, s, sandboxv1alpha1.VMBooting, listening...)
		expectEndpoint := func(ready bool) {
			GinkgoHelper()
			Eventually(func(g Gomega) {
				eps := endpointSlicesOf(ctx, g, ns, "web")
				g.Expect(eps).To(HaveLen(1))
				es := eps[0]
				g.Expect(es.Labels).To(HaveKeyWithValue(discoveryv1.LabelManagedBy, EndpointSliceManagedBy))
				g.Expect(metav1.IsControlledBy(&es, sbx)).To(BeTrue())
				g.Expect(es.AddressType).To(Equal(discoveryv1.AddressTypeIPv4))
				g.Expect(es.Ports).To(HaveLen(1))
				g.Expect(*es.Ports[0].Name).To(Equal("http"))
				g.Expect(*es.Ports[0].Port).To(Equal(int32(8080)))
				g.Expect(es.Endpoints).To(HaveLen(1))
				g.Expect(es.Endpoints[0].Addresses).To(Equal([]string{"10.0.0.5"}))
				g.Expect(*es.Endpoints[0].NodeName).To(Equal("node-svc"))
				g.Expect(*es.Endpoints[0].Conditions.Ready).To(Equal(ready))
			}).Should(Succeed())
		}
		expectEndpoint(false)
		Eventually(func(g Gomega) {
			c := condition(get(ctx, s)(g), sandboxv1alpha1.ConditionServiceReady)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.Reason).To(Equal(sandboxv1alpha1.ReasonServiceSynced))
			g.Expect(c.Message).To(ContainSubstring("guest port 443/TCP binds 127.0.0.1, reachable from the node only"))
		}).Should(Succeed())

		By("making the endpoint ready in phase Running")
		agentReportsListening(ctx, s, sandboxv1alpha1.VMRunning, listening...)
		expectEndpoint(true)

		By("making it not ready again once the sandbox stops")
		Eventually(func(g Gomega) {
			cur := get(ctx, s)(g)
			cur.Spec.State = sandboxv1alpha1.DesiredStateStopped
			g.Expect(k8sClient.Update(ctx, cur)).To(Succeed())
		}).Should(Succeed())
		agentReportsListening(ctx, s, sandboxv1alpha1.VMDraining, listening...)
		expectEndpoint(false)
		agentReportsListening(ctx, s, sandboxv1alpha1.VMExited)
		Eventually(func(g Gomega) sandboxv1alpha1.SandboxPhase { return get(ctx, s)(g).Status.Phase }).Should(Equal(sandboxv1alpha1.PhaseStopped))
		Eventually(func(g Gomega) { g.Expect(endpointSlicesOf(ctx, g, ns, "web")).To(BeEmpty()) }).Should(Succeed())

		By("removing the Service when the ports are removed")
		Eventually(func(g Gomega) {
			cur := get(ctx, s)(g)
			cur.Spec.Network = nil
			g.Expect(k8sClient.Update(ctx, cur)).To(Succeed())
		}).Should(Succeed())
		Eventually(func(g Gomega) {
			err := k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &corev1.Service{})
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "Service still there: %v", err)
			g.Expect(endpointSlicesOf(ctx, g, ns, "web")).To(BeEmpty())
			g.Expect(get(ctx, s)(g).Status.Conditions).NotTo(ContainElement(
				HaveField("Type", sandboxv1alpha1.ConditionServiceReady)))
		}).Should(Succeed())
	})

	It("drops the EndpointSlice when the agent no longer listens, and both objects when the Sandbox is deleted", func() {
		createNode(ctx, "node-svc", withInternalIP("10.0.0.5"))
		s := newSandbox(ns, "api", withPorts(
			sandboxv1alpha1.PublishedPort{GuestPort: 80, HostPort: 8080, Protocol: sandboxv1alpha1.ProtocolTCP, HostIP: "0.0.0.0"},
		))
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		expectPlaced(ctx, s)
		agentReportsListening(ctx, s, sandboxv1alpha1.VMRunning,
			sandboxv1alpha1.PortStatus{GuestPort: 80, Protocol: sandboxv1alpha1.ProtocolTCP, HostIP: "0.0.0.0", HostPort: 8080})
		Eventually(func(g Gomega) { g.Expect(endpointSlicesOf(ctx, g, ns, "api")).To(HaveLen(1)) }).Should(Succeed())

		By("dropping the endpoint when the agent stops listening")
		agentReportsListening(ctx, s, sandboxv1alpha1.VMRunning)
		Eventually(func(g Gomega) { g.Expect(endpointSlicesOf(ctx, g, ns, "api")).To(BeEmpty()) }).Should(Succeed())
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &corev1.Service{})).To(Succeed())

		By("deleting the Service and EndpointSlice as soon as the Sandbox's deletion begins (envtest has no garbage collector)")
		agentReportsListening(ctx, s, sandboxv1alpha1.VMRunning,
			sandboxv1alpha1.PortStatus{GuestPort: 80, Protocol: sandboxv1alpha1.ProtocolTCP, HostIP: "0.0.0.0", HostPort: 8080})
		Eventually(func(g Gomega) { g.Expect(endpointSlicesOf(ctx, g, ns, "api")).To(HaveLen(1)) }).Should(Succeed())
		Expect(k8sClient.Delete(ctx, s)).To(Succeed())
		Eventually(func(g Gomega) {
			err := k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &corev1.Service{})
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "Service still there: %v", err)
			g.Expect(endpointSlicesOf(ctx, g, ns, "api")).To(BeEmpty())
		}).Should(Succeed())
		Expect(get(ctx, s)(Default).Finalizers).To(ContainElement(sandboxv1alpha1.NodeAgentFinalizer), "still waiting for the agent")
	})

	It("leaves a foreign Service of the Sandbox's name alone and reports it", func() {
		createNode(ctx, "node-svc", withInternalIP("10.0.0.5"))
		foreign := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "taken", Labels: map[string]string{"app": "someone-else"}},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "someone-else"},
				Ports: []corev1.ServicePort{{Name: "x", Protocol: corev1.ProtocolTCP, Port: 1234, TargetPort: intstr.FromInt32(1234)}}},
		}
		Expect(k8sClient.Create(ctx, foreign)).To(Succeed())
		s := newSandbox(ns, "taken", withPorts(
			sandboxv1alpha1.PublishedPort{GuestPort: 80, HostPort: 8080, Protocol: sandboxv1alpha1.ProtocolTCP, HostIP: "0.0.0.0"},
		))
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		expectPlaced(ctx, s)
		agentReportsListening(ctx, s, sandboxv1alpha1.VMRunning,
			sandboxv1alpha1.PortStatus{GuestPort: 80, Protocol: sandboxv1alpha1.ProtocolTCP, HostIP: "0.0.0.0", HostPort: 8080})

		Eventually(func(g Gomega) {
			got := get(ctx, s)(g)
			g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
			c := condition(got, sandboxv1alpha1.ConditionServiceReady)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(sandboxv1alpha1.ReasonServiceConflict))
			g.Expect(c.Message).To(ContainSubstring("Service taken exists and is not controlled by this Sandbox"))
			g.Expect(eventsList{}.reasons(ctx, g, ns, "taken")).To(ContainElement(sandboxv1alpha1.ReasonServiceConflict))
		}).Should(Succeed())
		Consistently(func(g Gomega) {
			cur := &corev1.Service{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(foreign), cur)).To(Succeed())
			g.Expect(cur.OwnerReferences).To(BeEmpty())
			g.Expect(cur.Spec.Selector).To(Equal(map[string]string{"app": "someone-else"}))
			g.Expect(cur.Spec.Ports).To(HaveLen(1))
			g.Expect(cur.Spec.Ports[0].Port).To(Equal(int32(1234)))
			g.Expect(endpointSlicesOf(ctx, g, ns, "taken")).To(BeEmpty(), "no endpoints fed to someone else's Service")
		}, time.Second).Should(Succeed())

		By("taking the name once the foreign Service is gone")
		Expect(k8sClient.Delete(ctx, foreign)).To(Succeed())
		Eventually(func(g Gomega) {
			cur := &corev1.Service{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), cur)).To(Succeed())
			g.Expect(metav1.IsControlledBy(cur, get(ctx, s)(g))).To(BeTrue())
			g.Expect(endpointSlicesOf(ctx, g, ns, "taken")).To(HaveLen(1))
			g.Expect(condition(get(ctx, s)(g), sandboxv1alpha1.ConditionServiceReady).Reason).To(Equal(sandboxv1alpha1.ReasonServiceSynced))
		}).Should(Succeed())
	})
})
