// Package v1alpha1 contains the sandbox.microvm.dev/v1alpha1 API: Sandbox, a
// hardware-isolated microVM described like microsandbox's SandboxSpec, and
// SandboxNode, the per-node record of a node agent's capacity.
//
// The package holds types, validation markers and pure helpers (phase
// derivation, condition reasons) only; it must not import controller-runtime
// so that clients can depend on it cheaply.
//
// +k8s:deepcopy-gen=package
// +kubebuilder:object:generate=true
// +groupName=sandbox.microvm.dev
// +groupGoName=Sandbox
package v1alpha1
