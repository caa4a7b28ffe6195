package controller

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// kstatusOf computes the status GitOps tools (Flux, Argo CD via its health
// checks, kpt, cli-utils' apply --wait) see for a Sandbox as stored.
func kstatusOf(g Gomega, s *sandboxv1alpha1.Sandbox) *status.Result {
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(s)
	g.Expect(err).NotTo(HaveOccurred())
	res, err := status.Compute(&unstructured.Unstructured{Object: obj})
	g.Expect(err).NotTo(HaveOccurred())
	return res
}

var _ = Describe("Sandbox status for GitOps (kstatus)", func() {
	namespace := specNamespace("kstatus-")

	It("is InProgress while the sandbox starts and Current once it runs", func(ctx SpecContext) {
		ns := namespace()
		createNode(ctx, "kstatus-node")
		s := newSandbox(ns, "gitops")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		expectPlaced(ctx, s)

		By("placed, image pulling: InProgress (Ready False, observedGeneration current)")
		agentReports(ctx, s, sandboxv1alpha1.VMPulling)
		Eventually(func(g Gomega) {
			got := get(ctx, s)(g)
			g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStarting))
			g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
			g.Expect(kstatusOf(g, got).Status).To(Equal(status.InProgressStatus))
		}).Should(Succeed())

		By("the guest answers: Current")
		agentReports(ctx, s, sandboxv1alpha1.VMRunning)
		var running *sandboxv1alpha1.Sandbox
		Eventually(func(g Gomega) {
			got := get(ctx, s)(g)
			g.Expect(got.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
			res := kstatusOf(g, got)
			g.Expect(res.Status).To(Equal(status.CurrentStatus), res.Message)
			running = got
		}).Should(Succeed())

		By("reading managedFields: the manager and the agent own status and metadata fields, never spec (no drift for Argo CD or Flux)")
		Expect(running.Generation).To(Equal(int64(1)), "nothing but the user changed the spec")
		owners := map[string]bool{}
		for _, mf := range running.ManagedFields {
			owners[mf.Manager] = true
			if mf.Manager == sandboxv1alpha1.ManagerFieldOwner || mf.Manager == sandboxv1alpha1.NodeAgentFieldOwner {
				Expect(mf.FieldsV1).NotTo(BeNil())
				Expect(mf.FieldsV1.GetRawString()).NotTo(ContainSubstring(`"f:spec"`), "%s owns spec fields: %s", mf.Manager, mf.FieldsV1.GetRawString())
			}
		}
		Expect(owners).To(HaveKey(sandboxv1alpha1.ManagerFieldOwner), "the manager's status writes are recorded under its field manager")
	})
})
