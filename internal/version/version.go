// Package version says which build of sandbox-operator is running: the
// module version, or the VCS revision of a development build. The manager
// and the node agent print it for --version and the images label it.
package version

import "runtime/debug"

// Version is this binary's version.
var Version = func() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "devel-" + s.Value[:12]
		}
	}
	return "devel"
}()
