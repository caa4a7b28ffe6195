// Package gitops holds the GitOps examples (Argo CD and Flux manifests that
// deploy Sandboxes from Git) and tests the Argo CD health check that
// docs/gitops/sandbox-health.lua ships, with gopher-lua (the Lua
// interpreter Argo CD embeds).
package gitops
