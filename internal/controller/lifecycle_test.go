package controller

import (
	"math"
	"strconv"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// lcNow is the fixed clock of these tests.
var lcNow = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

// lcReasons lists every TerminationReason of the enum.
var lcReasons = []sandboxv1alpha1.TerminationReason{
	sandboxv1alpha1.TerminationCompleted,
	sandboxv1alpha1.TerminationFailed,
	sandboxv1alpha1.TerminationMaxDurationExceeded,
	sandboxv1alpha1.TerminationIdleTimeout,
	sandboxv1alpha1.TerminationAgentUnresponsive,
	sandboxv1alpha1.TerminationShutdownRequested,
	sandboxv1alpha1.TerminationDrainRequested,
	sandboxv1alpha1.TerminationNodeLost,
	sandboxv1alpha1.TerminationInternalError,
}

// lcLease builds a node agent's Lease. renew and acquire are offsets from
// lcNow (nil: unset); seconds nil leaves leaseDurationSeconds unset.
func lcLease(seconds *int32, renew, acquire *time.Duration) *coordinationv1.Lease {
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", Namespace: "sandbox-system"},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr.To("node-a"),
			LeaseDurationSeconds: seconds,
		},
	}
	if renew != nil {
		l.Spec.RenewTime = &metav1.MicroTime{Time: lcNow.Add(*renew)}
	}
	if acquire != nil {
		l.Spec.AcquireTime = &metav1.MicroTime{Time: lcNow.Add(*acquire)}
	}
	return l
}

// lcNode builds a SandboxNode created at lcNow+created; ready is the
// status of its Ready condition ("" for none).
func lcNode(created time.Duration, ready metav1.ConditionStatus) *sandboxv1alpha1.SandboxNode {
	n := &sandboxv1alpha1.SandboxNode{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", CreationTimestamp: metav1.Time{Time: lcNow.Add(created)}},
	}
	if ready != "" {
		n.Status.Conditions = []metav1.Condition{{
			Type: sandboxv1alpha1.NodeConditionReady, Status: ready, Reason: "Test",
			LastTransitionTime: metav1.Time{Time: lcNow.Add(created)},
		}}
	}
	return n
}

func TestRestartWanted(t *testing.T) {
	type tc struct {
		name   string
		policy sandboxv1alpha1.RestartPolicy
		reason sandboxv1alpha1.TerminationReason
		want   bool
	}
	always := map[sandboxv1alpha1.TerminationReason]bool{
		sandboxv1alpha1.TerminationCompleted:         true,
		sandboxv1alpha1.TerminationFailed:            true,
		sandboxv1alpha1.TerminationAgentUnresponsive: true,
		sandboxv1alpha1.TerminationNodeLost:          true,
		sandboxv1alpha1.TerminationInternalError:     true,
	}
	onFailure := map[sandboxv1alpha1.TerminationReason]bool{
		sandboxv1alpha1.TerminationFailed:            true,
		sandboxv1alpha1.TerminationAgentUnresponsive: true,
		sandboxv1alpha1.TerminationNodeLost:          true,
		sandboxv1alpha1.TerminationInternalError:     true,
	}
	var cases []tc
	for _, r := range lcReasons {
		verdict := func(b bool) string {
			if b {
				return " restarts"
			}
			return " does not restart"
		}
		cases = append(cases,
			tc{name: "restartPolicy Never after " + string(r) + verdict(false), policy: sandboxv1alpha1.RestartNever, reason: r, want: false},
			tc{name: "an unset restartPolicy after " + string(r) + verdict(false), policy: "", reason: r, want: false},
			tc{name: "restartPolicy OnFailure after " + string(r) + verdict(onFailure[r]), policy: sandboxv1alpha1.RestartOnFailure, reason: r, want: onFailure[r]},
			tc{name: "restartPolicy Always after " + string(r) + verdict(always[r]), policy: sandboxv1alpha1.RestartAlways, reason: r, want: always[r]},
		)
	}
	cases = append(cases,
		tc{name: "an unknown restartPolicy after Failed does not restart", policy: "Sometimes", reason: sandboxv1alpha1.TerminationFailed, want: false},
		tc{name: "restartPolicy OnFailure after an empty reason does not restart", policy: sandboxv1alpha1.RestartOnFailure, reason: "", want: false},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(restartWanted(c.policy, c.reason)).To(Equal(c.want))
		})
	}
}

