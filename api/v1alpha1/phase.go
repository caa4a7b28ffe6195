package v1alpha1

// CurrentVM returns the node agent's observation of the current run, or nil
// when the agent has not reported it yet (or reported an older run or
// another node).
func (s *SandboxStatus) CurrentVM() *VMStatus {
	if s.VM == nil || s.NodeName == "" || s.VM.Run != s.Run || s.VM.NodeName != s.NodeName {
		return nil
	}
	return s.VM
}

// DerivePhase computes the phase from the rest of the status. It is the
// only place a phase is decided; both status writers may call it.
//
//   - a recorded end of the run (terminationReason) → Stopped, or Crashed
//     for a crash reason;
//   - else the agent's VM observation of the current run: Exited → the same
//     verdict from its exitReason; Draining → Draining; Running → Running;
//     anything earlier → Starting;
//   - else placed → Starting, not placed → Created.
func DerivePhase(s *SandboxStatus) SandboxPhase {
	if s.TerminationReason != "" {
		return phaseForEnd(s.TerminationReason)
	}
	if vm := s.CurrentVM(); vm != nil {
		switch vm.State {
		case VMExited:
			return phaseForEnd(vm.ExitReason)
		case VMDraining:
			return PhaseDraining
		case VMRunning:
			return PhaseRunning
		default:
			return PhaseStarting
		}
	}
	if s.NodeName != "" {
		return PhaseStarting
	}
	return PhaseCreated
}

func phaseForEnd(r TerminationReason) SandboxPhase {
	if r == "" || r.IsCrash() {
		return PhaseCrashed
	}
	return PhaseStopped
}
