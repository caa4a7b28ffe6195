package nodeagent

import "github.com/microvm-dev/sandbox-operator/internal/version"

// Version is the agent's version (internal/version).
var Version = version.Version
