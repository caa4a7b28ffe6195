package v1alpha1

// Condition types of a Sandbox and their reasons. "Desired running" is
// spec.state; "Ready" is the observation that the guest answers. A Sandbox
// can be desired Running and not Ready (Starting, or Crashed without restart).

// Scheduled condition (owner: manager): whether the current run is placed.
const (
	// ConditionScheduled is True once status.nodeName is set for the current run.
	ConditionScheduled = "Scheduled"

	// ReasonPlaced (True): bound to status.nodeName.
	ReasonPlaced = "Placed"
	// ReasonUnschedulable (False): no node fits; the message counts why
	// each node was rejected ("0/3 nodes are available: 2 insufficient
	// memory, 1 not ready"). Retried when SandboxNodes or Leases change.
	ReasonUnschedulable = "Unschedulable"
	// ReasonNotRequested (False): spec.state is Stopped, so nothing is placed.
	ReasonNotRequested = "NotRequested"
	// ReasonRestartBackoff (False): waiting before a restart (restartPolicy).
	ReasonRestartBackoff = "RestartBackoff"
)

// ImageReady condition (owner: node agent): whether the image is pulled and
// its root filesystem built on the node.
const (
	// ConditionImageReady is True when the root filesystem image is ready.
	ConditionImageReady = "ImageReady"

	// ReasonImagePulled (True): the image is in the node's cache.
	ReasonImagePulled = "Pulled"
	// ReasonImagePulling (False): a pull is in progress (bytes done/total in the message).
	ReasonImagePulling = "Pulling"
	// ReasonErrImagePull (False): the pull failed; the registry's message
	// follows. Retried with backoff.
	ReasonErrImagePull = "ErrImagePull"
)

// Ready condition (owner: manager): the summary, True exactly in phase Running.
const (
	// ConditionReady is True when the guest agent answers (phase Running).
	ConditionReady = "Ready"

	// ReasonRunning (True): the VM runs and the guest answers.
	ReasonRunning = "Running"
	// ReasonPending (False): not yet placed.
	ReasonPending = "Pending"
	// ReasonStarting (False): placed; image, root filesystem or boot in progress.
	ReasonStarting = "Starting"
	// ReasonStopping (False): the VM is being stopped.
	ReasonStopping = "Stopping"
	// ReasonStopped (False): the run ended in an orderly way; the message
	// holds terminationReason and exitCode.
	ReasonStopped = "Stopped"
	// ReasonCrashed (False): the VM or its node died.
	ReasonCrashed = "Crashed"
)

// ServiceReady condition (owner: manager): whether the manager keeps the
// Sandbox's Service and EndpointSlices, so that <sandbox>.<namespace>.svc
// reaches its published ports. Absent while no ports are published. True
// does not mean the endpoints serve: they are ready exactly in phase
// Running, and ports bound to loopback are never in them.
const (
	// ConditionServiceReady is True while the Sandbox's Service and
	// EndpointSlices match its published ports.
	ConditionServiceReady = "ServiceReady"

	// ReasonServiceSynced (True): the Service and EndpointSlices are up to
	// date; the message names the ports that are not reachable in the
	// cluster and why (bound to loopback, no node address of the family).
	ReasonServiceSynced = "Synced"
	// ReasonServiceConflict (False): a Service of the Sandbox's name exists
	// and is not controlled by this Sandbox. The manager leaves it alone
	// and keeps no EndpointSlices (they would attach to that Service);
	// retried when that Service changes or goes away.
	ReasonServiceConflict = "ServiceConflict"
	// ReasonServiceInvalid (False): no valid Service can be made: the
	// Sandbox's name is not a DNS-1035 label, or the published ports'
	// Service port names are invalid or collide. The message says which;
	// fixed only by changing the Sandbox.
	ReasonServiceInvalid = "ServiceInvalid"
)

// Draining condition (owner: node agent): True while a stop is in progress
// (new exec sessions are refused).
const (
	// ConditionDraining is True while the VM is being stopped.
	ConditionDraining = "Draining"

	// ReasonDrainRequested (True): stopPolicy Drain; running sessions may finish.
	ReasonDrainRequested = "DrainRequested"
	// ReasonShutdownRequested (True): a Graceful or Kill stop is in progress.
	ReasonShutdownRequested = "ShutdownRequested"
	// ReasonIdleTimeout (True): lifecycle.idleTimeoutSeconds passed without
	// activity; the VM is being shut down.
	ReasonIdleTimeout = "IdleTimeout"
	// ReasonNotDraining (False): no stop is in progress.
	ReasonNotDraining = "NotDraining"
)
