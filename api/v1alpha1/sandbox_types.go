package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Sandbox is one hardware-isolated microVM booted from an OCI image.
//
// The spec mirrors microsandbox's SandboxSpec field by field, in Kubernetes
// idioms: Kubernetes object references instead of host paths and raw secrets,
// explicit units in field names. The status is written by two field managers
// with server-side apply; see SandboxStatus for who owns what.
//
// The fields that configure the VM (image, resources, rootDisk, runtime,
// env, mounts, patches, rlimits, init, network) cannot change while the VM
// exists (phase Starting, Running or Draining): set spec.state to Stopped,
// edit, and set it back to Running. The others (state, stopPolicy,
// lifecycle, restartPolicy, imagePullPolicy, imagePullSecrets, registry,
// nodeSelector, tolerations, accelerator) may change at any time and apply
// from the next start or placement.
//
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=sbx,categories=microvm
// +kubebuilder:selectablefield:JSONPath=.status.nodeName
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.nodeName`
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.image`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=10
// +kubebuilder:printcolumn:name="Restarts",type=integer,JSONPath=`.status.restartCount`,priority=10
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in ['Starting', 'Running', 'Draining']) || self.spec.image == oldSelf.spec.image",message="cannot change while the sandbox's VM exists (phase Starting, Running or Draining): set spec.state to Stopped first",fieldPath=.spec.image
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in ['Starting', 'Running', 'Draining']) || self.spec.resources == oldSelf.spec.resources",message="cannot change while the sandbox's VM exists (phase Starting, Running or Draining): set spec.state to Stopped first",fieldPath=.spec.resources
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in ['Starting', 'Running', 'Draining']) || (has(self.spec.rootDisk) == has(oldSelf.spec.rootDisk) && (!has(self.spec.rootDisk) || self.spec.rootDisk == oldSelf.spec.rootDisk))",message="cannot change while the sandbox's VM exists (phase Starting, Running or Draining): set spec.state to Stopped first",fieldPath=.spec.rootDisk
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in ['Starting', 'Running', 'Draining']) || (has(self.spec.runtime) == has(oldSelf.spec.runtime) && (!has(self.spec.runtime) || self.spec.runtime == oldSelf.spec.runtime))",message="cannot change while the sandbox's VM exists (phase Starting, Running or Draining): set spec.state to Stopped first",fieldPath=.spec.runtime
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in ['Starting', 'Running', 'Draining']) || (has(self.spec.env) == has(oldSelf.spec.env) && (!has(self.spec.env) || self.spec.env == oldSelf.spec.env))",message="cannot change while the sandbox's VM exists (phase Starting, Running or Draining): set spec.state to Stopped first",fieldPath=.spec.env
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in ['Starting', 'Running', 'Draining']) || (has(self.spec.mounts) == has(oldSelf.spec.mounts) && (!has(self.spec.mounts) || self.spec.mounts == oldSelf.spec.mounts))",message="cannot change while the sandbox's VM exists (phase Starting, Running or Draining): set spec.state to Stopped first",fieldPath=.spec.mounts
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in ['Starting', 'Running', 'Draining']) || (has(self.spec.patches) == has(oldSelf.spec.patches) && (!has(self.spec.patches) || self.spec.patches == oldSelf.spec.patches))",message="cannot change while the sandbox's VM exists (phase Starting, Running or Draining): set spec.state to Stopped first",fieldPath=.spec.patches
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in ['Starting', 'Running', 'Draining']) || (has(self.spec.rlimits) == has(oldSelf.spec.rlimits) && (!has(self.spec.rlimits) || self.spec.rlimits == oldSelf.spec.rlimits))",message="cannot change while the sandbox's VM exists (phase Starting, Running or Draining): set spec.state to Stopped first",fieldPath=.spec.rlimits
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in ['Starting', 'Running', 'Draining']) || (has(self.spec.init) == has(oldSelf.spec.init) && (!has(self.spec.init) || self.spec.init == oldSelf.spec.init))",message="cannot change while the sandbox's VM exists (phase Starting, Running or Draining): set spec.state to Stopped first",fieldPath=.spec.init
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in ['Starting', 'Running', 'Draining']) || (has(self.spec.network) == has(oldSelf.spec.network) && (!has(self.spec.network) || self.spec.network == oldSelf.spec.network))",message="cannot change while the sandbox's VM exists (phase Starting, Running or Draining): set spec.state to Stopped first",fieldPath=.spec.network
type Sandbox struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired sandbox: what to boot and how.
	// +required
	Spec SandboxSpec `json:"spec"`

	// status is the observed state of the sandbox.
	// +optional
	Status SandboxStatus `json:"status,omitempty"`
}

