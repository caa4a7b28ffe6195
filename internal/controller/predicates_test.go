package controller

import (
	"testing"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

func TestActionableChange(t *testing.T) {
	base := func() *sandboxv1alpha1.Sandbox {
		return &sandboxv1alpha1.Sandbox{
			ObjectMeta: metav1.ObjectMeta{Generation: 1, Finalizers: []string{sandboxv1alpha1.ManagerFinalizer}},
			Status: sandboxv1alpha1.SandboxStatus{Run: 1, NodeName: "a", Phase: sandboxv1alpha1.PhaseStarting,
				VM: &sandboxv1alpha1.VMStatus{Run: 1, NodeName: "a", State: sandboxv1alpha1.VMBooting}},
		}
	}
	now := metav1.Now()
	tests := []struct {
		name string
		mod  func(*sandboxv1alpha1.Sandbox)
		want bool
	}{
		{"the manager's own status write is not news", func(s *sandboxv1alpha1.Sandbox) {
			s.Status.Phase = sandboxv1alpha1.PhaseRunning
			s.Status.Conditions = []metav1.Condition{{Type: sandboxv1alpha1.ConditionReady}}
		}, false},
		{"the agent's other fields are not news", func(s *sandboxv1alpha1.Sandbox) { s.Status.ImageDigest = "sha256:x" }, false},
		{"adding finalizers before deletion is the manager's own patch", func(s *sandboxv1alpha1.Sandbox) {
			s.Finalizers = append(s.Finalizers, sandboxv1alpha1.NodeAgentFinalizer)
		}, false},
		{"a spec change is news", func(s *sandboxv1alpha1.Sandbox) { s.Generation = 2 }, true},
		{"the agent's VM report is news", func(s *sandboxv1alpha1.Sandbox) { s.Status.VM.State = sandboxv1alpha1.VMRunning }, true},
		{"the agent's published ports are news", func(s *sandboxv1alpha1.Sandbox) {
			s.Status.Ports = []sandboxv1alpha1.PortStatus{{GuestPort: 80, Protocol: sandboxv1alpha1.ProtocolTCP, HostIP: "0.0.0.0", HostPort: 8080}}
		}, true},
		{"a new run (the manager's own write) is not news", func(s *sandboxv1alpha1.Sandbox) { s.Status.Run = 2 }, false},
		{"deletion is news", func(s *sandboxv1alpha1.Sandbox) { s.DeletionTimestamp = &now }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			old, cur := base(), base()
			tt.mod(cur)
			g.Expect(actionableChange(old, cur)).To(Equal(tt.want))
		})
	}

	t.Run("the agent removing its finalizer during deletion is news", func(t *testing.T) {
		g := NewWithT(t)
		old, cur := base(), base()
		old.DeletionTimestamp, cur.DeletionTimestamp = &now, &now
		old.Finalizers = append(old.Finalizers, sandboxv1alpha1.NodeAgentFinalizer)
		g.Expect(actionableChange(old, cur)).To(BeTrue())
	})
}

func TestHoldsCapacity(t *testing.T) {
	g := NewWithT(t)
	s := &sandboxv1alpha1.Sandbox{}
	g.Expect(holdsCapacity(s)).To(BeFalse(), "unplaced")
	s.Status.NodeName = "a"
	g.Expect(holdsCapacity(s)).To(BeTrue(), "placed, running")
	s.Status.TerminationReason = sandboxv1alpha1.TerminationCompleted
	g.Expect(holdsCapacity(s)).To(BeFalse(), "the run ended")
}
