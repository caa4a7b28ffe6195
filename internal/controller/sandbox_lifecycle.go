package controller

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/placement"
)

// scope is one reconcile pass: the object as read, the status being built
// (steps mutate st; only the manager-owned fields of it are written), the
// clock, and the events to emit once the write succeeded.
type scope struct {
	sbx *sandboxv1alpha1.Sandbox
	st  *sandboxv1alpha1.SandboxStatus
	now time.Time

	// deleted: the ephemeral step deleted the object; skip the status write.
	deleted bool
	// retryStale: the status write hit a conflict (a stale read); requeue.
	retryStale bool
	// endedNow: this pass recorded the run's verdict. A restart then waits
	// for the next pass, so that the end (Stopped, Crashed) is written and
	// watchers see it, however short the backoff.
	endedNow bool
	events   []pendingEvent
}

type pendingEvent struct {
	eventType, reason, action, note string
}

func newScope(sbx *sandboxv1alpha1.Sandbox, now time.Time) *scope {
	return &scope{sbx: sbx, st: sbx.Status.DeepCopy(), now: now}
}

func (s *scope) event(eventType, reason, action, format string, args ...any) {
	s.events = append(s.events, pendingEvent{eventType, reason, action, fmt.Sprintf(format, args...)})
}

// terminal reports whether the current run has ended (the manager recorded
// its verdict).
func (s *scope) terminal() bool { return s.st.TerminationReason != "" }

// endRun records the verdict of the current run.
func (s *scope) endRun(reason sandboxv1alpha1.TerminationReason, exitCode *int32, at time.Time) {
	s.st.TerminationReason = reason
	s.st.ExitCode = exitCode
	s.st.StoppedAt = &metav1.Time{Time: at}
	s.endedNow = true
}

// observeRun turns the node agent's observation of the current run into the
// manager's record: startedAt when the guest came up, and the verdict when
// the VM exited.
func (r *SandboxReconciler) observeRun(_ context.Context, s *scope) (ctrl.Result, error) {
	vm := s.st.CurrentVM()
	if vm == nil || s.terminal() {
		return ctrl.Result{}, nil
	}
	if s.st.StartedAt == nil && (vm.State == sandboxv1alpha1.VMRunning || vm.State == sandboxv1alpha1.VMDraining || vm.BootedAt != nil) {
		s.st.StartedAt = vm.BootedAt
		if s.st.StartedAt == nil {
			s.st.StartedAt = &metav1.Time{Time: s.now}
		}
	}
	if vm.State != sandboxv1alpha1.VMExited {
		return ctrl.Result{}, nil
	}
	reason := vm.ExitReason
	switch {
	case s.st.StopRequest != nil:
		// The manager asked for this end; its reason wins over the agent's
		// generic ShutdownRequested.
		reason = s.st.StopRequest.Reason
	case reason == "":
		reason = sandboxv1alpha1.TerminationInternalError
	}
	at := s.now
	if vm.ExitedAt != nil {
		at = vm.ExitedAt.Time
	}
	s.endRun(reason, vm.ExitCode, at)
	eventType := "Normal"
	if reason.IsFailure() {
		eventType = "Warning"
	}
	s.event(eventType, string(reason), "Stop", "Run %d ended on node %s: %s%s", s.st.Run, s.st.NodeName, reason, exitCodeSuffix(vm.ExitCode))
	return ctrl.Result{}, nil
}

func exitCodeSuffix(code *int32) string {
	if code == nil {
		return ""
	}
	return fmt.Sprintf(" (exit code %d)", *code)
}

// checkNode crashes the current run with NodeLost when its node's Lease has
// been expired for longer than the grace period, and otherwise wakes up
// when that would happen.
func (r *SandboxReconciler) checkNode(ctx context.Context, s *scope) (ctrl.Result, error) {
	if s.st.NodeName == "" || s.terminal() {
		return ctrl.Result{}, nil
	}
	h, err := r.nodeHealthOf(ctx, s.st.NodeName, s.now)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !h.lost(s.now) {
		return ctrl.Result{RequeueAfter: h.lostAt.Sub(s.now) + time.Second}, nil
	}
	ctrl.LoggerFrom(ctx).Info("Node lost: marking the run crashed", "SandboxNode", klog.KRef("", s.st.NodeName))
	s.endRun(sandboxv1alpha1.TerminationNodeLost, nil, s.now)
	s.event("Warning", "NodeLost", "Crash", "Node %s stopped renewing its Lease; run %d crashed", s.st.NodeName, s.st.Run)
	return ctrl.Result{}, nil
}

