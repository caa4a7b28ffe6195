package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Field managers of the two status writers. Each applies only the fields it
// owns (server-side apply), so neither can clobber the other's observations.
const (
	// ManagerFieldOwner is the field manager of the manager (cmd/manager).
	ManagerFieldOwner = "sandbox-manager"
	// NodeAgentFieldOwner is the field manager shared by all node agents
	// (cmd/node-agent): a re-placed sandbox's new agent replaces the old
	// agent's observations.
	NodeAgentFieldOwner = "sandbox-node-agent"
)

// Finalizers on a Sandbox.
const (
	// ManagerFinalizer lets the manager see a deletion through: it removes
	// the node agent's finalizer itself when the node is lost.
	ManagerFinalizer = "sandbox.microvm.dev/manager"
	// NodeAgentFinalizer is removed by the node agent once the VM, its
	// writable disk and its journal are gone. The manager adds it together
	// with its own, before placement, so that no VM can exist unconfirmed.
	NodeAgentFinalizer = "sandbox.microvm.dev/node-agent"
)

// SandboxPhase is the headline of a sandbox's state (microsandbox's
// SandboxStatus). It is derived from the rest of the status by DerivePhase
// and never set on its own; conditions carry the detail.
// +kubebuilder:validation:Enum=Created;Starting;Running;Draining;Stopped;Crashed
type SandboxPhase string

const (
	// PhaseCreated: accepted, not yet placed on a node (or placed but not
	// asked to run).
	PhaseCreated SandboxPhase = "Created"
	// PhaseStarting: placed; the node is pulling the image, preparing the
	// root filesystem or booting the VM.
	PhaseStarting SandboxPhase = "Starting"
	// PhaseRunning: the VM is up and its guest agent answers.
	PhaseRunning SandboxPhase = "Running"
	// PhaseDraining: the VM is being stopped.
	PhaseDraining SandboxPhase = "Draining"
	// PhaseStopped: the VM ended in an orderly way (see terminationReason
	// and exitCode).
	PhaseStopped SandboxPhase = "Stopped"
	// PhaseCrashed: the VM or its node died (see terminationReason).
	PhaseCrashed SandboxPhase = "Crashed"
)

// IsTerminal reports whether the phase means no VM exists for the current run.
func (p SandboxPhase) IsTerminal() bool { return p == PhaseStopped || p == PhaseCrashed }

// TerminationReason says why a run of the VM ended (microsandbox's
// TerminationReason, plus NodeLost).
// +kubebuilder:validation:Enum=Completed;Failed;MaxDurationExceeded;IdleTimeout;AgentUnresponsive;ShutdownRequested;DrainRequested;NodeLost;InternalError;PolicyViolation
type TerminationReason string

const (
	// TerminationCompleted: the main process exited with code 0.
	TerminationCompleted TerminationReason = "Completed"
	// TerminationFailed: the main process exited non-zero, or the guest
	// kernel panicked or ran out of memory.
	TerminationFailed TerminationReason = "Failed"
	// TerminationMaxDurationExceeded: lifecycle.maxDurationSeconds passed.
	TerminationMaxDurationExceeded TerminationReason = "MaxDurationExceeded"
	// TerminationIdleTimeout: lifecycle.idleTimeoutSeconds passed without activity.
	TerminationIdleTimeout TerminationReason = "IdleTimeout"
	// TerminationAgentUnresponsive: the guest agent never answered or stopped answering.
	TerminationAgentUnresponsive TerminationReason = "AgentUnresponsive"
	// TerminationShutdownRequested: spec.state became Stopped (Graceful or
	// Kill) or the Sandbox was deleted.
	TerminationShutdownRequested TerminationReason = "ShutdownRequested"
	// TerminationDrainRequested: stopped with stopPolicy Drain.
	TerminationDrainRequested TerminationReason = "DrainRequested"
	// TerminationNodeLost: the node agent's Lease expired beyond the grace period.
	TerminationNodeLost TerminationReason = "NodeLost"
	// TerminationInternalError: the VMM died or the node could not boot the VM.
	TerminationInternalError TerminationReason = "InternalError"
	// TerminationPolicyViolation: the guest sent a network secret's
	// placeholder to a host the secret does not allow, and the secret's
	// onViolation is BlockAndTerminate. Never restarted.
	TerminationPolicyViolation TerminationReason = "PolicyViolation"
)

