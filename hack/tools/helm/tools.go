//go:build tools

// Package tools pins helm, in a module of its own so that its dependencies
// (another Kubernetes minor) don't constrain the project's or the other
// tools' versions.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