func TestSandboxReconcilerBackoff(t *testing.T) {
	// The manager's defaults (cmd/manager): 10s doubling up to 5m.
	defaults := &SandboxReconciler{RestartBackoff: 10 * time.Second, MaxRestartBackoff: 5 * time.Minute}
	type tc struct {
		name     string
		r        *SandboxReconciler
		restarts int32
		want     time.Duration
	}
	cases := []tc{
		{name: "a negative restart count waits the base delay", r: defaults, restarts: -1, want: 10 * time.Second},
		{name: "the most restarts there can be waits the maximum", r: defaults, restarts: math.MaxInt32, want: 5 * time.Minute},
		{
			name:     "a base delay above the maximum is capped at the maximum",
			r:        &SandboxReconciler{RestartBackoff: 10 * time.Minute, MaxRestartBackoff: 5 * time.Minute},
			restarts: 0, want: 5 * time.Minute,
		},
		{
			name:     "a maximum that is not a doubling of the base caps the doubling",
			r:        &SandboxReconciler{RestartBackoff: 10 * time.Second, MaxRestartBackoff: 25 * time.Second},
			restarts: 2, want: 25 * time.Second,
		},
		{
			name:     "a maximum equal to the base never doubles",
			r:        &SandboxReconciler{RestartBackoff: 10 * time.Second, MaxRestartBackoff: 10 * time.Second},
			restarts: 3, want: 10 * time.Second,
		},
		{
			name:     "the envtest suite's settings double 500ms up to 2s",
			r:        &SandboxReconciler{RestartBackoff: 500 * time.Millisecond, MaxRestartBackoff: 2 * time.Second},
			restarts: 2, want: 2 * time.Second,
		},
	}
	for restarts := int32(0); restarts <= 20; restarts++ {
		want := min(10*time.Second<<restarts, 5*time.Minute)
		cases = append(cases, tc{
			name: "after " + strconv.Itoa(int(restarts)) + " restarts the default settings wait " + want.String(),
			r:    defaults, restarts: restarts, want: want,
		})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(c.r.backoff(c.restarts)).To(Equal(c.want))
		})
	}
	t.Run("the delay never shrinks as restarts grow", func(t *testing.T) {
		g := NewWithT(t)
		prev := time.Duration(0)
		for restarts := int32(0); restarts <= 64; restarts++ {
			d := defaults.backoff(restarts)
			g.Expect(d).To(BeNumerically(">=", prev), "restarts %d", restarts)
			g.Expect(d).To(BeNumerically("<=", defaults.MaxRestartBackoff), "restarts %d", restarts)
			prev = d
		}
	})
}