// enforceMaxDuration asks the node agent to stop a run that has lasted
// lifecycle.maxDurationSeconds (counted from startedAt).
func (r *SandboxReconciler) enforceMaxDuration(_ context.Context, s *scope) (ctrl.Result, error) {
	lc := s.sbx.Spec.Lifecycle
	if lc == nil || lc.MaxDurationSeconds == nil || s.st.StartedAt == nil || s.terminal() || s.st.StopRequest != nil {
		return ctrl.Result{}, nil
	}
	deadline := s.st.StartedAt.Add(time.Duration(*lc.MaxDurationSeconds) * time.Second)
	if s.now.Before(deadline) {
		return ctrl.Result{RequeueAfter: deadline.Sub(s.now)}, nil
	}
	s.st.StopRequest = &sandboxv1alpha1.StopRequest{Reason: sandboxv1alpha1.TerminationMaxDurationExceeded, RequestedAt: metav1.Time{Time: s.now}}
	s.event("Normal", string(sandboxv1alpha1.TerminationMaxDurationExceeded), "Stop",
		"Run %d reached its maximum duration of %ds; stopping", s.st.Run, *lc.MaxDurationSeconds)
	return ctrl.Result{}, nil
}

// restartOrStart begins a new run after an ended one when the user asks for
// it (spec.state back to Running after a stop) or restartPolicy calls for
// it, after the backoff.
func (r *SandboxReconciler) restartOrStart(_ context.Context, s *scope) (ctrl.Result, error) {
	if !s.terminal() {
		return ctrl.Result{}, nil
	}
	if s.sbx.Spec.State == sandboxv1alpha1.DesiredStateStopped {
		// Remember that the user stopped it: setting spec.state back to
		// Running starts a new run whatever ended the last one.
		setCondition(s.st, sandboxv1alpha1.ConditionScheduled, metav1.ConditionFalse, sandboxv1alpha1.ReasonNotRequested,
			"spec.state is Stopped", s.now)
		return ctrl.Result{}, nil
	}
	reason := s.st.TerminationReason
	userStart := reason == sandboxv1alpha1.TerminationShutdownRequested || reason == sandboxv1alpha1.TerminationDrainRequested ||
		scheduledReason(s.st) == sandboxv1alpha1.ReasonNotRequested
	restart := !userStart && restartWanted(s.sbx.Spec.RestartPolicy, reason)
	if !userStart && !restart {
		return ctrl.Result{}, nil
	}
	if restart && s.endedNow {
		// Publish the end first; restart in the next pass.
		due := s.now.Add(endPublishDelay)
		if reason != sandboxv1alpha1.TerminationNodeLost {
			due = maxTime(due, s.st.StoppedAt.Add(r.backoff(s.st.RestartCount)))
		}
		setCondition(s.st, sandboxv1alpha1.ConditionScheduled, metav1.ConditionFalse, sandboxv1alpha1.ReasonRestartBackoff,
			fmt.Sprintf("Restarting after %s at %s (restart %d)", reason, due.UTC().Format(time.RFC3339), s.st.RestartCount+1), s.now)
		return ctrl.Result{RequeueAfter: due.Sub(s.now)}, nil
	}
	if restart && reason != sandboxv1alpha1.TerminationNodeLost {
		due := s.st.StoppedAt.Add(r.backoff(s.st.RestartCount))
		if s.now.Before(due) {
			setCondition(s.st, sandboxv1alpha1.ConditionScheduled, metav1.ConditionFalse, sandboxv1alpha1.ReasonRestartBackoff,
				fmt.Sprintf("Restarting after %s at %s (restart %d)", reason, due.UTC().Format(time.RFC3339), s.st.RestartCount+1), s.now)
			return ctrl.Result{RequeueAfter: due.Sub(s.now)}, nil
		}
	}
	if restart {
		s.st.RestartCount++
		s.event("Normal", "Restarting", "Restart", "Starting run %d after %s (restartPolicy %s)", s.st.Run+1, reason, s.sbx.Spec.RestartPolicy)
	} else {
		s.event("Normal", "Starting", "Start", "Starting run %d", s.st.Run+1)
	}
	// A new run: forget the old run's record. The agent's vm observation of
	// the old run stays until the new node's agent replaces it; CurrentVM
	// ignores it because its run number is older.
	s.st.Run++
	s.st.NodeName = ""
	r.Assumer.Forget(s.sbx.UID) // the old run's placement, if still assumed
	s.st.StartedAt, s.st.StoppedAt, s.st.ExitCode = nil, nil, nil
	s.st.TerminationReason = ""
	s.st.StopRequest = nil
	return ctrl.Result{}, nil
}

