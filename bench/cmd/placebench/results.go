package main

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/microvm-dev/sandbox-operator/bench/internal/results"
	"github.com/microvm-dev/sandbox-operator/bench/internal/stats"
)

// Goals the placement entries are judged against.
const (
	goalAllPlaced = 10 * time.Second
	goalP99       = 100 * time.Millisecond
	resultPrefix  = "placement/"
	command       = "make bench"
)

// entry is one figure of bench/results.json.
type entry = results.Entry

type report struct {
	cfg         config
	base        baseline
	main        mainResult
	idle, end   memStat
	perNode     []nodeCount
	metrics     *metricsDump
	idleMetrics *metricsDump
	managerLog  string
	machine     machine
	goVersion   string
}

type machine struct {
	cpus     int
	cpuModel string
	memGiB   float64
	kernel   string
	control  string // the control plane's version stamp
}

func machineInfo(root string) machine {
	m := machine{cpus: runtime.NumCPU(), control: "binaries from " + os.Getenv("KUBEBUILDER_ASSETS")}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		m.control = "binaries from " + filepath.Join(root, "bin", "k8s")
	}
	for _, dir := range []string{os.Getenv("KUBEBUILDER_ASSETS"), filepath.Join(root, "bin", "k8s")} {
		if b, err := os.ReadFile(filepath.Join(dir, ".stamp")); dir != "" && err == nil {
			m.control = strings.TrimSpace(string(b))
			break
		}
	}
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
	return m
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (r *report) entries() []entry {
	lat50, lat99 := msf(quantile(r.main.lat, 0.5)), msf(quantile(r.main.lat, 0.99))
	base := msf(r.base.p50)
	all, createAll := r.main.allPlaced.Seconds(), r.main.createAll.Seconds()
	return []entry{
		{Name: "placement/latency", Unit: "ms", Median: stats.Round(lat50, 2), P99: stats.Round(lat99, 2),
			Baseline: stats.Round(base, 2), Ratio: stats.Ratio(lat50, base), Command: command},
		{Name: "placement/all-placed", Unit: "s", Median: stats.Round(all, 3), P99: stats.Round(all, 3),
			Baseline: stats.Round(createAll, 3), Ratio: stats.Ratio(all, createAll), Command: command},
		{Name: "placement/manager-peak-rss", Unit: "MiB", Median: stats.Round(r.end.hwmMiB, 1), P99: stats.Round(r.end.hwmMiB, 1),
			Baseline: stats.Round(r.idle.rssMiB, 1), Ratio: stats.Ratio(r.end.hwmMiB, r.idle.rssMiB), Command: command},
	}
}

func (r *report) maxPerNode() (string, int) {
	if len(r.perNode) == 0 {
		return "", 0
	}
	return r.perNode[0].node, r.perNode[0].n
}

func (r *report) minPerNode() int {
	if len(r.perNode) < r.cfg.nodes {
		return 0
	}
	return r.perNode[len(r.perNode)-1].n
}

func (r *report) goalsMet() (allPlaced, p99 bool) {
	m := r.main
	return m.placed == m.n && m.allPlaced <= goalAllPlaced, m.placed == m.n && quantile(m.lat, 0.99) <= goalP99
}

func yesNo(b bool) string {
	if b {
		return "met"
	}
	return "NOT met"
}

