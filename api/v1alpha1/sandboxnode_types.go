package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SandboxNode is a node that runs the node agent: its capacity, what it can
// run, and whether it is ready. There is one per agent, named after its Node
// and owner-referenced to it. Liveness is not a status write: the agent
// renews a coordination.k8s.io Lease of the same name in the agent's
// namespace, and the manager treats a node whose Lease has expired as not
// ready (and, beyond a grace period, as lost).
//
// Labels of the SandboxNode are what a Sandbox's nodeSelector matches.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=sbxnode,categories=microvm
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Accelerator",type=string,JSONPath=`.status.accelerator`
// +kubebuilder:printcolumn:name="CPUs",type=integer,JSONPath=`.status.allocatable.cpus`
// +kubebuilder:printcolumn:name="Memory",type=integer,JSONPath=`.status.allocatable.memoryMiB`
// +kubebuilder:printcolumn:name="Sandboxes",type=integer,JSONPath=`.status.allocatable.sandboxes`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SandboxNode struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec holds the administrator's settings for the node.
	// +optional
	Spec SandboxNodeSpec `json:"spec,omitempty"`

	// status is written by the node's agent.
	// +optional
	Status SandboxNodeStatus `json:"status,omitempty"`
}

// SandboxNodeList is a list of SandboxNodes.
//
// +kubebuilder:object:root=true
type SandboxNodeList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SandboxNode `json:"items"`
}

// SandboxNodeSpec holds administrator settings.
type SandboxNodeSpec struct {
	// unschedulable keeps new sandboxes off the node; running ones stay.
	// Default false.
	// +optional
	Unschedulable bool `json:"unschedulable,omitempty"`

	// taints repel sandboxes that do not tolerate them (Kubernetes taint
	// semantics; effects NoSchedule and NoExecute both keep new sandboxes
	// off the node).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Taints []corev1.Taint `json:"taints,omitempty"`
}

// NodeResources is an amount of sandbox capacity.
type NodeResources struct {
	// cpus is a number of virtual CPUs.
	// +optional
	// +kubebuilder:validation:Minimum=0
	CPUs int32 `json:"cpus,omitempty"`
	// memoryMiB is an amount of guest memory in MiB.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MemoryMiB int64 `json:"memoryMiB,omitempty"`
	// sandboxes is a number of sandboxes.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Sandboxes int32 `json:"sandboxes,omitempty"`
}

// SandboxNodeStatus is reported by the node agent.
type SandboxNodeStatus struct {
	// capacity is what the host has.
	// +optional
	Capacity NodeResources `json:"capacity,omitempty"`

	// allocatable is capacity minus the agent's reserve: what placement may
	// hand out to sandboxes.
	// +optional
	Allocatable NodeResources `json:"allocatable,omitempty"`

	// accelerator is kvm when /dev/kvm opens read-write, else tcg (only when
	// the agent allows emulation).
	// +optional
	Accelerator Accelerator `json:"accelerator,omitempty"`

	// versions of the node's software.
	// +optional
	Versions NodeVersions `json:"versions,omitempty"`

	// cachedImages are the image digests the node has root filesystems for
	// (placement prefers nodes that hold a sandbox's image).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	CachedImages []string `json:"cachedImages,omitempty"`

	// access is where the node agent serves its sandboxes' exec, attach,
	// logs, files and metrics to the manager's access API. Unset: the agent
	// serves no access.
	// +optional
	Access *NodeAccess `json:"access,omitempty"`

	// addresses are the node's addresses as the agent reports them (type
	// InternalIP, from the agent's --node-address, in a DaemonSet the
	// downward API's status.hostIP). The manager points a Sandbox's
	// EndpointSlices at the InternalIP of the family a published port binds.
	// Unset: the agent was given none, and ports bound to 0.0.0.0 or :: are
	// not reachable through the Sandbox's Service.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Addresses []corev1.NodeAddress `json:"addresses,omitempty"`

	// conditions: Ready is True while the agent runs and can boot VMs.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// NodeAccess is the node agent's access endpoint. The agent serves it over
// TLS with its own certificate (published here, so the manager pins it)
// and admits only clients with a certificate from the manager's access
// client CA.
type NodeAccess struct {
	// endpoint is host:port of the agent's access server.
	// +required
	// +kubebuilder:validation:MaxLength=261
	Endpoint string `json:"endpoint"`

	// certificate is the PEM certificate the agent serves the endpoint with.
	// +required
	// +kubebuilder:validation:MaxLength=16384
	Certificate string `json:"certificate"`
}

// NodeVersions are software versions on a node.
type NodeVersions struct {
	// agent is the node agent's version.
	// +optional
	Agent string `json:"agent,omitempty"`
	// qemu is the QEMU version.
	// +optional
	QEMU string `json:"qemu,omitempty"`
	// kernel is the guest kernel version.
	// +optional
	Kernel string `json:"kernel,omitempty"`
}

// SandboxNode condition types.
const (
	// NodeConditionReady is True while the agent can boot VMs.
	NodeConditionReady = "Ready"
)
