package main

import (
	"fmt"
	goruntime "runtime"
	"slices"
	"strings"
	"time"

	"github.com/microvm-dev/sandbox-operator/bench/internal/results"
	"github.com/microvm-dev/sandbox-operator/bench/internal/stats"
)

// goalRatio is the goal for the exec round trip over the direct
// call to the guest agent on the node.
const goalRatio = 2.0

// resultPrefixes start the names of the entries this tool writes; a run
// replaces those and keeps every other.
var resultPrefixes = []string{"exec/", "files/"}

// entry is one figure of bench/results.json.
type entry = results.Entry

type stat struct {
	n                     int
	median, p99, min, max float64
}

// summarize is stats.Of in this tool's field names.
func summarize(v []float64) stat {
	sm := stats.Of(v)
	return stat{n: sm.N, median: sm.Median, p99: sm.P99, min: sm.Min, max: sm.Max}
}

type report struct {
	b                                          *bench
	direct, ws, binary, procStart              stat
	upPlugin, upDirect, downPlugin, downDirect stat
}

func (b *bench) report() *report {
	return &report{b: b,
		direct: summarize(b.direct), ws: summarize(b.ws), binary: summarize(b.binary), procStart: summarize(b.procStart),
		upPlugin: summarize(b.upPlugin), upDirect: summarize(b.upDirect),
		downPlugin: summarize(b.downPlugin), downDirect: summarize(b.downDirect),
	}
}

func (r *report) entries() []entry {
	cmd := r.b.cfg.command
	base := r.direct.median
	ms := func(name string, s stat) entry {
		return entry{Name: name, Unit: "ms", Median: stats.Round(s.median, 1), P99: stats.Round(s.p99, 1),
			Baseline: stats.Round(base, 1), Ratio: stats.Ratio(s.median, base), Command: cmd}
	}
	// Throughput: ratio = median / baseline as for every row (the
	// project's rule), so higher is better here.
	tp := func(name string, s, baseline stat, samples []float64) entry {
		return entry{Name: name, Unit: "MiB/s", Median: stats.Round(s.median, 1), P99: stats.Round(stats.LowTail(samples), 1),
			Baseline: stats.Round(baseline.median, 1), Ratio: stats.Ratio(s.median, baseline.median), Command: cmd}
	}
	mibName := fmt.Sprintf("%dMiB", r.b.cfg.fileMiB)
	return []entry{
		ms("exec/kubectl-sandbox-true", r.binary),
		ms("exec/apiserver-websocket-true", r.ws),
		ms("exec/direct-agent-true", r.direct),
		tp("files/copy-"+mibName+"-upload", r.upPlugin, r.upDirect, r.b.upPlugin),
		tp("files/copy-"+mibName+"-download", r.downPlugin, r.downDirect, r.b.downPlugin),
	}
}

