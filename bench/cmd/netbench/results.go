package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/microvm-dev/sandbox-operator/bench/internal/results"
	"github.com/microvm-dev/sandbox-operator/bench/internal/stats"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// resultPrefix starts the names of this tool's entries; a run replaces
// those and keeps every other.
const resultPrefix = "net: "

// This tool's section of results.md.
const (
	netBegin = "<!-- net:begin -->"
	netEnd   = "<!-- net:end -->"
)

type report struct {
	b                                *bench
	out, base, in                    stats.Summary
	outSink, baseSink, inSink        stats.Summary
	connGuest, connHost              stats.Summary
	outName, inName, connName, sizeS string
}

func (b *bench) report() *report {
	size := fmt.Sprintf("%d MiB", b.cfg.mib)
	return &report{b: b,
		out: stats.Of(b.out), base: stats.Of(b.base), in: stats.Of(b.in),
		outSink: stats.Of(b.outSink), baseSink: stats.Of(b.baseSink), inSink: stats.Of(b.inSink),
		connGuest: stats.Of(b.connGuest), connHost: stats.Of(b.connHost),
		outName:  resultPrefix + "guest→host TCP " + size + " throughput",
		inName:   resultPrefix + "host→guest TCP " + size + " throughput (published port)",
		connName: resultPrefix + "guest TCP connect+echo",
		sizeS:    size,
	}
}

// entries are this tool's rows. Every throughput is timed by the host's
// clock (the guest's can drift from it under load, see clockNote): the
// guest→host row and its baseline by the host sink (accept → EOF), the
// host→guest row and its baseline by the host sender (dial → the count).
// For throughputs `ratio` is median / baseline as for every row (the
// guest's share of the host's own loopback throughput: higher is better),
// and `p99` is the slow tail (stats.LowTail), as accessbench reports its
// copies.
func (r *report) entries() []results.Entry {
	b := r.b
	tp := func(name string, s, base stats.Summary, samples []float64, what string) results.Entry {
		return results.Entry{Name: name, Unit: "MiB/s", Median: stats.Round(s.Median, 1), P99: stats.Round(stats.LowTail(samples), 1),
			Baseline: stats.Round(base.Median, 1), Ratio: stats.Ratio(s.Median, base.Median), Command: b.cfg.command + " # " + what}
	}
	size := fmt.Sprint(b.cfg.mib << 20)
	out := []results.Entry{
		tp(r.outName, r.outSink, r.baseSink, b.outSink, "guest: nettool send 10.0.2.2:SINKPORT "+size+
			"; baseline: host: nettool send 127.0.0.1:SINKPORT "+size+"; timed by the host sink"),
	}
	if b.cfg.inbound {
		out = append(out, tp(r.inName, r.in, r.base, b.in, "host: nettool send 127.0.0.1:PUBLISHEDPORT "+size+
			" to guest: nettool sink 0.0.0.0:5201; baseline: host: nettool send 127.0.0.1:SINKPORT "+size+"; timed by the host sender"))
	}
	perExec := fmt.Sprint(b.cfg.connectsPerExec)
	return append(out, results.Entry{Name: r.connName, Unit: "ms",
		Median: stats.Round(r.connGuest.Median, 3), P99: stats.Round(r.connGuest.P99, 3),
		Baseline: stats.Round(r.connHost.Median, 3), Ratio: stats.Ratio(r.connGuest.Median, r.connHost.Median),
		Command: b.cfg.command + " # guest: nettool connect 10.0.2.2:ECHOPORT " + perExec +
			"; baseline: host: nettool connect 127.0.0.1:ECHOPORT " + perExec + "; alternating"})
}

