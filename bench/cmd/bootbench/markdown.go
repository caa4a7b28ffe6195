package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/microvm-dev/sandbox-operator/bench/internal/stats"
)

// markdown is the "boot" section of results.md: how each number was
// measured, the samples behind the medians and what to make of them.
func (r *report) markdown() string {
	b, c, mc := r.b, r.b.cfg, r.b.machine
	var sb strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	diff := r.total.median - r.bareHello.median

	p("\n## boot/*: how measured\n\n")
	p("Run %s UTC by `%s` (`make bench` runs it after the placement benchmark), %s in all. Machine: %d CPUs (%s), %.1f GiB memory, Linux %s, %s, %s; guest kernel %s; %s.\n\n",
		b.started.UTC().Format("2006-01-02 15:04"), c.command, b.elapsed.Round(time.Second), mc.cpus, mc.cpuModel, mc.memGiB,
		mc.kernel, mc.goVersion, mc.qemu, mc.guest, mc.source)

	p("**Setup.** kube-apiserver + etcd (envtest, %s), `bin/manager` (`--leader-elect=false`, its defaults otherwise) and "+
		"`bin/node-agent` (`--allow-emulation --accelerator %s`, VM runtime on: `--state-dir`, `--kernel bin/guest/vmlinux`, "+
		"`--sandbox-init bin/sandbox-init`, `--guest-modules bin/guest/modules`) run as their own processes, as in `make dev`, "+
		"on the same machine as this benchmark and the VMs: everything shares the %d CPUs. "+
		"The image is served by go-containerregistry's in-memory registry on 127.0.0.1 (nothing comes from the internet): "+
		"one layer (%d KiB gzipped) built by `internal/devimage` from the host's static busybox and its applets, as `make dev` does, "+
		"entrypoint `%q`, so the VM stays Running and idle. Each Sandbox is what a user would apply: `image`, "+
		"`resources: {cpus: 1, memoryMiB: %d}`, `registry.insecure: true` (plain HTTP), `stopPolicy.gracePeriodSeconds: 2`.\n\n",
		b.cluster.version, c.accelerator, mc.cpus, b.registry.layerBytes/1024, idleEntrypoint, c.memoryMiB)

	p("**Cold first run (warm-up).** One Sandbox before the timed runs, not in their medians: the node agent pulls the image "+
		"and flattens it to an ext4 root disk (its initramfs was built when it started, before any Sandbox). "+
		"create → Running took %s (watch events after `Create()`, %s; timings: %s). "+
		"It is `boot/cold-first-run` (one sample; baseline: the bare boot's median).\n\n",
		ms(b.warmup.total), b.warmup.milestones(), timingsString(b.warmup.timings))

	p("**Timed runs.** %d pairs of one bare boot and one operator boot, alternating which goes first (%s) so that a drift in "+
		"the machine's load hits both kinds alike; one VM at a time.\n\n", c.runs, orderSummary(b.order))
	p("- *Operator* (`boot/apply-to-running`): a watch on the Sandbox (field selector `metadata.name`) is opened, then "+
		"`Create()` is called; the time is from that call to the first watch event whose `status.phase` is Running. "+
		"(The node agent reports `status.vm.state` Running once the guest agent's Hello arrived and it answered it; "+
		"the manager then derives the phase.) The VM then idles %s, its QEMU (`status.vm.pid`) is measured, and the Sandbox "+
		"is deleted and waited for until the API server no longer has it (median %.0f ms: the agent stops the VM and "+
		"releases its finalizer) before the next run.\n", c.idle, r.deleted.median)
	upper := "no writable disk (`-bare-upper=false`: the guest's writable layer is a tmpfs, unlike a Sandbox's)"
	if c.bareUpper {
		upper = fmt.Sprintf("a fresh sparse %d MiB ext4 writable disk (serial `%s`, `%s=%s`) made the way the agent makes a new "+
			"Sandbox's before the clock starts (median %.0f ms, the counterpart of `rootfsReadyMillis`)",
			upperDiskMiB, upperSerial, upperParam, upperSerial, r.bareDisk.median)
	}
	p("- *Bare* (the baseline of `boot/apply-to-running`): `vmm.QEMU{}.Start` with the `vmm.Config` the node agent builds "+
		"for that Sandbox — the same kernel, the agent's own initramfs (`<state-dir>/initrd.cpio`), the agent's cached ext4 "+
		"of the same image digest (`%s`, found through `internal/image` with pull policy Never) as the read-only root disk, "+
		"%s, accelerator %s with the host TSC rate, 1 vCPU, %d MiB — timed from just before `Start` to the guest agent's "+
		"Hello read on the agent socket (`vm.DialAgent`). Then, as the agent does, HelloAck and a Start of the image's "+
		"entrypoint (argv, env and dir only: the agent's Start also names the host, after the Hello and outside both clocks), "+
		"%s idle, the same memory readings, and QMP quit (SIGKILL if needed).\n",
		b.imageDigest, upper, c.accelerator, c.memoryMiB, c.idle)
	if b.cmdlineNote == "" {
		p("- Same VM: the bare QEMU's command line (`/proc/<pid>/cmdline`) was compared with the one the node agent " +
			"started, run directory aside: **identical**.\n\n")
	} else {
		p("- Same VM? The command lines were compared, run directory aside, and **differ**:\n\n```\n%s\n```\n\n", b.cmdlineNote)
	}

	p("**Outcome.** apply → Running: median **%.0f ms** (p99 %.0f ms; min %.0f), bare QEMU boot to Hello: median **%.0f ms** "+
		"(p99 %.0f ms; min %.0f): **ratio %.3f** (the medians differ by %+.0f ms). "+
		"Goal ratio ≤ %.2f: **%s**. With %d samples the p99 is the largest sample (nearest rank). "+
		"Two readings less exposed to the machine's noise, for judging that ratio: the median of the per-pair ratios "+
		"(each operator boot over the bare boot next to it) is %.3f, and the ratio of the fastest boots of each kind "+
		"(%.0f / %.0f ms) is %.3f. And the operator's own time, measured within each run and so free of the boot's noise: "+
		"apply→Running minus `guestReadyMillis` (everything but the guest's boot: API writes and watches, placement, "+
		"the agent's pass, the writable disk, the phase) has a median of **%.0f ms** (p99 %.0f ms); added to the bare boot's "+
		"median that is a ratio of %.3f — unless the boot itself is slower under the operator, which is what the pairs above "+
		"measure (`guestReadyMillis` against the bare boot: `boot/stage-guest-ready`).\n\n",
		r.total.median, r.total.p99, r.total.min, r.bareHello.median, r.bareHello.p99, r.bareHello.min,
		stats.Ratio(r.total.median, r.bareHello.median), diff, goalRatio, yesNo(r.goalMet()), r.total.n,
		r.pairRatio.median, r.total.min, r.bareHello.min, stats.Ratio(r.total.min, r.bareHello.min),
		r.outside.median, r.outside.p99, 1+r.outside.median/r.bareHello.median)

	p("Samples (ms; operator milestones are what the watch delivered, counted from `Create()`; timings are the run's `status.timings`):\n\n")
	p("| run | bare: Start→Hello | apply→Running | op / bare | finalizer seen | placed seen | vm Pulling seen | vm Booting seen | vm Running seen | scheduled | imagePulled | rootfsReady | vmmStarted | guestReady |\n")
	p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for i, pair := range b.pairs {
		cell := func(d time.Duration) string {
			if d == 0 {
				return "–"
			}
			return fmt.Sprintf("%.0f", msOf(d))
		}
		bare, op := "failed", []string{"failed", "", "", "", "", "", "", "", "", "", "", ""}
		if pair.bare.err == nil {
			bare = cell(pair.bare.hello)
		}
		if o := pair.op; o.err == nil {
			pr := "–"
			if pair.bare.err == nil {
				pr = fmt.Sprintf("%.3f", stats.Ratio(msOf(o.total), msOf(pair.bare.hello)))
			}
			op = []string{cell(o.total), pr, cell(o.finalized), cell(o.placed), cell(o.pulling), cell(o.booting), cell(o.vmRunning)}
			for _, s := range stages {
				if v := s.get(o.timings); v != nil {
					op = append(op, fmt.Sprint(*v))
				} else {
					op = append(op, "–")
				}
			}
		}
		p("| %d | %s | %s |\n", i+1, bare, strings.Join(op, " | "))
	}
	p("\n")

	p("**Stage breakdown** (medians over the %d operator runs; `status.timings` is written by the manager, `scheduledMillis`, "+
		"and by the node agent, the rest). The entries' baseline is the stage's bare counterpart where there is one "+
		"(`rootfsReadyMillis` ↔ making the bare VM's writable disk, median %.0f ms; `vmmStartedMillis` ↔ how long "+
		"`vmm.QEMU.Start` took in the bare run, median %.0f ms; `guestReadyMillis` ↔ Start → Hello), "+
		"else the bare boot's median, so that their ratio is the stage's cost as a share of a bare boot.\n\n",
		r.total.n, r.bareDisk.median, r.bareStarted.median)
	p("| stage | what the API says it is | median ms | p99 ms | recorded in |\n|---|---|---:|---:|---:|\n")
	docs := map[string]string{
		"scheduled":    "the run's request (creation) → its placement",
		"image-pulled": "the image pull (0 when cached)",
		"rootfs-ready": "building the root filesystem and writable disk",
		"vmm-started":  "starting the VMM process",
		"guest-ready":  "VMM start → the guest agent's first answer",
	}
	for _, s := range stages {
		st := r.stageStats[s.name]
		if r.stageSeen[s.name] == 0 {
			p("| `%s` | %s | not recorded | | 0 of %d runs |\n", s.field, docs[s.name], r.total.n)
			continue
		}
		p("| `%s` | %s | %.0f | %.0f | %d of %d runs |\n", s.field, docs[s.name], st.median, st.p99, r.stageSeen[s.name], r.total.n)
	}
	p("| other (`boot/stage-other`) | apply→Running minus scheduled, imagePulled, rootfsReady and guestReady (vmmStarted lies inside guestReady): "+
		"API writes and watch delivery, the agent's queueing, the manager deriving the phase | %.0f | %.0f | computed |\n\n",
		r.other.median, r.other.p99)
	p("Seen by the watch (median ms after `Create()`): placed (`status.nodeName`) %.0f, vm Pulling %.0f, vm Booting %.0f, "+
		"vm Running %.0f, phase Running %.0f. A milestone missing from a run's row above was folded into a later event.\n\n",
		r.placed.median, r.pulling.median, r.booting.median, r.vmRunning.median, r.total.median)

	p("**Memory of an idle sandbox** (after %s idle; medians; `/proc/<pid>/status` VmRSS, split with `/proc/<pid>/smaps`):\n\n", c.idle)
	p("| | sandbox's QEMU | bare QEMU |\n|---|---:|---:|\n")
	p("| VmRSS (`boot/qemu-rss-idle`) | %.1f MiB | %.1f MiB |\n", r.opRSS.median, r.bareRSS.median)
	if r.guestRAMFound {
		p("| guest RAM resident (the %d MiB anonymous mapping's Rss: guest memory touched so far) | %.1f MiB | %.1f MiB |\n",
			c.memoryMiB, r.opGuest.median, r.bareGuest.median)
		p("| VmRSS beyond the guest RAM resident (`boot/qemu-rss-beyond-guest-ram`) | %.1f MiB | %.1f MiB |\n",
			r.opBeyond.median, r.bareBeyond.median)
	}
	p("| of which TCG's translation cache (largest rwx anonymous mapping's Rss) | %.1f MiB | %.1f MiB |\n", r.opTCG.median, r.bareTCG.median)
	p("| VmRSS − memoryMiB (%d) | %.1f MiB | %.1f MiB |\n\n", c.memoryMiB, r.opRSS.median-float64(c.memoryMiB), r.bareRSS.median-float64(c.memoryMiB))
	p("\"Beyond its guest memory\": a guest's RAM costs host memory only once the guest touches it, so VmRSS − memoryMiB is "+
		"negative for a small idle guest and says little; the host cost per idle sandbox is VmRSS itself (guest RAM touched + "+
		"QEMU's own memory), and QEMU's own part is VmRSS minus the resident part of the guest RAM mapping%s. "+
		"The sandbox's and the bare VM's QEMU run the same command line, so a difference between the columns is noise or "+
		"the longer life of the sandbox's VM before the reading. "+
		"Node agent (`boot/agent-rss-one-sandbox`): VmRSS %.1f MiB with one idle Sandbox against %.1f MiB right before its "+
		"Create (median growth %.1f MiB; %.1f MiB after start-up, before any Sandbox). The agent is a Go process: its RSS "+
		"moves with the garbage collector, so a growth of a few MiB for one sandbox is within its noise.\n\n",
		map[bool]string{true: "", false: " (the guest RAM mapping was not found in smaps in some run: that split is left out)"}[r.guestRAMFound],
		r.agentIdle.median, r.agentBefore.median, r.agentGrowth.median, b.agentIdle)

	p("**Notes on the node agent's timings.**\n\n")
	for _, n := range r.timingNotes() {
		p("- %s\n", n)
	}
	p("\n")
	if len(b.failures) > 0 {
		p("**Failed runs** (left out of the medians, `-keep-going`):\n\n")
		for _, f := range b.failures {
			p("- %s\n", strings.ReplaceAll(f, "\n", " "))
		}
		p("\n")
	}
	p("Noise: the machine was %.0f%% busy over the timed runs (all %d CPUs, the VMs, control plane, manager, agent and "+
		"anything else running); load average %s before, %s after. On a shared 2-CPU machine single boots move by tens of "+
		"percent; the interleaving spreads that over both kinds, the medians of %d samples do the rest.\n\n",
		100*b.cpuBusy, mc.cpus, b.loadBefore, b.loadAfter, r.total.n)
	return sb.String()
}