func TestReadyFor(t *testing.T) {
	type tc struct {
		name       string
		status     *sandboxv1alpha1.SandboxStatus
		wantStatus metav1.ConditionStatus
		wantReason string
		wantMsg    string
	}
	scheduled := func(status metav1.ConditionStatus, reason, msg string) []metav1.Condition {
		return []metav1.Condition{{
			Type: sandboxv1alpha1.ConditionScheduled, Status: status, Reason: reason, Message: msg,
			LastTransitionTime: metav1.Time{Time: lcNow},
		}}
	}
	cases := []tc{
		{
			name:       "a Running sandbox is Ready and names its node",
			status:     &sandboxv1alpha1.SandboxStatus{Phase: sandboxv1alpha1.PhaseRunning, NodeName: "node-a", Run: 1},
			wantStatus: metav1.ConditionTrue, wantReason: sandboxv1alpha1.ReasonRunning,
			wantMsg: "The guest on node node-a answers",
		},
		{
			name:       "a Starting sandbox is not Ready and names its node",
			status:     &sandboxv1alpha1.SandboxStatus{Phase: sandboxv1alpha1.PhaseStarting, NodeName: "node-b", Run: 1},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonStarting,
			wantMsg: "Starting on node node-b",
		},
		{
			name:       "a Draining sandbox is not Ready because it is Stopping",
			status:     &sandboxv1alpha1.SandboxStatus{Phase: sandboxv1alpha1.PhaseDraining, NodeName: "node-a", Run: 1},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonStopping,
			wantMsg: "The VM is being stopped",
		},
		{
			name: "a Stopped sandbox reports the recorded reason and exit code",
			status: &sandboxv1alpha1.SandboxStatus{
				Phase: sandboxv1alpha1.PhaseStopped, NodeName: "node-a", Run: 3,
				TerminationReason: sandboxv1alpha1.TerminationCompleted, ExitCode: ptr.To[int32](0),
			},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonStopped,
			wantMsg: "Run 3 ended: Completed (exit code 0)",
		},
		{
			name: "a Stopped sandbox without an exit code reports the reason alone",
			status: &sandboxv1alpha1.SandboxStatus{
				Phase: sandboxv1alpha1.PhaseStopped, Run: 2,
				TerminationReason: sandboxv1alpha1.TerminationShutdownRequested,
			},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonStopped,
			wantMsg: "Run 2 ended: ShutdownRequested",
		},
		{
			name: "a Stopped sandbox with a non-zero exit code reports it",
			status: &sandboxv1alpha1.SandboxStatus{
				Phase: sandboxv1alpha1.PhaseStopped, NodeName: "node-a", Run: 1,
				TerminationReason: sandboxv1alpha1.TerminationFailed, ExitCode: ptr.To[int32](2),
			},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonStopped,
			wantMsg: "Run 1 ended: Failed (exit code 2)",
		},
		{
			name: "a Crashed sandbox reports the recorded crash",
			status: &sandboxv1alpha1.SandboxStatus{
				Phase: sandboxv1alpha1.PhaseCrashed, NodeName: "node-a", Run: 2,
				TerminationReason: sandboxv1alpha1.TerminationNodeLost,
			},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonCrashed,
			wantMsg: "Run 2 ended: NodeLost",
		},
		{
			name: "the recorded verdict wins over the VM's own exit reason and code",
			status: &sandboxv1alpha1.SandboxStatus{
				Phase: sandboxv1alpha1.PhaseStopped, NodeName: "node-a", Run: 4,
				TerminationReason: sandboxv1alpha1.TerminationMaxDurationExceeded, ExitCode: ptr.To[int32](143),
				VM: &sandboxv1alpha1.VMStatus{
					Run: 4, NodeName: "node-a", State: sandboxv1alpha1.VMExited,
					ExitReason: sandboxv1alpha1.TerminationShutdownRequested, ExitCode: ptr.To[int32](0),
				},
			},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonStopped,
			wantMsg: "Run 4 ended: MaxDurationExceeded (exit code 143)",
		},
		{
			name: "a Stopped sandbox not yet recorded reports the current VM's exit reason and code",
			status: &sandboxv1alpha1.SandboxStatus{
				Phase: sandboxv1alpha1.PhaseStopped, NodeName: "node-a", Run: 5,
				VM: &sandboxv1alpha1.VMStatus{
					Run: 5, NodeName: "node-a", State: sandboxv1alpha1.VMExited,
					ExitReason: sandboxv1alpha1.TerminationCompleted, ExitCode: ptr.To[int32](0),
				},
			},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonStopped,
			wantMsg: "Run 5 ended: Completed (exit code 0)",
		},
		{
			name: "a Crashed sandbox not yet recorded reports the current VM's exit reason and code",
			status: &sandboxv1alpha1.SandboxStatus{
				Phase: sandboxv1alpha1.PhaseCrashed, NodeName: "node-a", Run: 1,
				VM: &sandboxv1alpha1.VMStatus{
					Run: 1, NodeName: "node-a", State: sandboxv1alpha1.VMExited,
					ExitReason: sandboxv1alpha1.TerminationInternalError, ExitCode: ptr.To[int32](137),
				},
			},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonCrashed,
			wantMsg: "Run 1 ended: InternalError (exit code 137)",
		},
		{
			name:       "a Created sandbox without a Scheduled condition waits for placement",
			status:     &sandboxv1alpha1.SandboxStatus{Phase: sandboxv1alpha1.PhaseCreated, Run: 1},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonPending,
			wantMsg: "Waiting for placement",
		},
		{
			name: "a Created sandbox that is Unschedulable repeats the scheduler's message",
			status: &sandboxv1alpha1.SandboxStatus{
				Phase: sandboxv1alpha1.PhaseCreated, Run: 1,
				Conditions: scheduled(metav1.ConditionFalse, sandboxv1alpha1.ReasonUnschedulable, "0/3 nodes are available: 3 not ready"),
			},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonPending,
			wantMsg: "0/3 nodes are available: 3 not ready",
		},
		{
			name: "a Created sandbox in restart backoff repeats the backoff message",
			status: &sandboxv1alpha1.SandboxStatus{
				Phase: sandboxv1alpha1.PhaseCreated, Run: 2,
				Conditions: scheduled(metav1.ConditionFalse, sandboxv1alpha1.ReasonRestartBackoff, "Restarting after Failed at 2026-03-14T12:00:10Z (restart 1)"),
			},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonPending,
			wantMsg: "Restarting after Failed at 2026-03-14T12:00:10Z (restart 1)",
		},
		{
			name: "a Created sandbox with spec.state Stopped repeats the NotRequested message",
			status: &sandboxv1alpha1.SandboxStatus{
				Phase: sandboxv1alpha1.PhaseCreated, Run: 1,
				Conditions: scheduled(metav1.ConditionFalse, sandboxv1alpha1.ReasonNotRequested, "spec.state is Stopped"),
			},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonPending,
			wantMsg: "spec.state is Stopped",
		},
		{
			name: "a Created sandbox whose Scheduled condition is True still waits for placement",
			status: &sandboxv1alpha1.SandboxStatus{
				Phase: sandboxv1alpha1.PhaseCreated, Run: 1,
				Conditions: scheduled(metav1.ConditionTrue, sandboxv1alpha1.ReasonPlaced, "Placed on node node-a"),
			},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonPending,
			wantMsg: "Waiting for placement",
		},
		{
			name:       "a status without a phase is Pending",
			status:     &sandboxv1alpha1.SandboxStatus{},
			wantStatus: metav1.ConditionFalse, wantReason: sandboxv1alpha1.ReasonPending,
			wantMsg: "Waiting for placement",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			status, reason, msg := readyFor(c.status)
			g.Expect(status).To(Equal(c.wantStatus))
			g.Expect(reason).To(Equal(c.wantReason))
			g.Expect(msg).To(Equal(c.wantMsg))
		})
	}
	t.Run("Ready is True exactly in phase Running for statuses DerivePhase computed", func(t *testing.T) {
		g := NewWithT(t)
		states := []sandboxv1alpha1.VMState{
			sandboxv1alpha1.VMPending, sandboxv1alpha1.VMPulling, sandboxv1alpha1.VMBooting,
			sandboxv1alpha1.VMRunning, sandboxv1alpha1.VMDraining, sandboxv1alpha1.VMExited,
		}
		for _, reason := range append([]sandboxv1alpha1.TerminationReason{""}, lcReasons...) {
			for _, state := range states {
				st := &sandboxv1alpha1.SandboxStatus{
					NodeName: "node-a", Run: 1, TerminationReason: reason,
					VM: &sandboxv1alpha1.VMStatus{Run: 1, NodeName: "node-a", State: state, ExitReason: sandboxv1alpha1.TerminationFailed},
				}
				st.Phase = sandboxv1alpha1.DerivePhase(st)
				status, _, _ := readyFor(st)
				want := metav1.ConditionFalse
				if st.Phase == sandboxv1alpha1.PhaseRunning {
					want = metav1.ConditionTrue
				}
				g.Expect(status).To(Equal(want),
					"terminationReason %q, vm state %s, phase %s", reason, state, st.Phase)
			}
		}
	})
}