func (r *report) print() {
	fmt.Println()
	fmt.Println("== network benchmark ==")
	fmt.Printf("guest→host %s (host sink's clock): median %.1f MiB/s, slowest %.1f (%d runs); host→host %.1f MiB/s: host/guest %.1f×\n",
		r.sizeS, r.outSink.Median, r.outSink.Min, r.outSink.N, r.baseSink.Median, stats.Ratio(r.baseSink.Median, r.outSink.Median))
	if r.b.cfg.inbound {
		fmt.Printf("host→guest %s (published port, host sender's clock): median %.1f MiB/s, slowest %.1f (%d runs); host→host %.1f MiB/s: host/guest %.1f×\n",
			r.sizeS, r.in.Median, r.in.Min, r.in.N, r.base.Median, stats.Ratio(r.base.Median, r.in.Median))
	}
	fmt.Printf("connect+echo: guest median %.2f ms, p99 %.2f (%d); host median %.2f ms, p99 %.2f (%d): ratio %.1f\n",
		r.connGuest.Median, r.connGuest.P99, r.connGuest.N, r.connHost.Median, r.connHost.P99, r.connHost.N,
		stats.Ratio(r.connGuest.Median, r.connHost.Median))
	fmt.Println(r.clockNote())
	fmt.Println()
}

// clockNote compares the guest's clock with the host's over the
// measurements.
func (r *report) clockNote() string {
	b := r.b
	return fmt.Sprintf("Over the measurements the guest's clock (clock source %s, /proc/uptime) advanced %.2f s while the host's "+
		"advanced %.2f s: a rate of %.3f.", b.clocksource, b.guestClock, b.hostClock, stats.Ratio(b.guestClock, b.hostClock))
}