// diagnostics are the manager's own numbers, for explaining the results.
func (r *report) diagnostics() []string {
	d, idle := r.metrics, r.idleMetrics
	delta := func(name string, match map[string]string) float64 { return d.sum(name, match) - idle.sum(name, match) }
	q := map[string]string{"name": "sandbox"}
	ctl := map[string]string{"controller": "sandbox"}
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	m := r.main
	add("create→manager's finalizer seen by the watch: p50 %s, p99 %s", ms(quantile(m.finLat, 0.5)), ms(quantile(m.finLat, 0.99)))
	add("Create() round trip during the main run: p50 %s, p99 %s", ms(quantile(m.callLat, 0.5)), ms(quantile(m.callLat, 0.99)))
	add("CPU over the main run (%s): manager %.1f CPU-s (%.0f%% of one CPU); whole machine %.0f%% busy (%d CPUs, shared with kube-apiserver, etcd and this client); load average before it %s",
		m.waited.Round(100*time.Millisecond), m.managerCPU, 100*m.managerCPU/m.waited.Seconds(), 100*m.machineBusy, r.machine.cpus, m.loadAvg)
	var procs []string
	for _, name := range []string{"kube-apiserver", "etcd", "manager", "placebench"} {
		if v, ok := m.procCPU[name]; ok {
			procs = append(procs, fmt.Sprintf("%s %.1f", name, v))
		}
	}
	if len(procs) > 0 {
		var ours float64
		for _, v := range m.procCPU {
			ours += v
		}
		add("CPU-seconds by process over the main run: %s; everything else on the machine %.1f (of %.1f available)",
			strings.Join(procs, ", "), max(0, m.machineBusyCPU-ours), float64(r.machine.cpus)*m.waited.Seconds())
	}
	if m.apiAfter != nil && m.apiBefore != nil {
		add("kube-apiserver request latency during the main run (its own apiserver_request_duration_seconds, mean): %s", apiLatencies(m.apiBefore, m.apiAfter))
	}
	add("status.timings.scheduledMillis (the manager's own request→decision time): p50 %s, p99 %s (%d sandboxes)",
		ms(quantile(m.scheduledMillis, 0.5)), ms(quantile(m.scheduledMillis, 0.99)), len(m.scheduledMillis))
	if d == nil {
		add("manager metrics: not scraped")
		return out
	}
	add("sandbox_placement_duration_seconds: count %.0f, p50 in %s, p99 in %s (histogram buckets)",
		d.sum("sandbox_placement_duration_seconds_count", nil),
		d.bucketString("sandbox_placement_duration_seconds", nil, 0.5),
		d.bucketString("sandbox_placement_duration_seconds", nil, 0.99))
	add("sandbox_placements_total: placed %.0f, unschedulable %.0f",
		d.sum("sandbox_placements_total", map[string]string{"result": "placed"}),
		d.sum("sandbox_placements_total", map[string]string{"result": "unschedulable"}))
	if n := delta("workqueue_queue_duration_seconds_count", q); n > 0 {
		add("workqueue wait (sandbox): %.0f items, mean %.1f ms, p50 in %s, p99 in %s",
			n, 1000*delta("workqueue_queue_duration_seconds_sum", q)/n,
			d.bucketString("workqueue_queue_duration_seconds", q, 0.5),
			d.bucketString("workqueue_queue_duration_seconds", q, 0.99))
	}
	if n := delta("workqueue_work_duration_seconds_count", q); n > 0 {
		add("reconcile work (sandbox): %.0f reconciles, mean %.1f ms, p99 in %s, total %.1f s of worker time",
			n, 1000*delta("workqueue_work_duration_seconds_sum", q)/n,
			d.bucketString("workqueue_work_duration_seconds", q, 0.99),
			delta("workqueue_work_duration_seconds_sum", q))
	}
	add("workqueue (sandbox): adds %.0f, retries %.0f, depth at end %.0f, max workers %.0f",
		delta("workqueue_adds_total", q), delta("workqueue_retries_total", q), d.sum("workqueue_depth", q),
		d.sum("controller_runtime_max_concurrent_reconciles", ctl))
	var results []string
	for _, res := range []string{"success", "error", "requeue", "requeue_after"} {
		results = append(results, fmt.Sprintf("%s %.0f", res, delta("controller_runtime_reconcile_total", map[string]string{"controller": "sandbox", "result": res})))
	}
	add("reconciles: %s", strings.Join(results, ", "))
	var reqs []string
	for _, meth := range []string{"GET", "LIST", "POST", "PUT", "PATCH", "DELETE"} {
		if n := delta("rest_client_requests_total", map[string]string{"method": meth}); n > 0 {
			reqs = append(reqs, fmt.Sprintf("%s %.0f", meth, n))
		}
	}
	add("manager API requests during the run: %s; HTTP 409 %.0f, 429 %.0f",
		strings.Join(reqs, ", "), delta("rest_client_requests_total", map[string]string{"code": "409"}),
		delta("rest_client_requests_total", map[string]string{"code": "429"}))
	if b, err := os.ReadFile(r.managerLog); err == nil {
		s := string(b)
		add("manager log: %d lines, %d ERROR lines, %d mentioning throttling",
			strings.Count(s, "\n"), strings.Count(s, "\tERROR\t"), strings.Count(strings.ToLower(s), "throttling"))
	}
	return out
}

