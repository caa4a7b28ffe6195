// Package access is the manager's access API: an aggregated API
// (APIService v1alpha1.subresources.sandbox.microvm.dev) through which
// users reach a sandbox's exec, attach, log, files and metrics with their
// Kubernetes identity and RBAC.
//
// The kube-apiserver authenticates the user, authorizes the request against
// RBAC on the subresource (sandboxes/exec, ...) and proxies it here with
// the user in front-proxy headers, presenting its proxy client certificate.
// This server trusts those headers only from that certificate (verified
// against the requestheader client CA and allowed names, as every
// aggregated API server does), authorizes again with a SubjectAccessReview
// (defence in depth: the API server's RBAC is the gate, this check keeps a
// misconfigured aggregation from bypassing it), and streams to the node
// agent of the sandbox's node over mutually authenticated TLS.
package access
