package v1alpha1

import (
	"testing"

	. "github.com/onsi/gomega"
)

// allReasons lists every TerminationReason of the enum.
var allReasons = []TerminationReason{
	TerminationCompleted,
	TerminationFailed,
	TerminationMaxDurationExceeded,
	TerminationIdleTimeout,
	TerminationAgentUnresponsive,
	TerminationShutdownRequested,
	TerminationDrainRequested,
	TerminationNodeLost,
	TerminationInternalError,
}

// allVMStates lists every VMState of the enum.
var allVMStates = []VMState{VMPending, VMPulling, VMBooting, VMRunning, VMDraining, VMExited}

// allPhases lists every SandboxPhase of the enum.
var allPhases = []SandboxPhase{PhaseCreated, PhaseStarting, PhaseRunning, PhaseDraining, PhaseStopped, PhaseCrashed}

// crashReasons are the reasons that end a run as Crashed.
var crashReasons = map[TerminationReason]bool{
	TerminationAgentUnresponsive: true,
	TerminationNodeLost:          true,
	TerminationInternalError:     true,
}

// placedStatus is a status placed on node-a for run 3, with the agent's
// observation of that run in the given state.
func placedStatus(state VMState, exitReason TerminationReason) *SandboxStatus {
	return &SandboxStatus{
		NodeName: "node-a",
		Run:      3,
		VM:       &VMStatus{Run: 3, NodeName: "node-a", State: state, ExitReason: exitReason},
	}
}

