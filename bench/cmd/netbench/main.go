// Command netbench measures a sandbox's network path (docs/networking.md)
// against the host's own loopback: TCP throughput from the guest to a
// server on the node's 127.0.0.1, connection setup latency (connect and a
// one-byte echo), and, through a published port, throughput into the
// guest.
//
// It is a benchmark, not a test. It boots one real microVM (TCG by
// default) from the components the node agent uses, without the agent
// itself: internal/vmm with a NIC, linked to a per-VM internal/netstack
// whose internal/netpolicy policy is compiled from a Sandbox NetworkSpec
// allowing only 127.0.0.1/32 (the guest reaches it at its gateway
// 10.0.2.2) and publishing one port; the initramfs of bin/sandbox-init and
// the guest kernel's modules (internal/guest/initramfs); a root disk pulled
// through internal/image from an in-memory registry holding busybox and the
// benchmark's guest tool (./guesttool, built static); the Start message's
// Network as the agent sends it; exec sessions over internal/guest/hostconn.
// The baselines run the same tool binary as a host process against the
// same servers. It merges its entries (names starting with "net: ") into
// bench/results.json and writes the "net" section of bench/results.md. Run
// it with `make bench`.
//
// It exits non-zero only when the harness itself fails. The VM is killed
// at exit, including after an error or SIGINT/SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// config holds the knobs of one run.
type config struct {
	root            string
	out             string
	runs            int
	mib             int
	connects        int
	connectsPerExec int
	inbound         bool
	memoryMiB       int
	accelerator     string
	bootTimeout     time.Duration
	keepWork        bool
	command         string
}

func main() {
	var c config
	flag.StringVar(&c.root, "root", ".", "Repository root (bin/guest, bin/sandbox-init, ./bench/cmd/netbench/guesttool).")
	flag.StringVar(&c.out, "out", "bench", "Directory of results.json and results.md (relative to -root unless absolute).")
	flag.IntVar(&c.runs, "runs", 5, "Timed transfers of each kind (guest→host, its host baseline, host→guest).")
	flag.IntVar(&c.mib, "mib", 64, "Size of each transfer, MiB.")
	flag.IntVar(&c.connects, "connects", 25, "Timed connect+echo round trips from each side (guest, host).")
	flag.IntVar(&c.connectsPerExec, "connects-per-exec", 5, "Round trips per run of the tool; the guest's and the host's runs alternate.")
	flag.BoolVar(&c.inbound, "inbound", true, "Also time host→guest transfers through a published port.")
	flag.IntVar(&c.memoryMiB, "memory-mib", 512, "The VM's memory (512 is the API's default).")
	flag.StringVar(&c.accelerator, "accelerator", "tcg", "The VM's accelerator (tcg or kvm).")
	flag.DurationVar(&c.bootTimeout, "boot-timeout", 2*time.Minute, "Give up on the boot after this long.")
	flag.BoolVar(&c.keepWork, "keep-work", false, "Keep the work directory (the VM's console log, the root disk) at exit.")
	flag.Parse()
	c.command = "go run ./bench/cmd/netbench"
	if len(os.Args) > 1 {
		c.command += " " + strings.Join(os.Args[1:], " ")
	}
	if c.runs < 1 || c.mib < 1 || c.connects < 1 || c.connectsPerExec < 1 {
		fmt.Fprintln(os.Stderr, "netbench: -runs, -mib, -connects and -connects-per-exec must be at least 1")
		os.Exit(2)
	}
	if c.accelerator != "tcg" && c.accelerator != "kvm" {
		fmt.Fprintln(os.Stderr, "netbench: -accelerator must be tcg or kvm")
		os.Exit(2)
	}
	// The first signal cancels ctx and the cleanup runs; a second one kills
	// the process the default way.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, c)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "netbench: %v\n", err)
		os.Exit(1)
	}
}

// logf prints progress to stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}