// SandboxList is a list of Sandboxes.
//
// +kubebuilder:object:root=true
type SandboxList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Sandbox `json:"items"`
}

// SandboxSpec describes a sandbox. It mirrors microsandbox's SandboxSpec and
// SandboxConfig (see docs/api.md for the field-by-field mapping).
//
// +kubebuilder:validation:XValidation:rule="!has(self.rootDisk) || !has(self.rootDisk.medium) || self.rootDisk.medium != 'Memory' || !has(self.rootDisk.sizeMiB) || self.rootDisk.sizeMiB <= self.resources.memoryMiB",message="a Memory root disk must not be larger than resources.memoryMiB",fieldPath=.rootDisk.sizeMiB
// +kubebuilder:validation:XValidation:rule="!has(self.network) || !has(self.network.secrets) || !has(self.env) || !self.network.secrets.exists(s, self.env.exists(e, e.name == s.envVar))",message="a network secret's envVar must not also be set in env",fieldPath=.network.secrets
type SandboxSpec struct {
	// image is the OCI image reference the root filesystem is built from,
	// e.g. "docker.io/library/python:3.12" or "registry:5000/app@sha256:<digest>".
	// A tag is resolved to a digest once, when the sandbox first starts, and
	// pinned in status.imageDigest: restarts never re-resolve it.
	// Host paths (microsandbox's Bind and DiskImage root filesystems) are not
	// supported.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('/') && !self.startsWith('.') && !self.contains('://')",message="must be an OCI image reference: host paths and URLs (Bind and DiskImage root filesystems) are not supported yet"
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$')",message="must be an OCI image reference such as docker.io/library/python:3.12 or registry:5000/app@sha256:<64 hex digits>"
	Image string `json:"image"`

	// rootDisk is the writable layer over the read-only image. When unset the
	// sandbox gets a 4096 MiB sparse disk, deleted with the sandbox.
	// +optional
	RootDisk *RootDisk `json:"rootDisk,omitempty"`

	// resources are the virtual CPUs and memory of the VM. Unset means 1 vCPU
	// and 512 MiB. They are also what placement reserves on a node.
	// +optional
	// +kubebuilder:default={}
	Resources SandboxResources `json:"resources,omitempty"`

	// runtime holds the defaults for processes in the guest: working
	// directory, shell, scripts, entrypoint and command, hostname, user and
	// log level. Unset fields come from the image's config.
	// +optional
	Runtime *RuntimeOptions `json:"runtime,omitempty"`

	// env is merged over the image's ENV (same name replaces) and given to
	// the main process and every exec session. Values may come from Secrets
	// and ConfigMaps in the Sandbox's namespace.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=256
	Env []EnvVar `json:"env,omitempty"`

	// lifecycle bounds how long the sandbox lives: ephemeral deletion,
	// a hard maximum duration and an idle timeout. Unset means none of them.
	// +optional
	Lifecycle *Lifecycle `json:"lifecycle,omitempty"`

	// mounts attach volumes at paths in the guest. Each guestPath appears at
	// most once. The guest always gets a tmpfs at /tmp unless a mount covers it.
	// +optional
	// +listType=map
	// +listMapKey=guestPath
	// +kubebuilder:validation:MaxItems=32
	Mounts []Mount `json:"mounts,omitempty"`

	// patches edit the root filesystem before the main process starts, in
	// order: write text or files, create symlinks and directories, remove
	// paths, append to files.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Patches []Patch `json:"patches,omitempty"`

	// rlimits are resource limits set by the guest's PID 1 and inherited by
	// every process in the sandbox. Each resource appears at most once.
	// +optional
	// +listType=map
	// +listMapKey=resource
	// +kubebuilder:validation:MaxItems=16
	Rlimits []Rlimit `json:"rlimits,omitempty"`

	// init hands PID 1 over to an init system (systemd, openrc, s6) after the
	// sandbox agent has set up the guest. Unset means the sandbox agent stays
	// PID 1 and runs entrypoint+cmd itself.
	// +optional
	Init *InitHandoff `json:"init,omitempty"`

	// network configures the guest's network interface, egress policy, DNS,
	// published ports and secrets. Unset means a NIC with the default
	// "public" egress policy (public internet and DNS only).
	// +optional
	Network *NetworkSpec `json:"network,omitempty"`

	// imagePullPolicy says when the node pulls the image: IfNotPresent (the
	// default) uses a cached copy when there is one, Always resolves the
	// reference again on every start of a new sandbox (layers are still
	// reused by digest), Never uses only the node's cache.
	// +optional
	// +kubebuilder:default=IfNotPresent
	ImagePullPolicy PullPolicy `json:"imagePullPolicy,omitempty"`

	// imagePullSecrets name kubernetes.io/dockerconfigjson Secrets in the
	// Sandbox's namespace used to authenticate to the registry.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`

	// registry holds transport options for the image's registry. Unset
	// means HTTPS verified against the node's trust store.
	// +optional
	Registry *RegistryOptions `json:"registry,omitempty"`

	// state is the desired state of the VM: Running (the default) boots it
	// and keeps it running; Stopped stops it according to stopPolicy and
	// keeps the Sandbox, its writable disk and its status.
	// +optional
	// +kubebuilder:default=Running
	State DesiredState `json:"state,omitempty"`

	// stopPolicy says how the VM is stopped when state becomes Stopped or
	// the Sandbox is deleted. Unset means Graceful with a 10 second grace.
	// +optional
	// +kubebuilder:default={}
	StopPolicy StopPolicy `json:"stopPolicy,omitempty"`

	// restartPolicy says whether the manager starts the sandbox again after
	// its VM ends on its own: Never (the default), OnFailure (after a
	// failure, a crash or the loss of its node) or Always (after any end
	// that was not asked for: not after a stop, a maximum duration or an
	// idle timeout).
	// +optional
	// +kubebuilder:default=Never
	RestartPolicy RestartPolicy `json:"restartPolicy,omitempty"`

	// nodeSelector restricts placement to SandboxNodes whose labels match
	// every key and value. Unset means any node.
	// +optional
	// +kubebuilder:validation:MaxProperties=32
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// tolerations let the sandbox be placed on SandboxNodes with matching
	// taints (spec.taints of the SandboxNode), with Kubernetes' semantics.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// accelerator is the virtualization the sandbox requires: Any (the
	// default) accepts KVM or software emulation (TCG, much slower); KVM
	// places it only on nodes with /dev/kvm.
	// +optional
	// +kubebuilder:default=Any
	Accelerator AcceleratorRequirement `json:"accelerator,omitempty"`
}