func TestDerivePhase(t *testing.T) {
	type tc struct {
		name   string
		status *SandboxStatus
		want   SandboxPhase
	}
	cases := []tc{
		{
			name:   "an empty status is Created",
			status: &SandboxStatus{},
			want:   PhaseCreated,
		},
		{
			name:   "an unplaced first run is Created",
			status: &SandboxStatus{Run: 1},
			want:   PhaseCreated,
		},
		{
			name:   "a placed run the agent has not reported yet is Starting",
			status: &SandboxStatus{NodeName: "node-a", Run: 1},
			want:   PhaseStarting,
		},
		{
			name:   "a Pending VM of the current run is Starting",
			status: placedStatus(VMPending, ""),
			want:   PhaseStarting,
		},
		{
			name:   "a Pulling VM of the current run is Starting",
			status: placedStatus(VMPulling, ""),
			want:   PhaseStarting,
		},
		{
			name:   "a Booting VM of the current run is Starting",
			status: placedStatus(VMBooting, ""),
			want:   PhaseStarting,
		},
		{
			name:   "a Running VM of the current run is Running",
			status: placedStatus(VMRunning, ""),
			want:   PhaseRunning,
		},
		{
			name:   "a Draining VM of the current run is Draining",
			status: placedStatus(VMDraining, ""),
			want:   PhaseDraining,
		},
		{
			name:   "an Exited VM of the current run without an exit reason is Crashed",
			status: placedStatus(VMExited, ""),
			want:   PhaseCrashed,
		},
		{
			name: "a Running VM of an older run is ignored and a placed run is Starting",
			status: &SandboxStatus{
				NodeName: "node-a", Run: 4,
				VM: &VMStatus{Run: 3, NodeName: "node-a", State: VMRunning},
			},
			want: PhaseStarting,
		},
		{
			name: "an Exited VM of an older run is ignored and a placed run is Starting",
			status: &SandboxStatus{
				NodeName: "node-a", Run: 4,
				VM: &VMStatus{Run: 3, NodeName: "node-a", State: VMExited, ExitReason: TerminationFailed},
			},
			want: PhaseStarting,
		},
		{
			name: "an Exited VM of an older run is ignored and an unplaced run is Created",
			status: &SandboxStatus{
				Run: 4,
				VM:  &VMStatus{Run: 3, NodeName: "node-a", State: VMExited, ExitReason: TerminationCompleted},
			},
			want: PhaseCreated,
		},
		{
			name: "a Running VM reported from another node is ignored and a placed run is Starting",
			status: &SandboxStatus{
				NodeName: "node-b", Run: 3,
				VM: &VMStatus{Run: 3, NodeName: "node-a", State: VMRunning},
			},
			want: PhaseStarting,
		},
		{
			name: "an observation of the current run number on an unplaced run is ignored and it is Created",
			status: &SandboxStatus{
				Run: 3,
				VM:  &VMStatus{Run: 3, NodeName: "node-a", State: VMRunning},
			},
			want: PhaseCreated,
		},
		{
			name: "an observation with no node on an unplaced run is ignored and it is Created",
			status: &SandboxStatus{
				Run: 3,
				VM:  &VMStatus{Run: 3, State: VMRunning},
			},
			want: PhaseCreated,
		},
		{
			name: "a recorded termination wins over a Running VM of the current run",
			status: &SandboxStatus{
				NodeName: "node-a", Run: 3, TerminationReason: TerminationNodeLost,
				VM: &VMStatus{Run: 3, NodeName: "node-a", State: VMRunning},
			},
			want: PhaseCrashed,
		},
		{
			name: "a recorded orderly termination wins over a Running VM of the current run",
			status: &SandboxStatus{
				NodeName: "node-a", Run: 3, TerminationReason: TerminationShutdownRequested,
				VM: &VMStatus{Run: 3, NodeName: "node-a", State: VMRunning},
			},
			want: PhaseStopped,
		},
		{
			name: "a recorded termination wins over the VM's own exit reason",
			status: &SandboxStatus{
				NodeName: "node-a", Run: 3, TerminationReason: TerminationMaxDurationExceeded,
				VM: &VMStatus{Run: 3, NodeName: "node-a", State: VMExited, ExitReason: TerminationInternalError},
			},
			want: PhaseStopped,
		},
	}
	for _, r := range allReasons {
		want := PhaseStopped
		if crashReasons[r] {
			want = PhaseCrashed
		}
		cases = append(cases,
			tc{
				name:   "a recorded termination " + string(r) + " on an unplaced run is " + string(want),
				status: &SandboxStatus{Run: 2, TerminationReason: r},
				want:   want,
			},
			tc{
				name:   "a recorded termination " + string(r) + " on a placed run without an observation is " + string(want),
				status: &SandboxStatus{NodeName: "node-a", Run: 2, TerminationReason: r},
				want:   want,
			},
			tc{
				name:   "an Exited VM of the current run with exit reason " + string(r) + " is " + string(want),
				status: placedStatus(VMExited, r),
				want:   want,
			},
		)
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			before := c.status.DeepCopy()
			g.Expect(DerivePhase(c.status)).To(Equal(c.want))
			g.Expect(c.status).To(Equal(before), "DerivePhase must not modify the status")
		})
	}
}

func TestCurrentVM(t *testing.T) {
	cases := []struct {
		name    string
		status  *SandboxStatus
		current bool
	}{
		{
			name:    "no observation gives nil",
			status:  &SandboxStatus{NodeName: "node-a", Run: 1},
			current: false,
		},
		{
			name: "an observation of the current run on the placed node is returned",
			status: &SandboxStatus{
				NodeName: "node-a", Run: 2,
				VM: &VMStatus{Run: 2, NodeName: "node-a", State: VMRunning},
			},
			current: true,
		},
		{
			name: "an observation of an older run gives nil",
			status: &SandboxStatus{
				NodeName: "node-a", Run: 2,
				VM: &VMStatus{Run: 1, NodeName: "node-a", State: VMRunning},
			},
			current: false,
		},
		{
			name: "an observation of a newer run gives nil",
			status: &SandboxStatus{
				NodeName: "node-a", Run: 2,
				VM: &VMStatus{Run: 3, NodeName: "node-a", State: VMRunning},
			},
			current: false,
		},
		{
			name: "an observation from another node gives nil",
			status: &SandboxStatus{
				NodeName: "node-b", Run: 2,
				VM: &VMStatus{Run: 2, NodeName: "node-a", State: VMRunning},
			},
			current: false,
		},
		{
			name: "an observation on an unplaced run gives nil even when its node is empty too",
			status: &SandboxStatus{
				Run: 2,
				VM:  &VMStatus{Run: 2, State: VMRunning},
			},
			current: false,
		},
		{
			name: "an observation on an unplaced run from a node gives nil",
			status: &SandboxStatus{
				Run: 2,
				VM:  &VMStatus{Run: 2, NodeName: "node-a", State: VMRunning},
			},
			current: false,
		},
		{
			name: "an observation of run 0 on a placed run 0 is returned",
			status: &SandboxStatus{
				NodeName: "node-a",
				VM:       &VMStatus{NodeName: "node-a", State: VMPending},
			},
			current: true,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			got := c.status.CurrentVM()
			if c.current {
				g.Expect(got).To(BeIdenticalTo(c.status.VM))
			} else {
				g.Expect(got).To(BeNil())
			}
		})
	}
}

