// Package admission tests the node restriction of config/admission: a
// ValidatingAdmissionPolicy that confines each node agent's writes to its
// own node's Sandboxes, SandboxNode and Lease, using the node name bound
// into the agent's Pod-bound service account token. The test runs a real
// kube-apiserver and etcd (envtest, bin/k8s) with the policy and the agent's
// RBAC from config/, mints tokens bound to Pods on two nodes with the
// TokenRequest API and writes as each agent.
package admission
