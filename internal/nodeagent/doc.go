// Package nodeagent is the per-node agent (cmd/node-agent): a
// controller-runtime manager scoped to one node, without leader election.
//
// Today it registers its SandboxNode (capacity from the host minus a
// reserve, the accelerator, versions), keeps it owner-referenced to its
// Node, renews its heartbeat Lease with jitter, and marks the SandboxNode
// not ready when it stops. Booting VMs for the Sandboxes placed on the node
// builds on internal/vmm, internal/image and internal/guest.
package nodeagent