func TestLowestRequeue(t *testing.T) {
	after := func(d time.Duration) ctrl.Result { return ctrl.Result{RequeueAfter: d} }
	cases := []struct {
		name string
		a, b ctrl.Result
		want ctrl.Result
	}{
		{name: "two results without a requeue give none", a: after(0), b: after(0), want: after(0)},
		{name: "a requeue only in the second result is kept", a: after(0), b: after(5 * time.Second), want: after(5 * time.Second)},
		{name: "a requeue only in the first result is kept", a: after(5 * time.Second), b: after(0), want: after(5 * time.Second)},
		{name: "the second result's sooner requeue wins", a: after(5 * time.Second), b: after(3 * time.Second), want: after(3 * time.Second)},
		{name: "the first result's sooner requeue wins", a: after(3 * time.Second), b: after(5 * time.Second), want: after(3 * time.Second)},
		{name: "equal requeues give that requeue", a: after(time.Minute), b: after(time.Minute), want: after(time.Minute)},
		{name: "a nanosecond is sooner than an hour", a: after(time.Hour), b: after(time.Nanosecond), want: after(time.Nanosecond)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(lowestRequeue(c.a, c.b)).To(Equal(c.want))
		})
	}
	t.Run("folding the steps' results keeps the soonest non-zero requeue", func(t *testing.T) {
		g := NewWithT(t)
		var res ctrl.Result
		for _, d := range []time.Duration{0, 10 * time.Second, 0, 3 * time.Second, 7 * time.Second, 0} {
			res = lowestRequeue(res, after(d))
		}
		g.Expect(res).To(Equal(after(3 * time.Second)))
	})
}