// timingNotes are observations about status.timings derived from the
// samples.
func (r *report) timingNotes() []string {
	var out []string
	n := r.total.n
	for _, s := range stages {
		if r.stageSeen[s.name] == 0 {
			out = append(out, fmt.Sprintf("`%s` is never recorded (0 of %d runs, and not in the cold run either).", s.field, n))
		} else if r.stageSeen[s.name] < n {
			out = append(out, fmt.Sprintf("`%s` is recorded in only %d of %d runs.", s.field, r.stageSeen[s.name], n))
		}
	}
	if st, ok := r.stageStats["image-pulled"]; ok && st.median > 0 {
		out = append(out, fmt.Sprintf("`imagePulledMillis` is %.0f ms (median) for an image already in the cache, where the API "+
			"documents 0 when cached: it measures the cache lookup.", st.median))
	}
	if wt := r.b.warmup.timings; wt.ImagePulledMillis != nil {
		rf := "not recorded"
		if wt.RootfsReadyMillis != nil {
			rf = fmt.Sprintf("%d ms", *wt.RootfsReadyMillis)
		}
		out = append(out, fmt.Sprintf("In the cold run `imagePulledMillis` (%d ms) covers the pull and the flattening of the image "+
			"to its ext4 root filesystem together (the image cache does both in one call), while `rootfsReadyMillis` (%s) "+
			"covers the writable disk only, though the API describes it as \"building the root filesystem and writable disk\".",
			*wt.ImagePulledMillis, rf))
	}
	if st, ok := r.stageStats["guest-ready"]; ok {
		out = append(out, fmt.Sprintf("`guestReadyMillis` (%.0f ms) counts from the same instant as `vmmStartedMillis`, so it "+
			"includes it; the bare boot's Start → Hello is its counterpart (%.0f ms, ratio %.3f). It ends after the agent has "+
			"answered the Hello and sent the main process's Start, a few ms past the Hello itself.",
			st.median, r.bareHello.median, stats.Ratio(st.median, r.bareHello.median)))
	}
	if st, ok := r.stageStats["scheduled"]; ok {
		out = append(out, fmt.Sprintf("`scheduledMillis` (%.0f ms) against placement seen by the watch %.0f ms after `Create()`; "+
			"the manager counts it from its first sight of the run, or from the second-granular creationTimestamp when that "+
			"is more than a second old.", st.median, r.placed.median))
	}
	for _, o := range append([]opRun{r.b.warmup}, r.b.ops...) {
		sch := o.timings.ScheduledMillis
		if sch == nil || o.placed == 0 || msOf(o.placed)-float64(*sch) < 500 {
			continue
		}
		what := "run " + strings.TrimPrefix(o.name, "run-")
		if o.name == "warmup" {
			what = "the cold run"
		}
		out = append(out, fmt.Sprintf("In %s the watch saw the manager's first write (its finalizer) %s and the placement %s after "+
			"`Create()`, yet `scheduledMillis` is %d ms: the manager counts from its own first sight of the run, so a delay before "+
			"or inside the placing pass is in no timing (about %s here).",
			what, ms(o.finalized), ms(o.placed), *sch, ms(o.placed-time.Duration(*sch)*time.Millisecond)))
	}
	out = append(out, fmt.Sprintf("`boot/stage-other` (%.0f ms) is the part of apply→Running that no timing covers.", r.other.median))
	return out
}

// orderSummary says which kind went first in each pair.
func orderSummary(order []string) string {
	var parts []string
	for i, o := range order {
		parts = append(parts, fmt.Sprintf("%d: %s", i+1, o))
	}
	return strings.Join(parts, "; ")
}