func TestTerminationReasonPredicates(t *testing.T) {
	cases := []struct {
		name      string
		reason    TerminationReason
		crash     bool
		failure   bool
		requested bool
	}{
		{name: "Completed is neither a crash nor a failure nor requested", reason: TerminationCompleted},
		{name: "Failed is a failure but not a crash", reason: TerminationFailed, failure: true},
		{name: "MaxDurationExceeded is requested", reason: TerminationMaxDurationExceeded, requested: true},
		{name: "IdleTimeout is requested", reason: TerminationIdleTimeout, requested: true},
		{name: "AgentUnresponsive is a crash and a failure", reason: TerminationAgentUnresponsive, crash: true, failure: true},
		{name: "ShutdownRequested is requested", reason: TerminationShutdownRequested, requested: true},
		{name: "DrainRequested is requested", reason: TerminationDrainRequested, requested: true},
		{name: "NodeLost is a crash and a failure", reason: TerminationNodeLost, crash: true, failure: true},
		{name: "InternalError is a crash and a failure", reason: TerminationInternalError, crash: true, failure: true},
		{name: "the empty reason is neither a crash nor a failure nor requested", reason: ""},
		{name: "an unknown reason is neither a crash nor a failure nor requested", reason: "Exploded"},
	}
	covered := map[TerminationReason]bool{}
	for _, c := range cases {
		covered[c.reason] = true
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(c.reason.IsCrash()).To(Equal(c.crash), "IsCrash")
			g.Expect(c.reason.IsFailure()).To(Equal(c.failure), "IsFailure")
			g.Expect(c.reason.IsRequested()).To(Equal(c.requested), "IsRequested")
		})
	}
	t.Run("every reason of the enum is covered and none is both requested and a failure", func(t *testing.T) {
		g := NewWithT(t)
		for _, r := range allReasons {
			g.Expect(covered).To(HaveKey(r))
			g.Expect(r.IsRequested() && r.IsFailure()).To(BeFalse(), string(r))
			if r.IsCrash() {
				g.Expect(r.IsFailure()).To(BeTrue(), "a crash is a failure: %s", r)
			}
		}
	})
}

func TestSandboxPhaseIsTerminal(t *testing.T) {
	cases := []struct {
		name     string
		phase    SandboxPhase
		terminal bool
	}{
		{name: "Created is not terminal", phase: PhaseCreated},
		{name: "Starting is not terminal", phase: PhaseStarting},
		{name: "Running is not terminal", phase: PhaseRunning},
		{name: "Draining is not terminal", phase: PhaseDraining},
		{name: "Stopped is terminal", phase: PhaseStopped, terminal: true},
		{name: "Crashed is terminal", phase: PhaseCrashed, terminal: true},
		{name: "the empty phase is not terminal", phase: ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(c.phase.IsTerminal()).To(Equal(c.terminal))
		})
	}
}

