// Command sandbox-init is the guest agent: PID 1 in every sandbox microVM,
// packed as /init into the initramfs. Build it static (CGO_ENABLED=0); all
// its logic is in internal/guest/initd.
package main

import (
	"fmt"
	"os"

	"github.com/microvm-dev/sandbox-operator/internal/guest/initd"
)

func main() {
	if os.Getpid() != 1 {
		// It mounts, loads modules and powers the machine off: never on a host.
		fmt.Fprintln(os.Stderr, "sandbox-init: must run as PID 1 inside a sandbox microVM")
		os.Exit(2)
	}
	initd.Main()
}