// IsCrash reports whether the reason makes the phase Crashed rather than Stopped.
func (r TerminationReason) IsCrash() bool {
	switch r {
	case TerminationNodeLost, TerminationInternalError, TerminationAgentUnresponsive:
		return true
	}
	return false
}

// IsFailure reports whether restartPolicy OnFailure restarts after this reason.
func (r TerminationReason) IsFailure() bool { return r == TerminationFailed || r.IsCrash() }

// IsRequested reports whether the end was asked for (by the user or by a
// lifecycle limit); such ends are never restarted.
func (r TerminationReason) IsRequested() bool {
	switch r {
	case TerminationShutdownRequested, TerminationDrainRequested, TerminationMaxDurationExceeded, TerminationIdleTimeout,
		TerminationPolicyViolation:
		return true
	}
	return false
}

// SandboxStatus is the observed state of a Sandbox.
//
// Two writers own disjoint fields, each with server-side apply:
//
//   - the manager (field manager "sandbox-manager"): phase, observedGeneration,
//     nodeName, run, restartCount, startedAt, stoppedAt, exitCode,
//     terminationReason, stopRequest, timings.scheduledMillis and the
//     conditions Scheduled, Ready and ServiceReady;
//   - the node agent (field manager "sandbox-node-agent"): vm, imageDigest,
//     ports, network, the other timings and the conditions ImageReady,
//     Draining and NetworkReady.
//
// The agent reports raw observations of the VM in vm; the manager turns them
// into the run's verdict (exitCode, terminationReason, ...) and the phase.
// The manager also writes the verdict alone when the node is lost.
type SandboxStatus struct {
	// phase is the headline state, derived from the rest of the status.
	// +optional
	Phase SandboxPhase `json:"phase,omitempty"`

	// conditions hold the details: Scheduled, ImageReady, Ready, Draining
	// and, with published ports, ServiceReady.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// observedGeneration is the metadata.generation the manager last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// nodeName is the SandboxNode the current run is placed on. Empty until
	// placed. Selectable: kubectl get sbx --field-selector status.nodeName=N.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	NodeName string `json:"nodeName,omitempty"`

	// run numbers the runs of this sandbox: 1 for the first boot, one more
	// each time the manager starts it again (a restart, or a start after a
	// stop). The node agent echoes it in vm.run.
	// +optional
	Run int32 `json:"run,omitempty"`

	// restartCount is how many times the manager restarted the sandbox
	// after an end it did not ask for (restartPolicy).
	// +optional
	RestartCount int32 `json:"restartCount,omitempty"`

	// startedAt is when the current run's guest became ready.
	// +optional
	StartedAt *metav1.Time `json:"startedAt,omitempty"`

	// stoppedAt is when the current run ended.
	// +optional
	StoppedAt *metav1.Time `json:"stoppedAt,omitempty"`

	// exitCode is the exit code of the main process of the current run,
	// once it ended.
	// +optional
	ExitCode *int32 `json:"exitCode,omitempty"`

	// terminationReason is why the current run ended.
	// +optional
	TerminationReason TerminationReason `json:"terminationReason,omitempty"`

	// stopRequest is set by the manager when it wants the current run
	// stopped for a reason of its own (a maximum duration); the node agent
	// stops the VM as it does for spec.state Stopped.
	// +optional
	StopRequest *StopRequest `json:"stopRequest,omitempty"`

	// imageDigest is the image's manifest digest, pinned when first
	// resolved; restarts use it instead of the tag.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	ImageDigest string `json:"imageDigest,omitempty"`

	// vm is the node agent's observation of the VM of the current run.
	// +optional
	VM *VMStatus `json:"vm,omitempty"`

	// timings say how long each stage of the current run took, in
	// milliseconds: the answer to "why did this take 900 ms".
	// +optional
	Timings *Timings `json:"timings,omitempty"`

	// ports are the published ports' endpoints on the node.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Ports []PortStatus `json:"ports,omitempty"`

	// network is the node's account of what the sandbox's egress policy
	// refused while the VM runs.
	// +optional
	Network *NetworkStatus `json:"network,omitempty"`
}