func TestLeaseExpiry(t *testing.T) {
	d := func(x time.Duration) *time.Duration { return &x }
	cases := []struct {
		name  string
		lease *coordinationv1.Lease
		want  time.Time
	}{
		{name: "no Lease never vouched", lease: nil, want: time.Time{}},
		{name: "a Lease without a duration never vouched", lease: lcLease(nil, d(0), d(0)), want: time.Time{}},
		{name: "a Lease with a duration but neither renew nor acquire time never vouched", lease: lcLease(ptr.To[int32](40), nil, nil), want: time.Time{}},
		{name: "a renewed Lease expires its duration after the renewal", lease: lcLease(ptr.To[int32](40), d(-10*time.Second), d(-time.Hour)), want: lcNow.Add(30 * time.Second)},
		{name: "a Lease only renewed expires its duration after the renewal", lease: lcLease(ptr.To[int32](15), d(0), nil), want: lcNow.Add(15 * time.Second)},
		{name: "a Lease only acquired expires its duration after the acquisition", lease: lcLease(ptr.To[int32](40), nil, d(-50*time.Second)), want: lcNow.Add(-10 * time.Second)},
		{name: "the renew time wins over a later acquire time", lease: lcLease(ptr.To[int32](10), d(-time.Minute), d(0)), want: lcNow.Add(-50 * time.Second)},
		{name: "a Lease of zero seconds expires at its renewal", lease: lcLease(ptr.To[int32](0), d(0), nil), want: lcNow},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			got := leaseExpiry(c.lease)
			if c.want.IsZero() {
				g.Expect(got.IsZero()).To(BeTrue(), "got %v", got)
				return
			}
			g.Expect(got.Equal(c.want)).To(BeTrue(), "got %v, want %v", got, c.want)
		})
	}
}

