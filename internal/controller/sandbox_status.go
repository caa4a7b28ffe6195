package controller

import (
	"context"
	"fmt"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	sandboxv1alpha1ac "github.com/microvm-dev/sandbox-operator/pkg/client/applyconfiguration/api/v1alpha1"
)

// managerConditions are the condition types the manager owns.
var managerConditions = []string{sandboxv1alpha1.ConditionScheduled, sandboxv1alpha1.ConditionReady, sandboxv1alpha1.ConditionServiceReady}

// managerView keeps only the manager-owned fields of a status (see
// SandboxStatus), so that two statuses can be compared for what this
// manager would write.
func managerView(st *sandboxv1alpha1.SandboxStatus) sandboxv1alpha1.SandboxStatus {
	v := sandboxv1alpha1.SandboxStatus{
		Phase:              st.Phase,
		ObservedGeneration: st.ObservedGeneration,
		NodeName:           st.NodeName,
		Run:                st.Run,
		RestartCount:       st.RestartCount,
		StartedAt:          st.StartedAt,
		StoppedAt:          st.StoppedAt,
		ExitCode:           st.ExitCode,
		TerminationReason:  st.TerminationReason,
		StopRequest:        st.StopRequest,
	}
	for _, t := range managerConditions {
		if c := meta.FindStatusCondition(st.Conditions, t); c != nil {
			v.Conditions = append(v.Conditions, *c)
		}
	}
	if st.Timings != nil && st.Timings.ScheduledMillis != nil {
		v.Timings = &sandboxv1alpha1.Timings{ScheduledMillis: st.Timings.ScheduledMillis}
	}
	return v
}

// applyStatus writes the manager-owned status fields with server-side apply,
// once per pass and only when they changed. Server-side apply (not a merge
// patch) because the node agent writes the same object's status: each
// writer owns its fields, and a field this manager stops setting is removed
// without touching the agent's. observedGeneration advances only after a
// pass without errors. Events are emitted once the write went through.
func (r *SandboxReconciler) applyStatus(ctx context.Context, s *scope, passOK bool) error {
	if s.deleted {
		r.emit(s)
		return nil
	}
	if passOK {
		s.st.ObservedGeneration = s.sbx.Generation
	}
	for _, t := range managerConditions {
		if c := meta.FindStatusCondition(s.st.Conditions, t); c != nil {
			c.ObservedGeneration = s.st.ObservedGeneration
		}
	}
	want := managerView(s.st)
	if apiequality.Semantic.DeepEqual(want, managerView(&s.sbx.Status)) {
		r.emit(s)
		return nil
	}
	if err := r.Status().Apply(ctx, statusApplyConfig(s.sbx, &want),
		client.FieldOwner(sandboxv1alpha1.ManagerFieldOwner), client.ForceOwnership); err != nil {
		if s.st.NodeName != s.sbx.Status.NodeName {
			r.Assumer.Forget(s.sbx.UID) // the binding did not happen
		}
		if apierrors.IsNotFound(err) {
			return nil
		}
		if apierrors.IsConflict(err) {
			// This pass read a stale copy from the cache: redo it shortly.
			ctrl.LoggerFrom(ctx).V(4).Info("Retrying a status write based on a stale read")
			s.retryStale = true
			return nil
		}
		return fmt.Errorf("failed to apply status of Sandbox %s: %w", klog.KObj(s.sbx), err)
	}
	if s.st.Phase != s.sbx.Status.Phase {
		crPhaseTransitions.WithLabelValues(string(s.st.Phase)).Inc()
	}
	r.emit(s)
	return nil
}

// statusApplyConfig builds the apply configuration of the manager-owned
// fields in v.
func statusApplyConfig(sbx *sandboxv1alpha1.Sandbox, v *sandboxv1alpha1.SandboxStatus) *sandboxv1alpha1ac.SandboxApplyConfiguration {
	st := sandboxv1alpha1ac.SandboxStatus().
		WithObservedGeneration(v.ObservedGeneration).
		WithRun(v.Run).
		WithRestartCount(v.RestartCount)
	if v.Phase != "" {
		st.WithPhase(v.Phase)
	}
	if v.NodeName != "" {
		st.WithNodeName(v.NodeName)
	}
	if v.StartedAt != nil {
		st.WithStartedAt(*v.StartedAt)
	}
	if v.StoppedAt != nil {
		st.WithStoppedAt(*v.StoppedAt)
	}
	if v.ExitCode != nil {
		st.WithExitCode(*v.ExitCode)
	}
	if v.TerminationReason != "" {
		st.WithTerminationReason(v.TerminationReason)
	}
	if v.StopRequest != nil {
		st.WithStopRequest(sandboxv1alpha1ac.StopRequest().
			WithReason(v.StopRequest.Reason).WithRequestedAt(v.StopRequest.RequestedAt))
	}
	if v.Timings != nil && v.Timings.ScheduledMillis != nil {
		st.WithTimings(sandboxv1alpha1ac.Timings().WithScheduledMillis(*v.Timings.ScheduledMillis))
	}
	for i := range v.Conditions {
		c := &v.Conditions[i]
		st.WithConditions(metav1ac.Condition().
			WithType(c.Type).WithStatus(c.Status).WithReason(c.Reason).WithMessage(c.Message).
			WithLastTransitionTime(c.LastTransitionTime).WithObservedGeneration(c.ObservedGeneration))
	}
	// The resourceVersion makes the apply conditional on the object this
	// pass read: a decision made on a stale cache copy (say, a second
	// restart of the same run) fails with a conflict instead of landing.
	return sandboxv1alpha1ac.Sandbox(sbx.Name, sbx.Namespace).WithResourceVersion(sbx.ResourceVersion).WithStatus(st)
}

// emit records the pass's events (transitions only: steps add an event
// when they change something).
func (r *SandboxReconciler) emit(s *scope) {
	for _, e := range s.events {
		r.Recorder.Eventf(s.sbx, nil, e.eventType, e.reason, e.action, "%s", e.note)
	}
	s.events = nil
}
