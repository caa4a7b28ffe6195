package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/devimage"
	"github.com/microvm-dev/sandbox-operator/internal/image"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// pair is one bare and one operator run, measured back to back.
type pair struct {
	op   opRun
	bare bareRun
}

// bench is the state of one benchmark run.
type bench struct {
	cfg      config
	work     string
	stateDir string

	kernel, modules, initrd, rootfs string
	tscKHz                          int

	registry *registryServer
	cluster  *cluster
	manager  *process
	agent    *process
	bare     vms

	// Results.
	warmup      opRun
	imageDigest string
	agentIdle   float64   // the node agent's VmRSS before the first Sandbox
	ops         []opRun   // successful operator runs
	bares       []bareRun // successful bare runs
	pairs       []pair    // every timed pair, failed runs included
	order       []string  // per pair: "bare, operator" or "operator, bare"
	failures    []string
	cmdlineNote string
	cpuBusy     float64 // the machine's busy share over the timed runs
	loadBefore  string
	loadAfter   string
	machine     machine
	started     time.Time
	elapsed     time.Duration
}

func run(ctx context.Context, c config) (reterr error) {
	b := &bench{cfg: c, started: time.Now()}
	root, err := filepath.Abs(c.root)
	if err != nil {
		return err
	}
	b.cfg.root = root
	if !filepath.IsAbs(b.cfg.out) {
		b.cfg.out = filepath.Join(root, b.cfg.out)
	}
	b.kernel = filepath.Join(root, "bin", "guest", "vmlinux")
	b.modules = filepath.Join(root, "bin", "guest", "modules")
	if err := checkPrereqs(b); err != nil {
		return err
	}
	if c.build {
		if err := buildBinaries(ctx, root); err != nil {
			return err
		}
	}
	for _, bin := range []string{"manager", "node-agent", "sandbox-init"} {
		if _, err := os.Stat(filepath.Join(root, "bin", bin)); err != nil {
			return fmt.Errorf("bin/%s is missing (run make build, or drop -build=false): %w", bin, err)
		}
	}

	// Unix socket paths are limited to 107 bytes: a short work dir.
	if b.work, err = os.MkdirTemp("", "bootbench-"); err != nil {
		return err
	}
	b.stateDir = filepath.Join(b.work, "state")
	logf("bootbench: %d timed runs of each kind, %d MiB, accelerator %s; work dir %s", c.runs, c.memoryMiB, c.accelerator, b.work)
	defer func() {
		if reterr != nil || c.keepWork {
			logf("kept the work dir %s (logs: manager.log, node-agent.log; VM run dirs under state/vms)", b.work)
			return
		}
		_ = os.RemoveAll(b.work)
	}()

	// 1. The image, in a registry of our own.
	if b.registry, err = serveBusybox(); err != nil {
		return err
	}
	defer b.registry.close()
	logf("serving %s (one layer: static busybox, %d KiB gzipped)", b.registry.ref, b.registry.layerBytes/1024)

	// 2. Control plane.
	if b.cluster, err = startCluster(root, b.work); err != nil {
		return err
	}
	defer func() {
		logf("stopping the control plane")
		if err := b.cluster.stop(); err != nil && reterr == nil {
			reterr = fmt.Errorf("failed to stop envtest: %w", err)
		}
	}()
	if err := b.cluster.createNamespaces(ctx, leaseNamespace, benchNamespace); err != nil {
		return err
	}

	// 3. The manager and the node agent, as processes (as in `make dev`):
	// each has its own runtime and CPU time, and the agent's memory can be
	// read apart from the benchmark's.
	b.manager, err = startProcess("manager", filepath.Join(root, "bin", "manager"), filepath.Join(b.work, "manager.log"),
		"--kubeconfig="+b.cluster.kubeconfig, "--leader-elect=false", "--lease-namespace="+leaseNamespace,
		"--metrics-bind-address=0", "--health-probe-bind-address=0")
	if err != nil {
		return err
	}
	defer func() {
		if err := b.manager.stop(15 * time.Second); err != nil {
			logf("%v", err)
		}
	}()
	if err := b.manager.waitLog(ctx, "Starting workers", time.Minute); err != nil {
		return err
	}
	b.agent, err = startProcess("node agent", filepath.Join(root, "bin", "node-agent"), filepath.Join(b.work, "node-agent.log"),
		"--kubeconfig="+b.cluster.kubeconfig, "--node-name="+nodeName, "--lease-namespace="+leaseNamespace,
		"--allow-emulation", "--accelerator="+c.accelerator,
		"--state-dir="+b.stateDir, "--kernel="+b.kernel,
		"--sandbox-init="+filepath.Join(root, "bin", "sandbox-init"), "--guest-modules="+b.modules,
		"--metrics-bind-address=0", "--health-probe-bind-address=0")
	if err != nil {
		return err
	}
	defer func() {
		// The agent leaves its VMs running when it stops (by design): the
		// Sandboxes are deleted first (each run does), and whatever it
		// still recorded is killed after it stopped.
		if err := b.agent.stop(20 * time.Second); err != nil {
			logf("%v", err)
		}
		if n := killAgentVMs(b.stateDir); n > 0 {
			logf("killed %d VM(s) the node agent left running", n)
		}
	}()
	defer b.bare.killAll()
	if err := b.cluster.waitNodeReady(ctx, b.agent, time.Minute); err != nil {
		return err
	}
	if err := b.agent.waitLog(ctx, `"controller": "nodeagent-sandbox"`, 30*time.Second); err != nil {
		logf("note: %v", err)
	}
	b.agentIdle, _ = rssMiB(b.agent.pid())
	logf("SandboxNode %s Ready; node agent pid %d, VmRSS %.1f MiB", nodeName, b.agent.pid(), b.agentIdle)

	// The bare VM boots the initramfs the agent built and the TSC rate the
	// agent reads.
	b.initrd = filepath.Join(b.stateDir, "initrd.cpio")
	if _, err := os.Stat(b.initrd); err != nil {
		return fmt.Errorf("the node agent built no initramfs at %s: %w", b.initrd, err)
	}
	if c.accelerator == "tcg" {
		if b.tscKHz, err = vmm.HostTSCkHz(); err != nil {
			return err
		}
	}

	// 4. Warm-up, untimed in the results but reported as the cold first
	// run: the agent pulls the image and builds its ext4.
	logf("warm-up Sandbox (cold: the image is pulled and flattened to ext4)")
	b.warmup = runOperator(ctx, b, "warmup", false)
	if b.warmup.err != nil {
		return fmt.Errorf("warm-up: %w", b.warmup.err)
	}
	logf("warm-up: create → Running %s (%s; timings %s); deleted in %s",
		ms(b.warmup.total), b.warmup.milestones(), timingsString(b.warmup.timings), b.warmup.deleted.Round(time.Millisecond))

	b.imageDigest = b.warmup.digest
	// The same root disk: the agent's cache, read through internal/image
	// (policy Never: it must be cached, nothing is pulled).
	if err := b.findRootfs(ctx); err != nil {
		return err
	}
	logf("root disk %s (%s); initramfs %s", b.rootfs, b.imageDigest, b.initrd)

	// 5. Timed runs, interleaved: odd pairs start with the bare boot, even
	// pairs with the operator, so that a drift in the machine's load hits
	// both kinds alike.
	b.loadBefore = loadAvg()
	busy0, total0, _ := cpuBusy()
	for i := range c.runs {
		if err := ctx.Err(); err != nil {
			return err
		}
		bareFirst := i%2 == 0
		var op opRun
		var br bareRun
		doBare := func() {
			br = runBare(ctx, b, i)
			if br.err == nil {
				logf("run %d/%d bare: Start → Hello %s (Start returned after %s; writable disk made in %s before), QEMU VmRSS %.1f MiB",
					i+1, c.runs, ms(br.hello), ms(br.started), ms(br.disk), br.mem.rssMiB)
			}
		}
		doOp := func() {
			op = runOperator(ctx, b, fmt.Sprintf("run-%d", i+1), true)
			if op.err == nil {
				logf("run %d/%d operator: create → Running %s (%s; timings %s), QEMU VmRSS %.1f MiB; deleted in %s",
					i+1, c.runs, ms(op.total), op.milestones(), timingsString(op.timings), op.mem.rssMiB, op.deleted.Round(time.Millisecond))
			}
		}
		if bareFirst {
			doBare()
			doOp()
			b.order = append(b.order, "bare, operator")
		} else {
			doOp()
			doBare()
			b.order = append(b.order, "operator, bare")
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, e := range []struct {
			kind string
			err  error
		}{{"bare", br.err}, {"operator", op.err}} {
			if e.err == nil {
				continue
			}
			msg := fmt.Sprintf("run %d %s: %v", i+1, e.kind, e.err)
			b.failures = append(b.failures, msg)
			if !c.keepGoing {
				return errors.New(msg + " (-keep-going records failed runs and goes on)")
			}
			logf("FAILED %s", msg)
		}
		b.pairs = append(b.pairs, pair{op: op, bare: br})
		if br.err == nil {
			b.bares = append(b.bares, br)
		}
		if op.err == nil {
			b.ops = append(b.ops, op)
		}
		if b.cmdlineNote == "" && br.err == nil && op.err == nil {
			b.cmdlineNote = compareCmdlines(br, op, b.work, i)
		}
	}
	busy1, total1, _ := cpuBusy()
	if total1 > total0 {
		b.cpuBusy = (busy1 - busy0) / (total1 - total0)
	}
	b.loadAfter = loadAvg()
	if len(b.ops) == 0 || len(b.bares) == 0 {
		return fmt.Errorf("no successful run of each kind: %s", strings.Join(b.failures, "; "))
	}
	if b.cmdlineNote != "" {
		logf("note: %s", b.cmdlineNote)
	}

	b.elapsed = time.Since(b.started)
	b.machine = machineInfo(root)
	rep := b.report()
	rep.print()
	if err := rep.write(b.cfg.out); err != nil {
		return err
	}
	logf("wrote %s and %s", filepath.Join(b.cfg.out, "results.json"), filepath.Join(b.cfg.out, "results.md"))
	return nil
}

// findRootfs reads the root disk the agent booted from its image cache.
func (b *bench) findRootfs(ctx context.Context) error {
	cache, err := image.New(filepath.Join(b.stateDir, "images"))
	if err != nil {
		return err
	}
	defer cache.Close()
	img, err := cache.Ensure(ctx, b.registry.ref, image.PullOptions{
		Policy: sandboxv1alpha1.PullNever, PinnedDigest: b.imageDigest, Insecure: true,
	}, nil)
	if err != nil {
		return fmt.Errorf("the image is not in the node agent's cache: %w", err)
	}
	b.rootfs, b.imageDigest = img.RootfsPath, img.Digest
	return nil
}

// compareCmdlines checks that the bare VM ran the QEMU command line the
// agent's did, but for the run directory. It returns "" when they match.
func compareCmdlines(br bareRun, op opRun, work string, i int) string {
	if len(br.args) == 0 || len(op.args) == 0 {
		return "could not read a QEMU command line to compare the bare VM's with the agent's"
	}
	bareDir := filepath.Join(work, "bare", fmt.Sprint(i))
	norm := func(args []string, dir string) string {
		return strings.ReplaceAll(strings.Join(args, " "), dir, "<run-dir>")
	}
	a, o := norm(br.args, bareDir), norm(op.args, op.runDir)
	if a == o {
		return ""
	}
	only := func(x, y []string, xDir, yDir string) []string {
		have := map[string]int{}
		for _, t := range y {
			have[strings.ReplaceAll(t, yDir, "<run-dir>")]++
		}
		var out []string
		for _, t := range x {
			t = strings.ReplaceAll(t, xDir, "<run-dir>")
			if have[t] > 0 {
				have[t]--
				continue
			}
			out = append(out, t)
		}
		return out
	}
	return fmt.Sprintf("the bare VM's QEMU command line differs from the agent's (run directory aside): "+
		"only the agent's has %q; only the bare one has %q. Agent's: %s",
		only(op.args, br.args, op.runDir, bareDir), only(br.args, op.args, bareDir, op.runDir), o)
}

func checkPrereqs(b *bench) error {
	var missing []string
	for _, f := range []string{b.kernel, filepath.Join(b.modules, "modules.dep")} {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f+" (run make guest-kernel)")
		}
	}
	for _, tool := range []string{vmm.DefaultQEMUBinary, "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool+" (run hack/setup.sh)")
		}
	}
	if _, err := os.Stat(devimage.DefaultBusybox); err != nil {
		missing = append(missing, devimage.DefaultBusybox+" (busybox-static; run hack/setup.sh)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing: %s", strings.Join(missing, ", "))
	}
	return nil
}