func TestNodeHealth(t *testing.T) {
	const grace = 40 * time.Second
	d := func(x time.Duration) *time.Duration { return &x }
	dur := ptr.To[int32](40)
	cases := []struct {
		name       string
		node       *sandboxv1alpha1.SandboxNode
		lease      *coordinationv1.Lease
		wantExists bool
		wantReady  bool
		wantLostAt time.Time // zero: lost already with no time to wait
		wantLost   bool
	}{
		{
			name: "neither SandboxNode nor Lease means lost now",
			node: nil, lease: nil,
			wantLostAt: time.Time{}, wantLost: true,
		},
		{
			name:       "a Ready node with a live Lease is ready and lost only a grace after the Lease expires",
			node:       lcNode(-time.Hour, metav1.ConditionTrue),
			lease:      lcLease(dur, d(-10*time.Second), d(-time.Hour)),
			wantExists: true, wantReady: true,
			wantLostAt: lcNow.Add(30*time.Second + grace),
		},
		{
			name:       "a Ready node whose Lease expired within the grace is not ready and not lost",
			node:       lcNode(-time.Hour, metav1.ConditionTrue),
			lease:      lcLease(dur, d(-60*time.Second), nil),
			wantExists: true,
			wantLostAt: lcNow.Add(-20*time.Second + grace),
		},
		{
			name:       "a Ready node whose Lease expired more than the grace ago is lost",
			node:       lcNode(-time.Hour, metav1.ConditionTrue),
			lease:      lcLease(dur, d(-2*time.Minute), nil),
			wantExists: true,
			wantLostAt: lcNow.Add(-80*time.Second + grace), wantLost: true,
		},
		{
			name:       "a node whose Lease expires exactly now is not ready",
			node:       lcNode(-time.Hour, metav1.ConditionTrue),
			lease:      lcLease(dur, d(-40*time.Second), nil),
			wantExists: true,
			wantLostAt: lcNow.Add(grace),
		},
		{
			name:       "a node whose Lease was lost exactly the grace ago is lost",
			node:       lcNode(-time.Hour, metav1.ConditionTrue),
			lease:      lcLease(dur, d(-40*time.Second-grace), nil),
			wantExists: true,
			wantLostAt: lcNow, wantLost: true,
		},
		{
			name:       "a node with a live Lease only acquired is ready",
			node:       lcNode(-time.Hour, metav1.ConditionTrue),
			lease:      lcLease(dur, nil, d(-5*time.Second)),
			wantExists: true, wantReady: true,
			wantLostAt: lcNow.Add(35*time.Second + grace),
		},
		{
			name:       "a node whose Ready condition is False is not ready though its Lease is live",
			node:       lcNode(-time.Hour, metav1.ConditionFalse),
			lease:      lcLease(dur, d(0), nil),
			wantExists: true,
			wantLostAt: lcNow.Add(40*time.Second + grace),
		},
		{
			name:       "a node whose Ready condition is Unknown is not ready though its Lease is live",
			node:       lcNode(-time.Hour, metav1.ConditionUnknown),
			lease:      lcLease(dur, d(0), nil),
			wantExists: true,
			wantLostAt: lcNow.Add(40*time.Second + grace),
		},
		{
			name:       "a node without a Ready condition is not ready though its Lease is live",
			node:       lcNode(-time.Hour, ""),
			lease:      lcLease(dur, d(0), nil),
			wantExists: true,
			wantLostAt: lcNow.Add(40*time.Second + grace),
		},
		{
			name:       "a new Ready node without a Lease is not ready and counts the grace from its creation",
			node:       lcNode(-10*time.Second, metav1.ConditionTrue),
			lease:      nil,
			wantExists: true,
			wantLostAt: lcNow.Add(-10*time.Second + grace),
		},
		{
			name:       "an old node without a Lease is lost a grace after its creation",
			node:       lcNode(-time.Hour, metav1.ConditionTrue),
			lease:      nil,
			wantExists: true,
			wantLostAt: lcNow.Add(-time.Hour + grace), wantLost: true,
		},
		{
			name:       "a Lease without a duration counts as no Lease and the grace runs from the node's creation",
			node:       lcNode(-10*time.Second, metav1.ConditionTrue),
			lease:      lcLease(nil, d(0), d(0)),
			wantExists: true,
			wantLostAt: lcNow.Add(-10*time.Second + grace),
		},
		{
			name:       "a Lease never renewed nor acquired counts as no Lease and the grace runs from the node's creation",
			node:       lcNode(-10*time.Second, metav1.ConditionTrue),
			lease:      lcLease(dur, nil, nil),
			wantExists: true,
			wantLostAt: lcNow.Add(-10*time.Second + grace),
		},
		{
			name:       "a live Lease without a SandboxNode is not ready and not yet lost",
			node:       nil,
			lease:      lcLease(dur, d(0), nil),
			wantLostAt: lcNow.Add(40*time.Second + grace),
		},
		{
			name:       "an expired Lease without a SandboxNode is lost after the grace",
			node:       nil,
			lease:      lcLease(dur, d(-time.Hour), nil),
			wantLostAt: lcNow.Add(-time.Hour + 40*time.Second + grace), wantLost: true,
		},
		{
			name:       "a Lease without a duration and without a SandboxNode means lost now",
			node:       nil,
			lease:      lcLease(nil, d(0), nil),
			wantLostAt: time.Time{}, wantLost: true,
		},
		{
			name:       "a Lease renewed in the future (clock skew) keeps a Ready node ready",
			node:       lcNode(-time.Hour, metav1.ConditionTrue),
			lease:      lcLease(dur, d(5*time.Second), nil),
			wantExists: true, wantReady: true,
			wantLostAt: lcNow.Add(45*time.Second + grace),
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			h := health(c.node, c.lease, grace, lcNow)
			g.Expect(h.exists).To(Equal(c.wantExists), "exists")
			g.Expect(h.ready).To(Equal(c.wantReady), "ready")
			g.Expect(h.lostAt.Equal(c.wantLostAt)).To(BeTrue(), "lostAt %v, want %v", h.lostAt, c.wantLostAt)
			g.Expect(h.lost(lcNow)).To(Equal(c.wantLost), "lost")
			if h.ready {
				g.Expect(h.lost(lcNow)).To(BeFalse(), "a ready node is never lost")
			}
		})
	}
	t.Run("a zero grace makes a node lost the moment its Lease expires", func(t *testing.T) {
		g := NewWithT(t)
		h := health(lcNode(-time.Hour, metav1.ConditionTrue), lcLease(dur, d(-40*time.Second), nil), 0, lcNow)
		g.Expect(h.ready).To(BeFalse())
		g.Expect(h.lost(lcNow)).To(BeTrue())
		g.Expect(h.lost(lcNow.Add(-time.Nanosecond))).To(BeFalse())
	})
}

