package main

import (
	"fmt"
	"strings"
	"time"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/bench/internal/results"
	"github.com/microvm-dev/sandbox-operator/bench/internal/stats"
)

// goalRatio is the goal for apply→Running over a bare boot.
const goalRatio = 1.15

// resultPrefix starts the name of every entry this tool writes; a run
// replaces those entries and keeps every other.
const resultPrefix = "boot/"

// entry is one figure of bench/results.json.
type entry = results.Entry

// stat is a sample set's median and p99.
type stat struct {
	n           int
	median, p99 float64
	min, max    float64
}

// summarize is stats.Of in this tool's field names.
func summarize(v []float64) stat {
	sm := stats.Of(v)
	return stat{n: sm.N, median: sm.Median, p99: sm.P99, min: sm.Min, max: sm.Max}
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// stage is one field of status.timings.
type stage struct {
	name  string // entry name suffix
	field string // JSON name in status.timings
	get   func(sandboxv1alpha1.Timings) *int64
}

var stages = []stage{
	{"scheduled", "scheduledMillis", func(t sandboxv1alpha1.Timings) *int64 { return t.ScheduledMillis }},
	{"image-pulled", "imagePulledMillis", func(t sandboxv1alpha1.Timings) *int64 { return t.ImagePulledMillis }},
	{"rootfs-ready", "rootfsReadyMillis", func(t sandboxv1alpha1.Timings) *int64 { return t.RootfsReadyMillis }},
	{"vmm-started", "vmmStartedMillis", func(t sandboxv1alpha1.Timings) *int64 { return t.VMMStartedMillis }},
	{"guest-ready", "guestReadyMillis", func(t sandboxv1alpha1.Timings) *int64 { return t.GuestReadyMillis }},
}

// report is what one run measured, summarised.
type report struct {
	b *bench

	total, bareHello, bareStarted stat
	bareDisk                      stat
	pairRatio                     stat // operator / bare within each pair
	// outside is apply→Running minus guestReadyMillis in each run: the
	// operator's own time around the guest's boot, free of the boot's
	// noise.
	outside                  stat
	stageStats               map[string]stat
	stageSeen                map[string]int // runs that recorded the stage
	other                    stat           // total − disjoint stages
	placed, pulling, booting stat           // watch milestones
	vmRunning                stat
	opRSS, bareRSS           stat
	opBeyond, bareBeyond     stat
	opGuest, bareGuest       stat
	opTCG, bareTCG           stat
	guestRAMFound            bool
	agentBefore, agentIdle   stat
	agentGrowth              stat
	deleted                  stat
}

func (b *bench) report() *report {
	r := &report{b: b, stageStats: map[string]stat{}, stageSeen: map[string]int{}}
	var total, placed, pulling, booting, vmRunning, other, opRSS, opBeyond, opGuest, opTCG,
		agentBefore, agentIdle, agentGrowth, deleted []float64
	stageVals := map[string][]float64{}
	r.guestRAMFound = true
	for _, o := range b.ops {
		total = append(total, msOf(o.total))
		for _, m := range []struct {
			d   time.Duration
			out *[]float64
		}{{o.placed, &placed}, {o.pulling, &pulling}, {o.booting, &booting}, {o.vmRunning, &vmRunning}} {
			if m.d > 0 {
				*m.out = append(*m.out, msOf(m.d))
			}
		}
		rest := msOf(o.total)
		for _, s := range stages {
			v := s.get(o.timings)
			if v == nil {
				continue
			}
			r.stageSeen[s.name]++
			stageVals[s.name] = append(stageVals[s.name], float64(*v))
			// vmmStarted is part of guestReady (both count from the
			// moment before the VMM starts): only the disjoint stages are
			// subtracted.
			if s.name != "vmm-started" {
				rest -= float64(*v)
			}
		}
		other = append(other, rest)
		opRSS = append(opRSS, o.mem.rssMiB)
		opBeyond = append(opBeyond, o.mem.beyondGuestMiB())
		opGuest = append(opGuest, o.mem.guestRAMMiB)
		opTCG = append(opTCG, o.mem.tcgMiB)
		r.guestRAMFound = r.guestRAMFound && o.mem.guestRAMFound
		agentBefore = append(agentBefore, o.agentRSSBefore)
		agentIdle = append(agentIdle, o.agentRSSIdle)
		agentGrowth = append(agentGrowth, o.agentRSSIdle-o.agentRSSBefore)
		deleted = append(deleted, msOf(o.deleted))
	}
	var disk []float64
	var hello, started, bareRSS, bareBeyond, bareGuest, bareTCG []float64
	for _, br := range b.bares {
		hello = append(hello, msOf(br.hello))
		started = append(started, msOf(br.started))
		disk = append(disk, msOf(br.disk))
		bareRSS = append(bareRSS, br.mem.rssMiB)
		bareBeyond = append(bareBeyond, br.mem.beyondGuestMiB())
		bareGuest = append(bareGuest, br.mem.guestRAMMiB)
		bareTCG = append(bareTCG, br.mem.tcgMiB)
		r.guestRAMFound = r.guestRAMFound && br.mem.guestRAMFound
	}
	r.total, r.bareHello, r.bareStarted, r.bareDisk = summarize(total), summarize(hello), summarize(started), summarize(disk)
	for name, v := range stageVals {
		r.stageStats[name] = summarize(v)
	}
	r.other = summarize(other)
	r.placed, r.pulling, r.booting, r.vmRunning = summarize(placed), summarize(pulling), summarize(booting), summarize(vmRunning)
	r.opRSS, r.bareRSS = summarize(opRSS), summarize(bareRSS)
	r.opBeyond, r.bareBeyond = summarize(opBeyond), summarize(bareBeyond)
	r.opGuest, r.bareGuest = summarize(opGuest), summarize(bareGuest)
	r.opTCG, r.bareTCG = summarize(opTCG), summarize(bareTCG)
	r.agentBefore, r.agentIdle, r.agentGrowth = summarize(agentBefore), summarize(agentIdle), summarize(agentGrowth)
	r.deleted = summarize(deleted)
	var pairs []float64
	for _, p := range b.pairs {
		if p.op.err == nil && p.bare.err == nil && p.bare.hello > 0 {
			pairs = append(pairs, msOf(p.op.total)/msOf(p.bare.hello))
		}
	}
	r.pairRatio = summarize(pairs)
	var outside []float64
	for _, o := range b.ops {
		if g := o.timings.GuestReadyMillis; g != nil {
			outside = append(outside, msOf(o.total)-float64(*g))
		}
	}
	r.outside = summarize(outside)
	return r
}

func (r *report) entries() []entry {
	cmd := r.b.cfg.command
	base := r.bareHello.median
	ms := func(name string, s stat, baseline float64) entry {
		return entry{Name: name, Unit: "ms", Median: stats.Round(s.median, 1), P99: stats.Round(s.p99, 1),
			Baseline: stats.Round(baseline, 1), Ratio: stats.Ratio(s.median, baseline), Command: cmd}
	}
	mib := func(name string, s stat, baseline float64) entry {
		return entry{Name: name, Unit: "MiB", Median: stats.Round(s.median, 1), P99: stats.Round(s.p99, 1),
			Baseline: stats.Round(baseline, 1), Ratio: stats.Ratio(s.median, baseline), Command: cmd}
	}
	out := []entry{ms("boot/apply-to-running", r.total, base)}
	for _, s := range stages {
		if r.stageSeen[s.name] == 0 {
			continue // not recorded by the agent: see the notes in results.md
		}
		baseline := base
		switch {
		case s.name == "vmm-started":
			baseline = r.bareStarted.median
		case s.name == "rootfs-ready" && r.b.cfg.bareUpper:
			baseline = r.bareDisk.median
		}
		out = append(out, ms("boot/stage-"+s.name, r.stageStats[s.name], baseline))
	}
	out = append(out,
		ms("boot/stage-other", r.other, base),
		ms("boot/cold-first-run", summarize([]float64{msOf(r.b.warmup.total)}), base),
		mib("boot/qemu-rss-idle", r.opRSS, r.bareRSS.median),
	)
	if r.guestRAMFound {
		out = append(out, mib("boot/qemu-rss-beyond-guest-ram", r.opBeyond, r.bareBeyond.median))
	}
	out = append(out, mib("boot/agent-rss-one-sandbox", r.agentIdle, r.agentBefore.median))
	return out
}

func (r *report) goalMet() bool { return stats.Ratio(r.total.median, r.bareHello.median) <= goalRatio }

func yesNo(b bool) string {
	if b {
		return "met"
	}
	return "NOT met"
}

func (r *report) print() {
	fmt.Println()
	fmt.Println("== boot benchmark ==")
	fmt.Printf("apply → Running: median %.0f ms, p99 %.0f ms (%d runs)\n", r.total.median, r.total.p99, r.total.n)
	fmt.Printf("bare QEMU Start → Hello: median %.0f ms, p99 %.0f ms (%d runs)\n", r.bareHello.median, r.bareHello.p99, r.bareHello.n)
	fmt.Printf("ratio %.3f (goal ≤ %.2f: %s); median of per-pair ratios %.3f; fastest/fastest %.3f\n",
		stats.Ratio(r.total.median, r.bareHello.median), goalRatio, yesNo(r.goalMet()), r.pairRatio.median, stats.Ratio(r.total.min, r.bareHello.min))
	fmt.Printf("stages (median ms): %s\n", r.stageLine())
	fmt.Printf("apply→Running minus guestReadyMillis: median %.0f ms (1 + that / bare median = %.3f)\n",
		r.outside.median, 1+r.outside.median/r.bareHello.median)
	fmt.Printf("cold first run (image pull + ext4): %.0f ms\n", msOf(r.b.warmup.total))
	fmt.Printf("idle QEMU VmRSS: sandbox %.1f MiB, bare %.1f MiB (guest RAM %d MiB; touched: sandbox %.1f, bare %.1f; TCG cache %.1f / %.1f)\n",
		r.opRSS.median, r.bareRSS.median, r.b.cfg.memoryMiB, r.opGuest.median, r.bareGuest.median, r.opTCG.median, r.bareTCG.median)
	fmt.Printf("node agent VmRSS: %.1f MiB before a Sandbox, %.1f MiB with one idle (growth median %.1f MiB)\n",
		r.agentBefore.median, r.agentIdle.median, r.agentGrowth.median)
	for _, f := range r.b.failures {
		fmt.Println("failed: " + f)
	}
	fmt.Println()
}

func (r *report) stageLine() string {
	var parts []string
	for _, s := range stages {
		if r.stageSeen[s.name] == 0 {
			parts = append(parts, s.field+" not recorded")
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.0f", s.field, r.stageStats[s.name].median))
	}
	parts = append(parts, fmt.Sprintf("other %.0f", r.other.median))
	return strings.Join(parts, ", ")
}

// write replaces this tool's entries in dir's results.json and its
// section of results.md.
func (r *report) write(dir string) error {
	return results.Write(dir, func(name string) bool { return strings.HasPrefix(name, resultPrefix) }, r.entries(), bootBegin, bootEnd, r.markdown())
}

// This tool's section of results.md.
const (
	bootBegin = "<!-- boot:begin -->"
	bootEnd   = "<!-- boot:end -->"
)
