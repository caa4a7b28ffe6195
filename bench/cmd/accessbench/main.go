// Command accessbench measures the access API (docs/access.md) end to end:
// how long `kubectl sandbox exec <name> -- true` takes through the
// kube-apiserver's aggregation layer and the manager's access API, against
// an exec of `true` sent straight to the node agent's access endpoint (the
// hop the manager makes), in the same run; and how fast a 64 MiB file
// travels with `kubectl sandbox cp`, against the same bytes over the node
// agent's files endpoint directly.
//
// It is a benchmark, not a test. In one run it starts a real
// kube-apiserver and etcd (envtest) with the aggregation layer configured
// (a front-proxy CA and client certificate, as in test/e2e), serves a
// busybox image from an in-memory registry on 127.0.0.1
// (internal/devimage), and runs bin/manager (--access-bind-address on
// loopback, reached by the aggregator through an ExternalName Service to
// localhost; it registers the APIService itself) and bin/node-agent
// (--access-bind-address 127.0.0.1:0, published in SandboxNode
// status.access) as their own processes. One Sandbox boots (TCG by
// default) and stays Running, idle; the exec paths are then timed
// interleaved, so that machine noise hits them alike, and the copies after
// them. It merges its entries (names starting with "exec/" and "files/")
// into bench/results.json and writes the "access" section of
// bench/results.md. Run it with `make bench`.
//
// It exits non-zero only when the harness itself fails, never because a
// goal was missed.
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

type config struct {
	root        string
	out         string
	runs        int
	fileRuns    int
	fileMiB     int
	memoryMiB   int
	accelerator string
	keepWork    bool
	command     string
}

func main() {
	var c config
	flag.StringVar(&c.root, "root", ".", "Repository root (config/crd/bases, bin/k8s, bin/guest, bin/manager, bin/node-agent, bin/sandbox-init, bin/kubectl-sandbox).")
	flag.StringVar(&c.out, "out", "bench", "Directory of results.json and results.md (relative to -root unless absolute).")
	flag.IntVar(&c.runs, "runs", 25, "Timed exec round trips of each path (at least 20 for the issue's median and p99).")
	flag.IntVar(&c.fileRuns, "file-runs", 5, "Timed copies of each kind (plugin and direct, upload and download).")
	flag.IntVar(&c.fileMiB, "file-mib", 64, "Size of the copied file, MiB.")
	flag.IntVar(&c.memoryMiB, "memory-mib", 512, "The Sandbox's spec.resources.memoryMiB (the file goes to /tmp, a tmpfs in the guest: keep it well above -file-mib).")
	flag.StringVar(&c.accelerator, "accelerator", "tcg", "The node agent's --accelerator (tcg or kvm).")
	flag.BoolVar(&c.keepWork, "keep-work", false, "Keep the work directory (logs, state dir) at exit.")
	flag.Parse()
	c.command = "go run ./bench/cmd/accessbench"
	if len(os.Args) > 1 {
		c.command += " " + strings.Join(os.Args[1:], " ")
	}
	if c.runs < 1 || c.fileRuns < 1 || c.fileMiB < 1 {
		fmt.Fprintln(os.Stderr, "accessbench: -runs, -file-runs and -file-mib must be at least 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, c)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "accessbench: %v\n", err)
		os.Exit(1)
	}
}

// logf prints progress to stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}
