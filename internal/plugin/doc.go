// Package plugin is the kubectl sandbox plugin: kubectl-style commands
// (exec, logs, cp, ls, stat, mkdir, rm, mv, top, start, stop) that reach
// a Sandbox through the access API that the manager serves behind the
// API server's aggregation layer,
//
//	<server>/apis/subresources.sandbox.microvm.dev/v1alpha1/namespaces/<ns>/sandboxes/<name>/<sub>
//
// and through the Sandbox resource itself for start and stop. The
// connection flags (--kubeconfig, --context, -n, ...) are kubectl's own,
// from k8s.io/cli-runtime, so the plugin authenticates exactly as kubectl
// does and RBAC on sandboxes/<sub> decides what a user may do.
//
// cmd/kubectl-sandbox is a thin main around NewCommand.
package plugin