// RootDisk is the writable upper layer of the root filesystem.
type RootDisk struct {
	// medium is where the writable layer lives: Disk (the default), a sparse
	// ext4 file on the node that keeps its contents across stop and start;
	// or Memory, a tmpfs in guest RAM that starts empty at every boot.
	// +optional
	// +kubebuilder:default=Disk
	Medium DiskMedium `json:"medium,omitempty"`

	// sizeMiB is the size of the writable layer in MiB. Unset means 4096 for
	// Disk and half of resources.memoryMiB for Memory.
	// +optional
	// +kubebuilder:validation:Minimum=16
	// +kubebuilder:validation:Maximum=1048576
	SizeMiB *int32 `json:"sizeMiB,omitempty"`
}

// DiskMedium is the storage of a writable layer or volume.
// +kubebuilder:validation:Enum=Disk;Memory
type DiskMedium string

const (
	// DiskMediumDisk stores data in a sparse file on the node.
	DiskMediumDisk DiskMedium = "Disk"
	// DiskMediumMemory stores data in the guest's RAM (tmpfs).
	DiskMediumMemory DiskMedium = "Memory"
)

// SandboxResources are the VM's virtual hardware.
type SandboxResources struct {
	// cpus is the number of virtual CPUs, 1 to 64. Default 1.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=64
	CPUs int32 `json:"cpus,omitempty"`

	// memoryMiB is the guest RAM in MiB, at least 64. Default 512.
	// +optional
	// +kubebuilder:default=512
	// +kubebuilder:validation:Minimum=64
	// +kubebuilder:validation:Maximum=1048576
	MemoryMiB int32 `json:"memoryMiB,omitempty"`
}