func (r *report) print() {
	m := r.main
	node, maxN := r.maxPerNode()
	allOK, p99OK := r.goalsMet()
	fmt.Println()
	fmt.Println("== placement benchmark ==")
	fmt.Printf("placed %d of %d (%d nodes × %d slots); max per node %d (%s), min %d: %s\n", m.placed, m.n,
		r.cfg.nodes, r.cfg.slots, maxN, node, r.minPerNode(), overcommitVerdict(maxN, r.cfg.slots))
	fmt.Printf("place latency (create start → nodeName seen): p50 %s, p99 %s, max %s\n",
		ms(quantile(m.lat, 0.5)), ms(quantile(m.lat, 0.99)), ms(quantile(m.lat, 1)))
	fmt.Printf("baseline (create start → ADDED seen, no manager, %d Stopped sandboxes): p50 %s, p99 %s\n",
		r.base.n, ms(r.base.p50), ms(r.base.p99))
	fmt.Printf("all placed after %s (creating all took %s)%s\n", m.allPlaced.Round(time.Millisecond),
		m.createAll.Round(time.Millisecond), map[bool]string{true: " — TIMED OUT", false: ""}[m.timedOut])
	fmt.Printf("manager RSS: idle %.1f MiB, peak (VmHWM) %.1f MiB, highest VmRSS sampled every 250 ms %.1f MiB, at end %.1f MiB\n",
		r.idle.rssMiB, r.end.hwmMiB, m.rssPeakSampled, r.end.rssMiB)
	fmt.Printf("goals: all placed within %s: %s; p99 ≤ %s: %s\n", goalAllPlaced, yesNo(allOK), goalP99, yesNo(p99OK))
	fmt.Println("manager diagnostics:")
	for _, l := range r.diagnostics() {
		fmt.Println("  " + l)
	}
	fmt.Printf("manager log: %s\n", r.managerLog)
	fmt.Println()
}

func overcommitVerdict(maxN, slots int) string {
	if maxN > slots {
		return fmt.Sprintf("OVERCOMMITTED (more than %d on a node)", slots)
	}
	return "no node over its slots"
}

// write replaces this tool's entries in dir's results.json and its
// section of results.md.
func (r *report) write(dir string) error {
	return results.Write(dir, func(name string) bool { return strings.HasPrefix(name, resultPrefix) }, r.entries(), placementBegin, placementEnd, r.markdown())
}

// This tool's section of results.md.
const (
	placementBegin = "<!-- placement:begin -->"
	placementEnd   = "<!-- placement:end -->"
)