// StopRequest asks the node agent to stop the current run.
type StopRequest struct {
	// reason becomes the run's terminationReason.
	// +required
	Reason TerminationReason `json:"reason"`
	// requestedAt is when the manager asked.
	// +required
	RequestedAt metav1.Time `json:"requestedAt"`
}

// VMState is the node agent's view of a VM.
// +kubebuilder:validation:Enum=Pending;Pulling;Booting;Running;Draining;Exited
type VMState string

const (
	// VMPending: the agent accepted the run and has not started work.
	VMPending VMState = "Pending"
	// VMPulling: the image is being pulled and the root filesystem prepared.
	VMPulling VMState = "Pulling"
	// VMBooting: the VMM is running and the guest agent has not answered yet.
	VMBooting VMState = "Booting"
	// VMRunning: the guest agent answered.
	VMRunning VMState = "Running"
	// VMDraining: the VM is being stopped.
	VMDraining VMState = "Draining"
	// VMExited: the VM is gone; exitCode and exitReason say how it ended.
	VMExited VMState = "Exited"
)

// Accelerator is how a node runs VMs.
// +kubebuilder:validation:Enum=kvm;tcg
type Accelerator string

const (
	// AcceleratorKVMName is hardware virtualization through /dev/kvm.
	AcceleratorKVMName Accelerator = "kvm"
	// AcceleratorTCG is QEMU's software emulation.
	AcceleratorTCG Accelerator = "tcg"
)

// VMStatus is the node agent's observation of one run's VM.
type VMStatus struct {
	// run is the status.run this observation belongs to; the manager
	// ignores observations of older runs.
	// +required
	Run int32 `json:"run"`
	// nodeName is the node of the agent that wrote this observation.
	// +required
	NodeName string `json:"nodeName"`
	// state is the VM's state.
	// +required
	State VMState `json:"state"`
	// pid is the VMM's process id on the node.
	// +optional
	PID int32 `json:"pid,omitempty"`
	// accelerator is kvm or tcg.
	// +optional
	Accelerator Accelerator `json:"accelerator,omitempty"`
	// bootedAt is when the guest agent first answered.
	// +optional
	BootedAt *metav1.Time `json:"bootedAt,omitempty"`
	// exitedAt is when the VM ended.
	// +optional
	ExitedAt *metav1.Time `json:"exitedAt,omitempty"`
	// exitCode is the main process's exit code, when it exited.
	// +optional
	ExitCode *int32 `json:"exitCode,omitempty"`
	// exitReason is why the VM ended, as the node saw it.
	// +optional
	ExitReason TerminationReason `json:"exitReason,omitempty"`
	// message is a short explanation, e.g. the last console lines of a VM
	// that failed to boot.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Message string `json:"message,omitempty"`
}

// Timings are the durations of a run's stages in milliseconds.
type Timings struct {
	// scheduledMillis is from the run's request (creation, start or
	// restart) to its placement. Written by the manager.
	// +optional
	ScheduledMillis *int64 `json:"scheduledMillis,omitempty"`
	// imagePulledMillis is resolving and pulling the image and flattening
	// it into its cached root disk (about 0 when the node has it cached).
	// +optional
	ImagePulledMillis *int64 `json:"imagePulledMillis,omitempty"`
	// rootfsReadyMillis is resolving the guest configuration and creating
	// the writable disks (the root layer and emptyDir volumes).
	// +optional
	RootfsReadyMillis *int64 `json:"rootfsReadyMillis,omitempty"`
	// vmmStartedMillis is starting the VMM process.
	// +optional
	VMMStartedMillis *int64 `json:"vmmStartedMillis,omitempty"`
	// guestReadyMillis is from the VMM's start (so it includes
	// vmmStartedMillis) to the guest agent's first answer: the boot.
	// +optional
	GuestReadyMillis *int64 `json:"guestReadyMillis,omitempty"`
}

// PortStatus is a published port's endpoint on the node.
type PortStatus struct {
	// guestPort is the port in the guest.
	// +required
	GuestPort int32 `json:"guestPort"`
	// protocol is TCP or UDP.
	// +required
	Protocol Protocol `json:"protocol"`
	// hostIP is the node address listening.
	// +required
	HostIP string `json:"hostIP"`
	// hostPort is the node port listening.
	// +required
	HostPort int32 `json:"hostPort"`
}