// RuntimeOptions are defaults for processes in the guest.
type RuntimeOptions struct {
	// workdir is the absolute working directory of the main process and of
	// exec sessions. Unset means the image's WorkingDir, else "/".
	// +optional
	Workdir *GuestPath `json:"workdir,omitempty"`

	// shell is the absolute path of the shell used for scripts and
	// interactive sessions. Unset means /bin/sh.
	// +optional
	Shell *GuestPath `json:"shell,omitempty"`

	// scripts are small programs written into a directory on the PATH of
	// every process, callable by name. Keys are file names; values are the
	// script's text (a #! line selects the interpreter, else the shell).
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="self.all(k, k.matches('^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'))",message="script names must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
	// +kubebuilder:validation:XValidation:rule="self.all(k, size(self[k]) <= 65536)",message="each script must be at most 65536 bytes"
	Scripts map[string]string `json:"scripts,omitempty"`

	// entrypoint replaces the image's ENTRYPOINT. Unset means the image's.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=4096
	Entrypoint []string `json:"entrypoint,omitempty"`

	// cmd replaces the image's CMD (the arguments of the entrypoint). Unset
	// means the image's.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=4096
	Cmd []string `json:"cmd,omitempty"`

	// hostname is the guest's host name, an RFC 1123 name of at most 64
	// characters. Unset means the Sandbox's name.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Hostname string `json:"hostname,omitempty"`

	// user runs the main process and exec sessions as USER[:GROUP] or
	// UID[:GID]. Unset means the image's USER, else root.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$`
	User string `json:"user,omitempty"`

	// logLevel is the verbosity of the sandbox agent in the guest and of the
	// node's per-sandbox runtime logs. Unset means info.
	// +optional
	LogLevel LogLevel `json:"logLevel,omitempty"`
}

// GuestPath is an absolute path inside the guest, without ".." segments and
// without ':', ';' or ','.
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=4096
// +kubebuilder:validation:Pattern=`^/[^:;,]*$`
// +kubebuilder:validation:XValidation:rule="!self.matches('(^|/)[.][.](/|$)')",message="must not contain '..' segments"
type GuestPath string

// LogLevel is a log verbosity.
// +kubebuilder:validation:Enum=error;warn;info;debug;trace
type LogLevel string

// EnvVar is an environment variable of the guest.
// +kubebuilder:validation:XValidation:rule="!(has(self.value) && has(self.valueFrom))",message="set either value or valueFrom, not both"
type EnvVar struct {
	// name is the variable's name: letters, digits and '_', not starting
	// with a digit.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	Name string `json:"name"`

	// value is the variable's value. Unset (with valueFrom unset) means the
	// empty string.
	// +optional
	// +kubebuilder:validation:MaxLength=32768
	Value string `json:"value,omitempty"`

	// valueFrom reads the value from a key of a Secret or ConfigMap in the
	// Sandbox's namespace, when the sandbox starts.
	// +optional
	ValueFrom *EnvVarSource `json:"valueFrom,omitempty"`
}

// EnvVarSource is where an environment variable's value comes from. Exactly
// one field must be set.
// +kubebuilder:validation:XValidation:rule="has(self.secretKeyRef) != has(self.configMapKeyRef)",message="set exactly one of secretKeyRef or configMapKeyRef"
type EnvVarSource struct {
	// secretKeyRef selects a key of a Secret.
	// +optional
	SecretKeyRef *corev1.SecretKeySelector `json:"secretKeyRef,omitempty"`

	// configMapKeyRef selects a key of a ConfigMap.
	// +optional
	ConfigMapKeyRef *corev1.ConfigMapKeySelector `json:"configMapKeyRef,omitempty"`
}