func (r *report) markdown() string {
	b, c := r.b, r.b.cfg
	var sb strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	p("\n## net: *: how measured\n\n")
	p("Run %s UTC by `%s` (`make bench` runs it after the access benchmark), %s in all. Machine: %s; load average "+
		"%s at the start, %s at the end (other work on the machine competes with the emulated guest).\n\n",
		b.started.UTC().Format("2006-01-02 15:04"), c.command, b.elapsed.Round(time.Second), b.machine, b.loadStart, b.loadEnd)
	p("**Setup.** One microVM (%s, 1 vCPU, %d MiB; ready %.1f s after QEMU started) built from the node agent's own components, "+
		"without the agent or a cluster: `internal/vmm` with a NIC (virtio-net, QEMU's stream netdev on `net.sock`) linked to a "+
		"per-VM `internal/netstack` whose policy `internal/netpolicy` compiled from a Sandbox `NetworkSpec` allowing TCP to "+
		"`127.0.0.1/32` only (default Deny) and publishing guest port %d on `127.0.0.1:<port>`; the initramfs of `bin/sandbox-init` "+
		"with the guest kernel's default and network modules; a root disk pulled through `internal/image` from an in-memory "+
		"registry (busybox from `internal/devimage` plus the benchmark's tool `/bin/nettool`, `bench/cmd/netbench/guesttool` built "+
		"with `CGO_ENABLED=0`); the Start message's Network as the agent sends it (10.0.2.15/24, gateway 10.0.2.2, MTU %d). "+
		"The guest's tool runs in exec sessions (`internal/guest/hostconn`). The guest reaches the host's servers on "+
		"127.0.0.1 at its gateway 10.0.2.2: the stack re-originates each allowed connection to 127.0.0.1 and splices it. "+
		"The host's sink and echo server run in this process; **the baselines run the same `nettool` binary as a host "+
		"process** against the same servers. Everything shares the machine's %d CPUs with the TCG guest.\n\n",
		c.accelerator, c.memoryMiB, b.g.bootTime.Seconds(), guestSinkPort, 1500, runtime.NumCPU())
	p("**Throughput.** `nettool send ADDR %d`: dial, write %s of zeros in 256 KiB writes, half-close, and wait for the sink's "+
		"8-byte count of what it received. The sender times dial start → count read; the sink times accept → EOF. %d rounds, "+
		"each one guest→host transfer and one host→host baseline (alternating which goes first), then %d host→guest transfers. "+
		"**Every row is timed by the host's clock** (the guest's clock drifts from it under load: see below): guest→host and "+
		"its baseline by the host's sink, host→guest and its baseline by the host's sender; the other side's clock is given as a "+
		"cross-check. In results.json `baseline` is the host→host median, `ratio` = median / baseline (the guest's share of the "+
		"host's own loopback throughput; higher is better) and `p99` the slow tail: the slowest run.\n\n",
		c.mib<<20, r.sizeS, c.runs, c.runs)
	p("- `%s`: guest `nettool send 10.0.2.2:<sink> …` → median **%.1f MiB/s** (runs: %s), against host `nettool send "+
		"127.0.0.1:<sink> …` → median **%.1f MiB/s** (runs: %s): the host is **%.1f×** faster. By the senders' clocks: guest "+
		"%.1f MiB/s (runs: %s), host %.1f.\n",
		r.outName, r.outSink.Median, list(b.outSink, 1), r.baseSink.Median, list(b.baseSink, 0), stats.Ratio(r.baseSink.Median, r.outSink.Median),
		r.out.Median, list(b.out, 1), r.base.Median)
	if c.inbound {
		p("- `%s`: the guest's `nettool sink 0.0.0.0:%d %d` serves; host `nettool send 127.0.0.1:<published> …`: the node "+
			"listener accepts, the stack dials 10.0.2.15:%d and splices → median **%.1f MiB/s** (runs: %s), against the "+
			"host→host baseline by the same clock, median **%.1f MiB/s** (runs: %s): the host is **%.1f×** faster. By the guest "+
			"sink's clock: median %.1f MiB/s (runs: %s).\n",
			r.inName, guestSinkPort, c.runs, guestSinkPort, r.in.Median, list(b.in, 1), r.base.Median, list(b.base, 0),
			stats.Ratio(r.base.Median, r.in.Median), r.inSink.Median, list(b.inSink, 1))
	}
	p("\n**Connection setup.** `nettool connect ADDR N`: N times one after the other, dial, write one byte, read it echoed, "+
		"close; each timed by the tool from dial start to the echo's read, so the guest's by the guest's clock. %d from the "+
		"guest to `10.0.2.2:<echo>` and %d from the host to `127.0.0.1:<echo>`, in alternating runs of %d (after 2 untimed of "+
		"each: the guest's ARP for its gateway, first runs). Through the stack a connect also waits for the stack's own dial of "+
		"127.0.0.1 (it completes the guest's handshake only once the host side is connected, so that a refused destination is "+
		"a reset). p99 is nearest-rank: with %d samples, the largest.\n\n",
		r.connGuest.N, r.connHost.N, c.connectsPerExec, r.connGuest.N)
	p("- `%s`: guest median **%.2f ms**, p99 %.2f ms (min %.2f); host median **%.2f ms**, p99 %.2f ms (min %.2f): ratio %.1f.\n\n",
		r.connName, r.connGuest.Median, r.connGuest.P99, r.connGuest.Min, r.connHost.Median, r.connHost.P99, r.connHost.Min,
		stats.Ratio(r.connGuest.Median, r.connHost.Median))
	p("**Clocks.** %s The guest's clock times its sends and its connects; a rate below 1 makes them look faster than they "+
		"were. (A guest sender's interval contains its sink's, so a guest sender faster than its host sink means the same.)\n\n",
		r.clockNote())
	p("The stack counted %d TCP flows allowed, %.1f MiB from the guest and %.1f MiB to it over the run. Under TCG every "+
		"guest instruction is emulated on a CPU shared with QEMU's I/O thread, the stack and the host side, so the guest's "+
		"numbers are bound by emulation; this run did not measure how the time divides between them. One run: on this noisy "+
		"2-CPU machine the numbers move by tens of percent between runs.\n",
		b.tcpFlows, float64(b.bytesOut)/(1<<20), float64(b.bytesIn)/(1<<20))
	return sb.String()
}

// list formats samples with the given decimals.
func list(v []float64, digits int) string {
	parts := make([]string, len(v))
	for i, s := range v {
		parts[i] = fmt.Sprintf("%.*f", digits, s)
	}
	return strings.Join(parts, ", ")
}

// write replaces this tool's entries in dir's results.json and its section
// of results.md.
func (r *report) write(dir string) error {
	return results.Write(dir, func(name string) bool { return strings.HasPrefix(name, resultPrefix) },
		r.entries(), netBegin, netEnd, r.markdown())
}

// machineString describes the machine and the emulator.
func machineString() string {
	model := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel, qemu := "?", "?"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command(vmm.DefaultQEMUBinary, "--version").Output(); err == nil {
		qemu, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	}
	return fmt.Sprintf("%d CPUs (%s), Linux %s, %s, %s", runtime.NumCPU(), model, kernel, runtime.Version(), qemu)
}

// loadAvg is the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}