// FuzzDerivePhase checks DerivePhase's invariants on statuses built from
// fuzzed inputs. Run by `make test` as
// go test -run '^$' -fuzz FuzzDerivePhase -fuzztime 20s ./api/v1alpha1/
func FuzzDerivePhase(f *testing.F) {
	// reasonIdx and exitReasonIdx index "" followed by allReasons;
	// stateIdx indexes allVMStates.
	f.Add(uint8(0), false, int32(0), int32(0), false, false, uint8(0), uint8(0)) // empty status
	f.Add(uint8(0), true, int32(1), int32(1), true, false, uint8(0), uint8(0))   // placed, not reported
	f.Add(uint8(0), true, int32(1), int32(1), true, true, uint8(3), uint8(0))    // Running
	f.Add(uint8(0), true, int32(2), int32(2), true, true, uint8(4), uint8(0))    // Draining
	f.Add(uint8(0), true, int32(2), int32(2), true, true, uint8(5), uint8(0))    // Exited, no reason
	f.Add(uint8(0), true, int32(2), int32(2), true, true, uint8(5), uint8(1))    // Exited Completed
	f.Add(uint8(0), true, int32(2), int32(2), true, true, uint8(5), uint8(8))    // Exited NodeLost
	f.Add(uint8(0), true, int32(3), int32(2), true, true, uint8(3), uint8(0))    // older run
	f.Add(uint8(0), true, int32(2), int32(2), false, true, uint8(3), uint8(0))   // another node
	f.Add(uint8(8), true, int32(2), int32(2), true, true, uint8(3), uint8(0))    // NodeLost over Running
	f.Add(uint8(6), false, int32(5), int32(5), true, true, uint8(3), uint8(0))   // ShutdownRequested, unplaced
	f.Add(uint8(255), true, int32(-1), int32(-1), true, true, uint8(255), uint8(255))

	reasons := append([]TerminationReason{""}, allReasons...)
	f.Fuzz(func(t *testing.T, reasonIdx uint8, placed bool, run, vmRun int32, sameNode, hasVM bool, stateIdx, exitReasonIdx uint8) {
		st := &SandboxStatus{
			Run:               run,
			TerminationReason: reasons[int(reasonIdx)%len(reasons)],
		}
		if placed {
			st.NodeName = "node-a"
		}
		if hasVM {
			vmNode := "node-b"
			if sameNode {
				vmNode = st.NodeName
			}
			st.VM = &VMStatus{
				Run:        vmRun,
				NodeName:   vmNode,
				State:      allVMStates[int(stateIdx)%len(allVMStates)],
				ExitReason: reasons[int(exitReasonIdx)%len(reasons)],
			}
		}
		before := st.DeepCopy()

		got := DerivePhase(st)
		vm := st.CurrentVM()

		if st.VM != nil && vm == nil && st.NodeName != "" && st.VM.Run == st.Run && st.VM.NodeName == st.NodeName {
			t.Fatalf("CurrentVM ignored an observation of the current run: %+v", st)
		}
		known := false
		for _, p := range allPhases {
			known = known || got == p
		}
		if !known {
			t.Fatalf("DerivePhase(%+v) = %q, not one of the six phases", st, got)
		}
		wantTerminal := st.TerminationReason != "" || (vm != nil && vm.State == VMExited)
		if got.IsTerminal() != wantTerminal {
			t.Fatalf("DerivePhase(%+v) = %q: terminal %v, want %v", st, got, got.IsTerminal(), wantTerminal)
		}
		if got == PhaseRunning && (vm == nil || vm.State != VMRunning) {
			t.Fatalf("DerivePhase(%+v) = Running without a Running VM of the current run", st)
		}
		if got == PhaseDraining && (vm == nil || vm.State != VMDraining) {
			t.Fatalf("DerivePhase(%+v) = Draining without a Draining VM of the current run", st)
		}
		if got == PhaseCreated && st.NodeName != "" {
			t.Fatalf("DerivePhase(%+v) = Created on a placed run", st)
		}
		if st.TerminationReason != "" {
			want := PhaseStopped
			if st.TerminationReason.IsCrash() {
				want = PhaseCrashed
			}
			if got != want {
				t.Fatalf("DerivePhase(%+v) = %q, want %q from terminationReason", st, got, want)
			}
		}
		if before.Phase != st.Phase || st.TerminationReason != before.TerminationReason || st.NodeName != before.NodeName {
			t.Fatalf("DerivePhase modified the status")
		}
	})
}