// milestones lists what the watch saw of a run, in ms after Create().
func (o opRun) milestones() string {
	parts := []string{}
	for _, m := range []struct {
		what string
		d    time.Duration
	}{{"manager's finalizer", o.finalized}, {"Unschedulable", o.unschedulable}, {"placed", o.placed},
		{"vm Pulling", o.pulling}, {"vm Booting", o.booting}, {"vm Running", o.vmRunning}} {
		if m.d > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", m.what, ms(m.d)))
		}
	}
	return "seen: " + strings.Join(parts, ", ")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

func timingsString(t sandboxv1alpha1.Timings) string {
	f := func(p *int64) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprint(*p)
	}
	return fmt.Sprintf("scheduled %s, imagePulled %s, rootfsReady %s, vmmStarted %s, guestReady %s (ms)",
		f(t.ScheduledMillis), f(t.ImagePulledMillis), f(t.RootfsReadyMillis), f(t.VMMStartedMillis), f(t.GuestReadyMillis))
}

// machine describes where the benchmark ran.
type machine struct {
	cpus      int
	cpuModel  string
	memGiB    float64
	kernel    string
	qemu      string
	goVersion string
	guest     string
	source    string // the repository's commit and whether the tree was clean
}

func machineInfo(root string) machine {
	m := machine{cpus: runtime.NumCPU(), goVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpuModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for l := range strings.SplitSeq(string(b), "\n") {
			var kb float64
			if _, err := fmt.Sscanf(l, "MemTotal: %f kB", &kb); err == nil {
				m.memGiB = kb / 1024 / 1024
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command(vmm.DefaultQEMUBinary, "--version").Output(); err == nil {
		m.qemu, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	}
	if b, err := os.ReadFile(filepath.Join(root, "bin", "guest", "version")); err == nil {
		m.guest = strings.TrimSpace(string(b))
	}
	m.source = "source tree: not a git checkout"
	if out, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output(); err == nil {
		m.source = "source tree: commit " + strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "-C", root, "status", "--porcelain").Output(); err == nil {
			if n := strings.Count(string(st), "\n"); n > 0 {
				m.source += fmt.Sprintf(" with %d uncommitted changes (files modified or untracked)", n)
			} else {
				m.source += ", clean"
			}
		}
	}
	return m
}