func (r *report) markdown() string {
	m, c, mc := r.main, r.cfg, r.machine
	node, maxN := r.maxPerNode()
	allOK, p99OK := r.goalsMet()
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("\n## placement/*: how measured\n\n")
	p("Run %s UTC by `go run ./bench/cmd/placebench` (`make bench`). Machine: %d CPUs (%s), %.1f GiB memory, Linux %s, %s. "+
		"Everything shares it: kube-apiserver + etcd (envtest; %s), the manager and the benchmark client.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04"), mc.cpus, mc.cpuModel, mc.memGiB, mc.kernel, r.goVersion, mc.control)
	p("**Setup.** %d SandboxNodes (Ready, accelerator tcg, allocatable %d cpus / %d MiB / %d sandboxes: %d slots for %d sandboxes), "+
		"each with a Lease in `%s` (leaseDurationSeconds %d). **No node agents run:** the benchmark process stands in for them, "+
		"renewing every Lease every %s; nothing boots VMs, so only placement (status.nodeName) is measured. "+
		"The manager is `bin/manager` as its own process with its default flags (see `bin/manager --help`) "+
		"plus `--leader-elect=false`%s.\n\n",
		c.nodes, nodeCPUs, nodeMemMiB, c.slots, c.nodes*c.slots, c.sandboxes, leaseNamespace, leaseDurationSeconds, c.leaseRenew,
		extraArgs(c.managerArgs))
	p("**Main run.** %d creators (client QPS 1000, burst 2000) create %d Sandboxes (`%s`, 1 cpu, 512 MiB) in `%s`; "+
		"the generated Sandbox informer (`pkg/client/informers`) timestamps the first event showing a status.nodeName. "+
		"`placement/latency` is that time minus the start of the sandbox's Create() call (p50 and p99 over all %d; "+
		"a sandbox not placed within %s counts as the deadline). `placement/all-placed` is the first Create() start to the last placement seen. "+
		"`placement/manager-peak-rss` is the manager's VmHWM from /proc at the end of the run.\n\n",
		c.creators, c.sandboxes, image, benchNamespace, c.sandboxes, c.timeout)
	p("**Baselines, same run.** Latency: before the manager starts, %d Sandboxes with spec.state Stopped are created in `%s` the same way "+
		"and timed from Create() start to the informer's ADDED event, i.e. the API server's own create→watch latency (p50 %s, p99 %s); "+
		"they are deleted before the manager starts. All-placed: the time the client took to create all %d Sandboxes in the main run. "+
		"RSS: the manager's VmRSS 2 s after its workers started, with the nodes but no Sandboxes in its cache.\n\n",
		r.base.n, baselineNamespace, ms(r.base.p50), ms(r.base.p99), c.sandboxes)
	p("**Outcome.** Placed %d of %d; at most %d on one node (%s; fewest %d), %s. p50 %s, p99 %s, max %s; all placed after %s%s. "+
		"Manager RSS idle %.1f MiB, peak %.1f MiB.\n\n",
		m.placed, m.n, maxN, node, r.minPerNode(), overcommitVerdict(maxN, c.slots),
		ms(quantile(m.lat, 0.5)), ms(quantile(m.lat, 0.99)), ms(quantile(m.lat, 1)), m.allPlaced.Round(time.Millisecond),
		map[bool]string{true: " (timed out)", false: ""}[m.timedOut], r.idle.rssMiB, r.end.hwmMiB)
	p("**Goals.** All %d placed within %s: **%s** (%s). p99 place latency ≤ %s: **%s** (%s).\n\n",
		c.sandboxes, goalAllPlaced, yesNo(allOK), m.allPlaced.Round(time.Millisecond), goalP99, yesNo(p99OK), ms(quantile(m.lat, 0.99)))
	p("One run, one sample per number: on a 2-CPU machine everything competes for the CPUs, so other load on the machine " +
		"(the CPU line below says how much there was) moves the results by tens of percent between runs.\n\n")
	p("Manager diagnostics (its metrics endpoint and log, counters over the main run):\n\n")
	for _, l := range r.diagnostics() {
		p("- %s\n", l)
	}
	p("\n")
	return b.String()
}

// apiLatencies summarises the API server's mean request latency for
// Sandbox and Event writes between two scrapes.
func apiLatencies(before, after *metricsDump) string {
	type key struct{ verb, resource, sub string }
	sum, cnt := map[key]float64{}, map[key]float64{}
	for _, d := range []struct {
		m    *metricsDump
		sign float64
	}{{after, 1}, {before, -1}} {
		for _, s := range d.m.samples {
			k := key{s.labels["verb"], s.labels["resource"], s.labels["subresource"]}
			if k.resource != "sandboxes" && k.resource != "events" {
				continue
			}
			switch s.name {
			case "apiserver_request_duration_seconds_sum":
				sum[k] += d.sign * s.value
			case "apiserver_request_duration_seconds_count":
				cnt[k] += d.sign * s.value
			}
		}
	}
	var keys []key
	for k, n := range cnt {
		if n >= 1 && k.verb != "WATCH" {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b key) int { return cmp.Compare(cnt[b], cnt[a]) })
	var out []string
	for _, k := range keys {
		r := k.resource
		if k.sub != "" {
			r += "/" + k.sub
		}
		out = append(out, fmt.Sprintf("%s %s ×%.0f %.1f ms", k.verb, r, cnt[k], 1000*sum[k]/cnt[k]))
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, "; ")
}

func extraArgs(a []string) string {
	if len(a) == 0 {
		return ""
	}
	return " `" + strings.Join(a, " ") + "`"
}