func yesNo(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func (r *report) print() {
	fmt.Println()
	fmt.Println("== access benchmark ==")
	fmt.Printf("direct SPDY exec -- true to the agent: median %.1f ms, p99 %.1f ms (%d)\n", r.direct.median, r.direct.p99, r.direct.n)
	fmt.Printf("websocket exec through the API server (in-process): median %.1f ms, p99 %.1f ms: ratio %.3f (goal ≤ %.0f: %s)\n",
		r.ws.median, r.ws.p99, stats.Ratio(r.ws.median, r.direct.median), goalRatio, yesNo(stats.Ratio(r.ws.median, r.direct.median) <= goalRatio))
	fmt.Printf("bin/kubectl-sandbox exec -- true (process start included): median %.1f ms, p99 %.1f ms: ratio %.3f (goal ≤ %.0f: %s)\n",
		r.binary.median, r.binary.p99, stats.Ratio(r.binary.median, r.direct.median), goalRatio, yesNo(stats.Ratio(r.binary.median, r.direct.median) <= goalRatio))
	fmt.Printf("bin/kubectl-sandbox --help (process start, no API call): median %.1f ms, p99 %.1f ms\n", r.procStart.median, r.procStart.p99)
	fmt.Printf("upload %d MiB: plugin cp median %.1f MiB/s, direct write %.1f MiB/s\n", r.b.cfg.fileMiB, r.upPlugin.median, r.upDirect.median)
	fmt.Printf("download %d MiB: plugin cp median %.1f MiB/s, direct read %.1f MiB/s\n", r.b.cfg.fileMiB, r.downPlugin.median, r.downDirect.median)
	fmt.Println()
}

func (r *report) markdown() string {
	b, c := r.b, r.b.cfg
	var sb strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	wsRatio, binRatio := stats.Ratio(r.ws.median, r.direct.median), stats.Ratio(r.binary.median, r.direct.median)
	p("\n## exec/* and files/*: how measured\n\n")
	p("Run %s UTC by `%s` (`make bench` runs it after the boot benchmark), %s in all. Machine: %s.\n\n",
		b.started.UTC().Format("2006-01-02 15:04"), c.command, b.elapsed.Round(time.Second), b.machine)
	p("**Setup.** kube-apiserver + etcd (envtest, %s) with the aggregation layer configured as in test/e2e (a front-proxy CA "+
		"and client certificate); `bin/manager` (`--leader-elect=false --access-bind-address=127.0.0.1:<port>`; it registers the "+
		"APIService `%s` itself, and the aggregator reaches it through an ExternalName Service `%s/%s` to localhost) and "+
		"`bin/node-agent` (`--allow-emulation --accelerator %s --reserve-cpus=0 --access-bind-address=127.0.0.1:0`, published "+
		"in SandboxNode status.access) as their own processes, all on this machine with the benchmark and the VM. "+
		"One Sandbox (busybox from `internal/devimage` served on 127.0.0.1, command `%q`, 1 vCPU, %d MiB) is Running "+
		"(create → Running took %.0f ms) and idle throughout. Every client is one admin user (system:masters) with a kubeconfig: "+
		"the plugin, the in-process clients, the manager and the agent.\n\n",
		b.k8sVersion, "v1alpha1.subresources.sandbox.microvm.dev", leaseNamespace, accessServiceName, c.accelerator, idleCmd, c.memoryMiB, b.bootMs)

	p("**exec.** %d timed round trips of each of the paths below, interleaved (each round runs all four, the first rotating), "+
		"after 2 untimed warm-ups of each; each is timed from before the executor is built (or the process started) to the "+
		"end of the stream with exit code 0. p99 is nearest-rank: with %d samples, the largest.\n\n", c.runs, c.runs)
	p("- `exec/direct-agent-true` — **the baseline**, \"a direct call to the guest agent on the node\": client-go's SPDY executor "+
		"POSTing `https://%s/v1/sandboxes/<uid>/exec?command=true&output=1&error=1` to the node agent's access endpoint "+
		"(SandboxNode status.access), trusting the agent's published certificate and presenting the manager's client certificate "+
		"(`access.EnsureClientCA` reading the CA Secret the manager created, then `ManagerClientCert`): exactly the hop the "+
		"manager's proxy makes, one new TLS connection per exec. Median **%.1f ms**, p99 %.1f ms (min %.1f).\n",
		b.endpoint, r.direct.median, r.direct.p99, r.direct.min)
	p("- `exec/apiserver-websocket-true` — **the headline ratio**: client-go's websocket executor (v5.channel.k8s.io, GET) in this "+
		"process, to `/apis/subresources.sandbox.microvm.dev/v1alpha1/namespaces/%s/sandboxes/%s/exec?command=true&stdout=true&stderr=true` "+
		"on the kube-apiserver: authentication, RBAC, the aggregator's proxy (front-proxy certificate), the manager's access API "+
		"(SubjectAccessReview, the websocket translated to SPDY, mutual TLS to the agent), the agent, the guest. No process start: "+
		"the fair comparison with the baseline. Median **%.1f ms**, p99 %.1f ms (min %.1f): **ratio %.3f**. Goal ≤ %.0f: **%s**.\n",
		benchNamespace, sandboxName, r.ws.median, r.ws.p99, r.ws.min, wsRatio, goalRatio, yesNo(wsRatio <= goalRatio))
	p("- `exec/kubectl-sandbox-true` — the real binary, `bin/kubectl-sandbox --kubeconfig=<admin> -n %s exec %s -- true`, as a user "+
		"runs it: **process start included** (Go runtime start, kubeconfig loading, building clients, then the same websocket path). "+
		"Median **%.1f ms**, p99 %.1f ms (min %.1f): ratio %.3f (goal ≤ %.0f: %s). For scale, `bin/kubectl-sandbox --help` "+
		"(process start and exit, no API call), timed in the same rounds: median %.1f ms, p99 %.1f ms.\n\n",
		benchNamespace, sandboxName, r.binary.median, r.binary.p99, r.binary.min, binRatio, goalRatio, yesNo(binRatio <= goalRatio),
		r.procStart.median, r.procStart.p99)

	p("**files.** A %d MiB file of pseudo-random bytes (ChaCha8: incompressible), %d timed copies of each kind, upload then "+
		"download in each round, the plugin and the direct copy alternating which goes first. MiB/s = %d MiB / wall time. "+
		"In results.json `median` is the plugin's median MiB/s, `baseline` the direct copy's median MiB/s, `ratio` = "+
		"median / baseline (the plugin's share of the direct copy's throughput; higher is better), and `p99` the "+
		"slow tail: the throughput 99%% of the plugin's copies reached (nearest rank from the bottom: the slowest of %d).\n\n",
		c.fileMiB, c.fileRuns, c.fileMiB, c.fileRuns)
	p("- `files/copy-%dMiB-upload`: `bin/kubectl-sandbox cp <local> %s:/tmp/accessbench-plugin.bin` (process start included; "+
		"/tmp in the guest, per its /proc/mounts: %s) — median **%.1f MiB/s** (runs: %s s) — against a POST `?op=write&path=/tmp/accessbench-direct.bin` "+
		"with the bytes as the body, straight to the agent's files endpoint with the manager's client certificate — median "+
		"**%.1f MiB/s** (runs: %s s): ratio %.3f.\n",
		c.fileMiB, sandboxName, b.tmpFS, r.upPlugin.median, secs(b.upPluginS), r.upDirect.median, secs(b.upDirectS), stats.Ratio(r.upPlugin.median, r.upDirect.median))
	p("- `files/copy-%dMiB-download`: `bin/kubectl-sandbox cp %s:/tmp/accessbench-plugin.bin <local>` — median **%.1f MiB/s** "+
		"(runs: %s s) — against a GET `?op=read` of the direct copy's file — median **%.1f MiB/s** (runs: %s s): ratio %.3f.\n",
		c.fileMiB, sandboxName, r.downPlugin.median, secs(b.downPluginS), r.downDirect.median, secs(b.downDirectS), stats.Ratio(r.downPlugin.median, r.downDirect.median))
	p("- Checked: every download's sha256 equals the original's (the plugin's download is of the plugin's upload, the direct " +
		"read of the direct write), and the plugin's first upload was also read back directly and matched.\n\n")

	p("**Reading these numbers.** Everything shares %d CPUs with a TCG guest (the guest agent runs on an emulated CPU), so the "+
		"guest's part of each exec is slow and noisy and is common to both exec paths; the difference of the medians "+
		"(%.1f ms in-process; %.1f ms for the binary, which also pays its process start) is what the API server, the aggregator "+
		"and the manager add per exec. The copies are slow on both paths alike, which points at what they share (the agent, the "+
		"virtio-serial link and the emulated guest on shared CPUs) rather than at the API server and the manager; this run did not "+
		"measure where the time goes.\n",
		numCPU(), r.ws.median-r.direct.median, r.binary.median-r.direct.median)
	return sb.String()
}

func secs(v []float64) string {
	parts := make([]string, len(v))
	for i, s := range v {
		parts[i] = fmt.Sprintf("%.2f", s)
	}
	return strings.Join(parts, ", ")
}

// write replaces this tool's entries in dir's results.json and its
// section of results.md.
func (r *report) write(dir string) error {
	return results.Write(dir, func(name string) bool {
		return slices.ContainsFunc(resultPrefixes, func(p string) bool { return strings.HasPrefix(name, p) })
	}, r.entries(), accessBegin, accessEnd, r.markdown())
}

// This tool's section of results.md.
const (
	accessBegin = "<!-- access:begin -->"
	accessEnd   = "<!-- access:end -->"
)

func numCPU() int { return goruntime.NumCPU() }