// endPublishDelay is the least time between recording a run's end and
// starting the next run.
const endPublishDelay = 50 * time.Millisecond

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func restartWanted(p sandboxv1alpha1.RestartPolicy, reason sandboxv1alpha1.TerminationReason) bool {
	switch p {
	case sandboxv1alpha1.RestartAlways:
		return !reason.IsRequested()
	case sandboxv1alpha1.RestartOnFailure:
		return reason.IsFailure()
	}
	return false
}

func (r *SandboxReconciler) backoff(restarts int32) time.Duration {
	d := r.RestartBackoff
	for i := int32(0); i < restarts && d < r.MaxRestartBackoff; i++ {
		d *= 2
	}
	return min(d, r.MaxRestartBackoff)
}

// place binds an unplaced run that should run to a node, or records why it
// cannot (Unschedulable, retried when SandboxNodes or Leases change).
func (r *SandboxReconciler) place(ctx context.Context, s *scope) (ctrl.Result, error) {
	key := types.NamespacedName{Namespace: s.sbx.Namespace, Name: s.sbx.Name}
	if s.st.NodeName != "" || s.terminal() {
		unschedulable.forget(key)
		return ctrl.Result{}, nil
	}
	if s.st.Run == 0 {
		s.st.Run = 1
	}
	if s.sbx.Spec.State == sandboxv1alpha1.DesiredStateStopped {
		unschedulable.forget(key)
		setCondition(s.st, sandboxv1alpha1.ConditionScheduled, metav1.ConditionFalse, sandboxv1alpha1.ReasonNotRequested,
			"spec.state is Stopped", s.now)
		return ctrl.Result{}, nil
	}
	requested := r.runRequestedAt(s)

	// A placement decided by an earlier pass whose status write the cache
	// does not show yet: apply the same binding again.
	node, ok := r.Assumer.Assumed(s.sbx.UID)
	if !ok {
		nodes, err := r.placementNodes(ctx, s.now)
		if err != nil {
			return ctrl.Result{}, err
		}
		var claimsErr error
		res := r.Assumer.Place(placement.RequestFor(s.sbx), nodes, func() []placement.Claim {
			c, err := r.claims(ctx)
			claimsErr = err
			return c
		})
		if claimsErr != nil {
			r.Assumer.Forget(s.sbx.UID)
			return ctrl.Result{}, claimsErr
		}
		if res.Node == "" {
			msg := res.Message()
			if unschedulable.set(key) || scheduledReason(s.st) != sandboxv1alpha1.ReasonUnschedulable {
				placementsTotal.WithLabelValues("unschedulable").Inc()
				s.event("Warning", "FailedScheduling", "Schedule", "%s", msg)
			}
			setCondition(s.st, sandboxv1alpha1.ConditionScheduled, metav1.ConditionFalse, sandboxv1alpha1.ReasonUnschedulable, msg, s.now)
			// SandboxNode and Lease events retry it; this is only a safety net.
			return ctrl.Result{RequeueAfter: unschedulableRetry}, nil
		}
		node = res.Node
		placementsTotal.WithLabelValues("placed").Inc()
		placementLatency.Observe(s.now.Sub(requested).Seconds())
		s.event("Normal", "Scheduled", "Schedule", "Placed run %d on node %s", s.st.Run, node)
	}
	unschedulable.forget(key)
	r.runRequested.Delete(runKey(s))
	s.st.NodeName = node
	if s.st.Timings == nil {
		s.st.Timings = &sandboxv1alpha1.Timings{}
	}
	s.st.Timings.ScheduledMillis = ptr.To(s.now.Sub(requested).Milliseconds())
	setCondition(s.st, sandboxv1alpha1.ConditionScheduled, metav1.ConditionTrue, sandboxv1alpha1.ReasonPlaced,
		fmt.Sprintf("Placed on node %s", node), s.now)
	return ctrl.Result{}, nil
}

// unschedulableRetry is the fallback retry of an unschedulable sandbox.
const unschedulableRetry = 5 * time.Minute

// runRequestedAt is when the current run was first seen waiting for
// placement: this process's first sight of it, or the creation time for
// the first run.
func (r *SandboxReconciler) runRequestedAt(s *scope) time.Time {
	k := runKey(s)
	start := s.now
	if s.st.Run <= 1 && s.sbx.CreationTimestamp.Add(time.Second).Before(s.now) {
		start = s.sbx.CreationTimestamp.Time
	}
	v, _ := r.runRequested.LoadOrStore(k, start)
	return v.(time.Time)
}

