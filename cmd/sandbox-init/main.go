// Command sandbox-init is the guest agent: PID 1 in every sandbox microVM,
// packed as /init into the initramfs. Build it static (CGO_ENABLED=0); all
// its logic is in internal/guest/initd.
//
// The same binary is also sandbox-init's exec helper: sandbox-init
// re-executes itself with argv[0] initd.ExecHelperArg0 to start a process
// with its own rlimits, root and user (see initd.ExecHelperMain), and with
// initd.FileHelperArg0 to run a file operation in the root as a user (see
// initd.FileHelperMain).
package main

import (
	"fmt"
	"os"

	"github.com/microvm-dev/sandbox-operator/internal/guest/initd"
)

func main() {
	if len(os.Args) > 0 && os.Args[0] == initd.ExecHelperArg0 {
		// Before the PID check: in an init hand-off the helper is PID 1 of
		// its own PID namespace.
		initd.ExecHelperMain()
	}
	if len(os.Args) > 0 && os.Args[0] == initd.FileHelperArg0 {
		initd.FileHelperMain()
	}
	if os.Getpid() != 1 {
		// It mounts, loads modules and powers the machine off: never on a host.
		fmt.Fprintln(os.Stderr, "sandbox-init: must run as PID 1 inside a sandbox microVM")
		os.Exit(2)
	}
	initd.Main()
}