// Lifecycle bounds a sandbox's life.
type Lifecycle struct {
	// ephemeral deletes the Sandbox object once its VM has ended (phase
	// Stopped or Crashed, and no restart is due). Default false.
	// +optional
	Ephemeral bool `json:"ephemeral,omitempty"`

	// maxDurationSeconds is a hard cap on how long one run of the VM may
	// last, counted from status.startedAt; when it passes, the manager stops
	// the VM with terminationReason MaxDurationExceeded. Unset means no cap.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=31536000
	MaxDurationSeconds *int64 `json:"maxDurationSeconds,omitempty"`

	// idleTimeoutSeconds stops the VM (terminationReason IdleTimeout) after
	// this many seconds without exec sessions or other activity, as measured
	// by the guest agent. Unset means never.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=31536000
	IdleTimeoutSeconds *int64 `json:"idleTimeoutSeconds,omitempty"`
}

// Mount attaches one volume at a path in the guest. Exactly one source
// (emptyDir, persistentVolumeClaim, configMap, secret) must be set.
// +kubebuilder:validation:XValidation:rule="[has(self.emptyDir), has(self.persistentVolumeClaim), has(self.configMap), has(self.secret)].filter(x, x).size() == 1",message="set exactly one of emptyDir, persistentVolumeClaim, configMap or secret"
// +kubebuilder:validation:XValidation:rule="self.guestPath != '/'",message="guestPath must not be the root directory",fieldPath=.guestPath
// +kubebuilder:validation:XValidation:rule="!(has(self.configMap) || has(self.secret)) || !has(self.readOnly) || self.readOnly",message="configMap and secret mounts are always read-only",fieldPath=.readOnly
type Mount struct {
	// guestPath is the absolute directory in the guest where the volume is
	// mounted. Not "/", no ".." segments.
	// +required
	GuestPath GuestPath `json:"guestPath"`

	// readOnly mounts the volume read-only. Default false (configMap and
	// secret mounts are always read-only).
	// +optional
	ReadOnly *bool `json:"readOnly,omitempty"`

	// emptyDir is a scratch volume that lives as long as the Sandbox.
	// +optional
	EmptyDir *EmptyDirMount `json:"emptyDir,omitempty"`

	// persistentVolumeClaim mounts a PVC of the Sandbox's namespace that is
	// available on the sandbox's node (a filesystem volume).
	// +optional
	PersistentVolumeClaim *PVCMount `json:"persistentVolumeClaim,omitempty"`

	// configMap projects a ConfigMap's keys as files.
	// +optional
	ConfigMap *ObjectMount `json:"configMap,omitempty"`

	// secret projects a Secret's keys as files.
	// +optional
	Secret *ObjectMount `json:"secret,omitempty"`
}

// EmptyDirMount is a scratch volume.
type EmptyDirMount struct {
	// medium is Disk (the default; a sparse ext4 file on the node) or Memory
	// (tmpfs in guest RAM).
	// +optional
	// +kubebuilder:default=Disk
	Medium DiskMedium `json:"medium,omitempty"`

	// sizeMiB caps the volume in MiB. Unset means 4096 for Disk and a
	// quarter of resources.memoryMiB for Memory.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1048576
	SizeMiB *int32 `json:"sizeMiB,omitempty"`
}

// PVCMount names a PersistentVolumeClaim.
type PVCMount struct {
	// claimName is the name of the PVC in the Sandbox's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	ClaimName string `json:"claimName"`
}

// ObjectMount names a ConfigMap or Secret whose keys become files.
type ObjectMount struct {
	// name is the name of the ConfigMap or Secret in the Sandbox's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// optional lets the sandbox start when the object does not exist (the
	// directory is then empty). Default false.
	// +optional
	Optional *bool `json:"optional,omitempty"`
}

// PatchType is the kind of edit a Patch makes.
// +kubebuilder:validation:Enum=Text;File;Symlink;Mkdir;Remove;Append
type PatchType string

const (
	// PatchText writes UTF-8 text to a file.
	PatchText PatchType = "Text"
	// PatchFile writes bytes from a ConfigMap or Secret key to a file.
	PatchFile PatchType = "File"
	// PatchSymlink creates a symbolic link at path pointing to target.
	PatchSymlink PatchType = "Symlink"
	// PatchMkdir creates a directory and its parents.
	PatchMkdir PatchType = "Mkdir"
	// PatchRemove removes a file or a directory tree.
	PatchRemove PatchType = "Remove"
	// PatchAppend appends text to a file, creating it if needed. Patches
	// are applied at every start: with a Disk writable layer, which keeps
	// its contents across stop and start, the text is appended again.
	PatchAppend PatchType = "Append"
)