func TestNodeHealthLost(t *testing.T) {
	cases := []struct {
		name   string
		lostAt time.Time
		now    time.Time
		want   bool
	}{
		{name: "a node is not lost a nanosecond before lostAt", lostAt: lcNow, now: lcNow.Add(-time.Nanosecond), want: false},
		{name: "a node is lost exactly at lostAt", lostAt: lcNow, now: lcNow, want: true},
		{name: "a node is lost a nanosecond after lostAt", lostAt: lcNow, now: lcNow.Add(time.Nanosecond), want: true},
		{name: "a node is not lost long before lostAt", lostAt: lcNow.Add(time.Hour), now: lcNow, want: false},
		{name: "a zero lostAt means lost at any time", lostAt: time.Time{}, now: lcNow, want: true},
		{name: "a zero lostAt means lost even at the zero time", lostAt: time.Time{}, now: time.Time{}, want: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(nodeHealth{lostAt: c.lostAt}.lost(c.now)).To(Equal(c.want))
		})
	}
}

func TestLeaseWasExpired(t *testing.T) {
	d := func(x time.Duration) *time.Duration { return &x }
	dur := ptr.To[int32](40)
	cases := []struct {
		name  string
		lease *coordinationv1.Lease
		want  bool
	}{
		{name: "no old Lease counts as expired", lease: nil, want: true},
		{name: "an old Lease without a duration counts as expired", lease: lcLease(nil, d(0), nil), want: true},
		{name: "an old Lease never renewed nor acquired counts as expired", lease: lcLease(dur, nil, nil), want: true},
		{name: "an old Lease still live was not expired", lease: lcLease(dur, d(-10*time.Second), nil), want: false},
		{name: "an old Lease live for one more nanosecond was not expired", lease: lcLease(dur, d(-40*time.Second+time.Nanosecond), nil), want: false},
		{name: "an old Lease expiring exactly now was expired", lease: lcLease(dur, d(-40*time.Second), nil), want: true},
		{name: "an old Lease expired long ago was expired", lease: lcLease(dur, d(-time.Hour), nil), want: true},
		{name: "an old Lease only acquired and still live was not expired", lease: lcLease(dur, nil, d(-time.Second)), want: false},
		{name: "an old Lease only acquired long ago was expired", lease: lcLease(dur, nil, d(-time.Hour)), want: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(leaseWasExpired(c.lease, lcNow)).To(Equal(c.want))
		})
	}
}
