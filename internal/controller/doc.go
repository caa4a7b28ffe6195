// Package controller holds the manager's reconcilers.
//
// SandboxReconciler places Sandboxes on SandboxNodes (through the pure
// internal/placement package) and drives their lifecycle: finalizers,
// maximum duration, restarts, node loss and ephemeral deletion. Each pass
// runs ordered steps that mutate an in-memory status (sandbox_lifecycle.go),
// derives phase and Ready last, and writes the manager-owned status fields
// once with server-side apply (sandbox_status.go).
package controller