// Patch is one edit of the root filesystem before boot (microsandbox's
// Patch). Host paths (microsandbox's CopyFile and CopyDir) are not
// available: file content comes inline or from a ConfigMap or Secret.
// +kubebuilder:validation:XValidation:rule="self.type in ['Text', 'Append'] ? (has(self.content) != has(self.contentFrom)) : true",message="Text and Append patches need exactly one of content or contentFrom"
// +kubebuilder:validation:XValidation:rule="self.type == 'File' ? (has(self.contentFrom) && !has(self.content)) : true",message="File patches need contentFrom (use Text for inline content)"
// +kubebuilder:validation:XValidation:rule="self.type in ['Symlink', 'Mkdir', 'Remove'] ? (!has(self.content) && !has(self.contentFrom)) : true",message="Symlink, Mkdir and Remove patches take no content"
// +kubebuilder:validation:XValidation:rule="(self.type == 'Symlink') == has(self.target)",message="target is required for Symlink patches and not allowed for others",fieldPath=.target
// +kubebuilder:validation:XValidation:rule="!has(self.mode) || self.type in ['Text', 'File', 'Mkdir']",message="mode applies only to Text, File and Mkdir patches",fieldPath=.mode
// +kubebuilder:validation:XValidation:rule="!has(self.replace) || self.type in ['Text', 'File', 'Symlink']",message="replace applies only to Text, File and Symlink patches",fieldPath=.replace
// +kubebuilder:validation:XValidation:rule="self.path != '/'",message="must not be the root directory",fieldPath=.path
type Patch struct {
	// type is the kind of edit: Text, File, Symlink, Mkdir, Remove or
	// Append. Patches are applied at every start of the VM, in order; with a
	// Disk writable layer (which keeps its contents across stop and start)
	// an Append patch appends its text again.
	// +required
	Type PatchType `json:"type"`

	// path is the absolute path in the guest that the patch creates,
	// removes or appends to.
	// +required
	Path GuestPath `json:"path"`

	// content is the inline text of a Text or Append patch, at most 256 KiB.
	// +optional
	// +kubebuilder:validation:MaxLength=262144
	Content *string `json:"content,omitempty"`

	// contentFrom reads a Text, Append or File patch's bytes from a key of a
	// ConfigMap or Secret in the Sandbox's namespace.
	// +optional
	ContentFrom *EnvVarSource `json:"contentFrom,omitempty"`

	// target is where a Symlink patch points (absolute or relative).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	Target *string `json:"target,omitempty"`

	// mode is the permission bits (0 to 07777, e.g. 0644 written as 420) of
	// a file or directory the patch creates. Unset means 0644 for files and
	// 0755 for directories.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=4095
	Mode *int32 `json:"mode,omitempty"`

	// replace lets a Text, File or Symlink patch overwrite an existing path.
	// Default false: the sandbox fails to start if the path exists.
	// +optional
	Replace *bool `json:"replace,omitempty"`
}

// RlimitResource names a POSIX resource limit (setrlimit(2) without the
// RLIMIT_ prefix, in lower case).
// +kubebuilder:validation:Enum=cpu;fsize;data;stack;core;rss;nproc;nofile;memlock;as;locks;sigpending;msgqueue;nice;rtprio;rttime
type RlimitResource string

// Rlimit is a resource limit for every process in the guest.
// +kubebuilder:validation:XValidation:rule="self.soft <= self.hard",message="soft must not exceed hard"
type Rlimit struct {
	// resource is the limit's name, e.g. nofile or nproc.
	// +required
	Resource RlimitResource `json:"resource"`

	// soft is the soft limit (the value processes see by default).
	// +required
	// +kubebuilder:validation:Minimum=0
	Soft int64 `json:"soft"`

	// hard is the ceiling up to which an unprivileged process may raise the
	// soft limit.
	// +required
	// +kubebuilder:validation:Minimum=0
	Hard int64 `json:"hard"`
}

