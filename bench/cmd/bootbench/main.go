// Command bootbench measures how long the operator takes to bring one
// Sandbox from apply to phase Running, against a bare QEMU boot of the same
// kernel, initramfs and root disk measured in the same run, and how much
// host memory an idle sandbox costs.
//
// It is a benchmark, not a test. In one run it starts a real kube-apiserver
// and etcd (envtest), serves a busybox image from an in-memory registry on
// 127.0.0.1, and runs bin/manager and bin/node-agent as their own processes
// (the agent boots real QEMU microVMs, under TCG by default). After one
// untimed warm-up Sandbox (image pull, ext4 build: reported separately as
// the cold first run) it alternates timed operator runs (create → phase
// Running seen by a watch; status.timings for the stages) with bare runs
// (vmm.QEMU.Start of the same vmm.Config → the guest agent's Hello), so that
// machine noise hits both equally. After each boot the VM idles a few
// seconds and its QEMU's memory is read from /proc. It merges its entries
// (names starting with "boot/") into bench/results.json and writes the
// "boot" section of bench/results.md. Run it with `make bench`.
//
// It exits non-zero only when the harness itself fails, never because a
// goal was missed. Every VM it or the node agent started is killed at exit,
// including after an error or SIGINT/SIGTERM.
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
	root        string
	out         string
	runs        int
	memoryMiB   int
	idle        time.Duration
	bootTimeout time.Duration
	build       bool
	keepGoing   bool
	keepWork    bool
	accelerator string
	bareUpper   bool
	command     string
}

func main() {
	var c config
	flag.StringVar(&c.root, "root", ".", "Repository root (config/crd/bases, bin/k8s, bin/guest, bin/manager, bin/node-agent, bin/sandbox-init).")
	flag.StringVar(&c.out, "out", "bench", "Directory of results.json and results.md (relative to -root unless absolute).")
	flag.IntVar(&c.runs, "runs", 5, "Timed runs of each kind (operator and bare QEMU), interleaved; at least 1 (5 or more for a median worth the name).")
	flag.IntVar(&c.memoryMiB, "memory-mib", 512, "The Sandbox's spec.resources.memoryMiB, also the bare VM's memory (512 is the API's default).")
	flag.DurationVar(&c.idle, "idle", 5*time.Second, "How long a booted VM idles before its memory is read.")
	flag.DurationVar(&c.bootTimeout, "boot-timeout", 2*time.Minute, "Give up on one boot (either kind) after this long.")
	flag.BoolVar(&c.build, "build", true, "go build bin/manager, bin/node-agent and bin/sandbox-init first (make bench passes false: it built them).")
	flag.BoolVar(&c.keepGoing, "keep-going", false, "Record a failed timed run and go on with the next, instead of stopping the benchmark.")
	flag.BoolVar(&c.keepWork, "keep-work", false, "Keep the work directory (logs, state dir) at exit.")
	flag.StringVar(&c.accelerator, "accelerator", "tcg", "The node agent's --accelerator and the bare VM's (tcg or kvm).")
	flag.BoolVar(&c.bareUpper, "bare-upper", true, "Give the bare VM a fresh writable disk as the node agent gives a Sandbox (sparse ext4, sandbox.upper); false boots it with the read-only root disk only (tmpfs writable layer).")
	flag.Parse()
	c.command = "go run ./bench/cmd/bootbench"
	if len(os.Args) > 1 {
		c.command += " " + strings.Join(os.Args[1:], " ")
	}
	if c.runs < 1 {
		fmt.Fprintln(os.Stderr, "bootbench: -runs must be at least 1")
		os.Exit(2)
	}
	if c.accelerator != "tcg" && c.accelerator != "kvm" {
		fmt.Fprintln(os.Stderr, "bootbench: -accelerator must be tcg or kvm")
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
		fmt.Fprintf(os.Stderr, "bootbench: %v\n", err)
		os.Exit(1)
	}
}

// logf prints progress to stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}