func runKey(s *scope) string { return fmt.Sprintf("%s/%d", s.sbx.UID, s.st.Run) }

// deleteEphemeral deletes an ephemeral Sandbox whose run ended for good.
func (r *SandboxReconciler) deleteEphemeral(ctx context.Context, s *scope) (ctrl.Result, error) {
	lc := s.sbx.Spec.Lifecycle
	if lc == nil || !lc.Ephemeral || !s.terminal() {
		return ctrl.Result{}, nil
	}
	if scheduledReason(s.st) == sandboxv1alpha1.ReasonRestartBackoff {
		return ctrl.Result{}, nil // a restart is due: not over yet
	}
	ctrl.LoggerFrom(ctx).Info("Deleting ephemeral Sandbox", "terminationReason", s.st.TerminationReason)
	if err := r.Delete(ctx, s.sbx, client.Preconditions{UID: &s.sbx.UID}); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("failed to delete ephemeral Sandbox %s: %w", klog.KObj(s.sbx), err)
	}
	s.event("Normal", "Deleted", "Delete", "Ephemeral sandbox deleted after its run ended (%s)", s.st.TerminationReason)
	s.deleted = true
	return ctrl.Result{}, nil
}

// updatePhaseAndReady derives the phase and the Ready condition from the
// status the steps built. It is the last step of every pass.
func updatePhaseAndReady(s *scope) {
	s.st.Phase = sandboxv1alpha1.DerivePhase(s.st)
	status, reason, msg := readyFor(s.st)
	setCondition(s.st, sandboxv1alpha1.ConditionReady, status, reason, msg, s.now)
}

// readyFor maps a status to the Ready condition.
func readyFor(st *sandboxv1alpha1.SandboxStatus) (metav1.ConditionStatus, string, string) {
	switch st.Phase {
	case sandboxv1alpha1.PhaseRunning:
		return metav1.ConditionTrue, sandboxv1alpha1.ReasonRunning, fmt.Sprintf("The guest on node %s answers", st.NodeName)
	case sandboxv1alpha1.PhaseStarting:
		msg := fmt.Sprintf("Starting on node %s", st.NodeName)
		if vm := st.CurrentVM(); vm != nil && vm.Message != "" {
			// The node agent's word on what the start waits for.
			msg += ": " + vm.Message
		}
		return metav1.ConditionFalse, sandboxv1alpha1.ReasonStarting, msg
	case sandboxv1alpha1.PhaseDraining:
		return metav1.ConditionFalse, sandboxv1alpha1.ReasonStopping, "The VM is being stopped"
	case sandboxv1alpha1.PhaseStopped, sandboxv1alpha1.PhaseCrashed:
		reason := sandboxv1alpha1.ReasonStopped
		if st.Phase == sandboxv1alpha1.PhaseCrashed {
			reason = sandboxv1alpha1.ReasonCrashed
		}
		end := st.TerminationReason
		var code *int32
		detail := ""
		if vm := st.CurrentVM(); vm != nil && vm.Message != "" {
			// Why the VM ended (a crash's last console lines, a failed
			// main process), from the node agent.
			detail = ": " + vm.Message
		}
		if end == "" {
			if vm := st.CurrentVM(); vm != nil {
				end, code = vm.ExitReason, vm.ExitCode
			}
		} else {
			code = st.ExitCode
		}
		return metav1.ConditionFalse, reason, fmt.Sprintf("Run %d ended: %s%s%s", st.Run, end, exitCodeSuffix(code), detail)
	}
	msg := "Waiting for placement"
	if c := meta.FindStatusCondition(st.Conditions, sandboxv1alpha1.ConditionScheduled); c != nil && c.Status == metav1.ConditionFalse {
		msg = c.Message
	}
	return metav1.ConditionFalse, sandboxv1alpha1.ReasonPending, msg
}

func scheduledReason(st *sandboxv1alpha1.SandboxStatus) string {
	if c := meta.FindStatusCondition(st.Conditions, sandboxv1alpha1.ConditionScheduled); c != nil {
		return c.Reason
	}
	return ""
}

func setCondition(st *sandboxv1alpha1.SandboxStatus, t string, status metav1.ConditionStatus, reason, msg string, now time.Time) {
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: t, Status: status, Reason: reason, Message: msg, LastTransitionTime: metav1.Time{Time: now},
	})
}