// InitHandoff hands PID 1 to an init system.
type InitHandoff struct {
	// cmd is the absolute path of the init binary in the guest, or "auto" to
	// probe /sbin/init, /lib/systemd/systemd and /usr/lib/systemd/systemd.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self == 'auto' || (self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)'))",message="must be \"auto\" or an absolute path without '..' segments"
	Cmd string `json:"cmd"`

	// args are the init's arguments.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=4096
	Args []string `json:"args,omitempty"`

	// env is the init's environment (the sandbox's env is not inherited).
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=64
	Env []EnvVar `json:"env,omitempty"`
}

// PullPolicy says when an image is pulled.
// +kubebuilder:validation:Enum=IfNotPresent;Always;Never
type PullPolicy string

const (
	// PullIfNotPresent uses the node's cache when it holds the image.
	PullIfNotPresent PullPolicy = "IfNotPresent"
	// PullAlways resolves the reference again for every new run.
	PullAlways PullPolicy = "Always"
	// PullNever uses only the node's cache and fails when the image is absent.
	PullNever PullPolicy = "Never"
)

// RegistryOptions are transport options for pulling the image.
type RegistryOptions struct {
	// insecure allows plain HTTP and unverified TLS to the image's registry.
	// Default false.
	// +optional
	Insecure bool `json:"insecure,omitempty"`

	// caBundleRef names a ConfigMap key in the Sandbox's namespace holding
	// PEM certificates trusted for the registry, in addition to the node's
	// trust store.
	// +optional
	CABundleRef *ConfigMapKeyReference `json:"caBundleRef,omitempty"`
}

// ConfigMapKeyReference names a key of a ConfigMap in the same namespace.
type ConfigMapKeyReference struct {
	// name is the ConfigMap's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// key is the key within the ConfigMap.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key"`
}

// DesiredState is whether the VM should run.
// +kubebuilder:validation:Enum=Running;Stopped
type DesiredState string

const (
	// DesiredStateRunning boots the VM and keeps it running.
	DesiredStateRunning DesiredState = "Running"
	// DesiredStateStopped stops the VM and keeps the Sandbox.
	DesiredStateStopped DesiredState = "Stopped"
)

// StopMode is how a VM is stopped.
// +kubebuilder:validation:Enum=Graceful;Drain;Kill
type StopMode string

const (
	// StopGraceful asks the guest to shut down cleanly (processes get
	// SIGTERM, filesystems are synced), and kills the VM after the grace
	// period.
	StopGraceful StopMode = "Graceful"
	// StopDrain refuses new exec sessions, lets running ones finish within
	// the grace period, then shuts down as Graceful does.
	StopDrain StopMode = "Drain"
	// StopKill ends the VM at once, without syncing the guest.
	StopKill StopMode = "Kill"
)

// StopPolicy says how the VM is stopped.
type StopPolicy struct {
	// mode is Graceful (the default), Drain or Kill.
	// +optional
	// +kubebuilder:default=Graceful
	Mode StopMode `json:"mode,omitempty"`

	// gracePeriodSeconds bounds a Graceful or Drain stop; after it the VM is
	// killed. Default 10, at most 3600.
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=3600
	GracePeriodSeconds *int64 `json:"gracePeriodSeconds,omitempty"`
}

// RestartPolicy says when the manager starts a sandbox again.
// +kubebuilder:validation:Enum=Never;OnFailure;Always
type RestartPolicy string

const (
	// RestartNever never restarts.
	RestartNever RestartPolicy = "Never"
	// RestartOnFailure restarts after Failed, a crash or node loss.
	RestartOnFailure RestartPolicy = "OnFailure"
	// RestartAlways restarts after any end that was not asked for.
	RestartAlways RestartPolicy = "Always"
)

// AcceleratorRequirement is the virtualization a sandbox accepts.
// +kubebuilder:validation:Enum=Any;KVM
type AcceleratorRequirement string

const (
	// AcceleratorAny accepts KVM or TCG.
	AcceleratorAny AcceleratorRequirement = "Any"
	// AcceleratorKVM requires hardware virtualization.
	AcceleratorKVM AcceleratorRequirement = "KVM"
)
