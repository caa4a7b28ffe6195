// Command placebench measures how fast the manager places Sandboxes.
//
// It is a benchmark, not a test: in one run it starts a real kube-apiserver
// and etcd (envtest), registers fake SandboxNodes whose heartbeat Leases it
// renews itself (standing in for node agents), starts bin/manager as a
// separate process, creates many Sandboxes concurrently and watches how long
// each takes to get a status.nodeName. It measures baselines in the same run
// (the API server's own create→watch latency, the time to create all the
// Sandboxes, the manager's idle RSS) and writes bench/results.json and
// bench/results.md. Run it with `make bench`.
//
// It exits non-zero only when the harness itself fails, never because a goal
// was missed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"
)

// config holds the knobs of one run.
type config struct {
	root        string
	out         string
	managerBin  string
	buildMgr    bool
	nodes       int
	slots       int
	sandboxes   int
	baselineN   int
	creators    int
	timeout     time.Duration
	leaseRenew  time.Duration
	managerArgs stringList
}

type stringList []string

func (s *stringList) String() string     { return fmt.Sprint([]string(*s)) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	var c config
	flag.StringVar(&c.root, "root", ".", "Repository root (holds config/crd/bases, bin/k8s and cmd/manager).")
	flag.StringVar(&c.out, "out", "bench", "Directory for results.json and results.md.")
	flag.StringVar(&c.managerBin, "manager", "bin/manager", "Manager binary, relative to -root unless absolute.")
	flag.BoolVar(&c.buildMgr, "build", true, "Run `go build -o <manager> ./cmd/manager` first (a no-op when it is up to date).")
	flag.IntVar(&c.nodes, "nodes", 20, "SandboxNodes to register.")
	flag.IntVar(&c.slots, "slots", 60, "status.allocatable.sandboxes of each node.")
	flag.IntVar(&c.sandboxes, "sandboxes", 1000, "Sandboxes to create in the main run.")
	flag.IntVar(&c.baselineN, "baseline-sandboxes", 200, "Stopped Sandboxes created before the manager starts, for the API server's create→watch baseline.")
	flag.IntVar(&c.creators, "creators", 16, "Concurrent creating clients.")
	flag.DurationVar(&c.timeout, "timeout", 120*time.Second, "Give up waiting for placements this long after the first create.")
	flag.DurationVar(&c.leaseRenew, "lease-renew", 10*time.Second, "How often the stand-in node agents renew their Leases.")
	flag.Var(&c.managerArgs, "manager-arg", "Extra flag for the manager (repeatable), e.g. -manager-arg=--max-concurrent-reconciles=8.")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintf(os.Stderr, "placebench: %v\n", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Printf("[%s] %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, c config) (reterr error) {
	root, err := filepath.Abs(c.root)
	if err != nil {
		return err
	}
	c.root = root
	if !filepath.IsAbs(c.managerBin) {
		c.managerBin = filepath.Join(root, c.managerBin)
	}
	if !filepath.IsAbs(c.out) {
		c.out = filepath.Join(root, c.out)
	}
	if c.nodes*c.slots < c.sandboxes {
		logf("note: %d nodes × %d slots < %d sandboxes: not all can be placed", c.nodes, c.slots, c.sandboxes)
	}

	tmp, err := os.MkdirTemp("", "placebench-")
	if err != nil {
		return err
	}
	logf("placebench: %d sandboxes on %d nodes × %d slots, %d creators; work dir %s", c.sandboxes, c.nodes, c.slots, c.creators, tmp)

	if c.buildMgr {
		logf("building %s", c.managerBin)
		if err := buildManager(ctx, c.root, c.managerBin); err != nil {
			return err
		}
	} else if _, err := os.Stat(c.managerBin); err != nil {
		return fmt.Errorf("manager binary: %w", err)
	}

	// 1. Control plane.
	cl, err := startCluster(ctx, c.root, tmp)
	if err != nil {
		return err
	}
	defer func() {
		logf("stopping the control plane")
		if err := cl.stop(); err != nil && reterr == nil {
			reterr = fmt.Errorf("failed to stop envtest: %w", err)
		}
	}()

	// 2. Namespaces, nodes and their Leases; stand-in node agents renew them.
	if err := cl.createNamespaces(ctx, leaseNamespace, benchNamespace, baselineNamespace); err != nil {
		return err
	}
	nodeNames, err := cl.createNodes(ctx, c.nodes, c.slots)
	if err != nil {
		return err
	}
	renewCtx, stopRenew := context.WithCancel(ctx)
	defer stopRenew()
	renewErrs := cl.renewLeases(renewCtx, nodeNames, c.leaseRenew)
	logf("registered %d SandboxNodes (Ready, tcg, allocatable %d cpus / %d MiB / %d sandboxes) and their Leases; "+
		"this process renews the Leases every %s, standing in for node agents", c.nodes, nodeCPUs, nodeMemMiB, c.slots, c.leaseRenew)

	w, err := startWatcher(ctx, cl)
	if err != nil {
		return err
	}
	defer w.stop()

	// 4a. Baseline: the API server's own create→watch latency, before the
	// manager runs (nothing but the API server touches these).
	base, err := measureBaseline(ctx, cl, w, c.baselineN, c.creators)
	if err != nil {
		return err
	}
	logf("baseline: %d Stopped sandboxes, create→watch p50 %s p99 %s (created in %s)",
		c.baselineN, ms(base.p50), ms(base.p99), base.createAll.Round(time.Millisecond))

	// 3. The manager as a separate process.
	mgr, err := startManager(ctx, c.managerBin, cl.kubeconfig, tmp, c.managerArgs)
	if err != nil {
		return err
	}
	defer func() {
		logf("stopping the manager (SIGTERM)")
		if err := mgr.stop(15 * time.Second); err != nil {
			logf("manager: %v", err)
		}
	}()
	logf("manager pid %d, log %s, metrics http://%s/metrics", mgr.pid(), mgr.logPath, mgr.metricsAddr)
	if err := mgr.waitRunning(ctx, 60*time.Second); err != nil {
		return err
	}
	// Let it settle: caches synced, workers started, nothing to do.
	time.Sleep(2 * time.Second)
	idle, err := mgr.memory()
	if err != nil {
		return err
	}
	idleMetrics, _ := mgr.scrape(ctx)
	logf("manager idle: VmRSS %.1f MiB", idle.rssMiB)

	// 5. Main run.
	mr, err := mainRun(ctx, cl, w, mgr, c)
	if err != nil {
		return err
	}
	select {
	case err := <-renewErrs:
		return fmt.Errorf("lease renewal: %w", err)
	default:
	}
	endMem, err := mgr.memory()
	if err != nil {
		return err
	}
	metrics, err := mgr.scrape(ctx)
	if err != nil {
		logf("failed to scrape the manager's metrics: %v", err)
	} else {
		_ = os.WriteFile(filepath.Join(tmp, "manager-metrics.txt"), []byte(metrics.raw), 0o644)
		logf("manager metrics saved to %s", filepath.Join(tmp, "manager-metrics.txt"))
	}
	perNode, err := cl.countPerNode(ctx, benchNamespace)
	if err != nil {
		return err
	}

	rep := report{
		cfg: c, base: base, main: mr, idle: idle, end: endMem, perNode: perNode,
		metrics: metrics, idleMetrics: idleMetrics, managerLog: mgr.logPath,
		machine: machineInfo(c.root), goVersion: runtime.Version(),
	}
	rep.print()
	if err := rep.write(c.out); err != nil {
		return err
	}
	logf("wrote %s and %s", filepath.Join(c.out, "results.json"), filepath.Join(c.out, "results.md"))
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
