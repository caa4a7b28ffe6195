//go:build tools

// Package tools pins golangci-lint, in a module of its own so that its many
// dependencies don't constrain the code generators' versions.
package tools

import _ "github.com/golangci/golangci-lint/v2/cmd/golangci-lint"
