package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/microvm-dev/sandbox-operator/bench/cmd/netbench/internal/tcpprobe"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// guestSinkPort is where the guest's sink listens for the inbound
// transfer (published on the node).
const guestSinkPort = 5201

// guestTransfer is a transfer the guest's sink reported.
type guestTransfer struct {
	tcpprobe.Transfer
	err error
}

// bench is one run's state.
type bench struct {
	cfg     config
	root    string
	work    string
	kernel  string
	initrd  string
	rootfs  string
	tool    string
	tscKHz  int
	started time.Time
	elapsed time.Duration
	machine string
	// loadStart and loadEnd are the load averages around the run.
	loadStart, loadEnd string

	g *guest
	// sinkAddr and echoAddr are the host servers on 127.0.0.1.
	sinkAddr, echoAddr string
	sunk               chan tcpprobe.Transfer

	// MiB/s, by the sender's clock: guest→host, host→host (the
	// baseline), host→guest through the published port.
	out, base, in []float64
	// MiB/s by the receiving sink's clock, accept → EOF: the cross-check
	// of the same transfers.
	outSink, baseSink, inSink []float64
	// Milliseconds per connect+echo: from the guest, from the host.
	connGuest, connHost []float64
	// clocksource is the guest kernel's clock source; guestClock and
	// hostClock are how far the guest's and the host's clocks advanced over
	// the measurements, seconds.
	clocksource           string
	guestClock, hostClock float64
	// The stack's counters at the end.
	tcpFlows, bytesOut, bytesIn uint64
}

func run(ctx context.Context, c config) (err error) {
	b := &bench{cfg: c, started: time.Now(), loadStart: loadAvg(), sunk: make(chan tcpprobe.Transfer, 16)}
	if b.root, err = filepath.Abs(c.root); err != nil {
		return err
	}
	if !filepath.IsAbs(c.out) {
		b.cfg.out = filepath.Join(b.root, c.out)
	}
	b.kernel = filepath.Join(b.root, "bin", "guest", "vmlinux")
	sandboxInit := filepath.Join(b.root, "bin", "sandbox-init")
	modules := filepath.Join(b.root, "bin", "guest", "modules")
	for _, p := range []string{b.kernel, sandboxInit, modules} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s is missing: run `make guest-kernel build`", p)
		}
	}
	if _, err := exec.LookPath(vmm.DefaultQEMUBinary); err != nil {
		return fmt.Errorf("%w (install qemu-system-x86: hack/setup.sh)", err)
	}
	if b.tscKHz, err = vmm.HostTSCkHz(); err != nil {
		return err
	}
	// Short: QEMU's unix socket paths must stay within 107 bytes.
	if b.work, err = os.MkdirTemp("", "nb-"); err != nil {
		return err
	}
	defer func() {
		if c.keepWork || err != nil {
			logf("kept the work dir %s (vm/console.log)", b.work)
			return
		}
		_ = os.RemoveAll(b.work)
	}()

	logf("building the guest tool, the root disk and the initramfs")
	if b.tool, err = buildTool(ctx, b.root, b.work); err != nil {
		return err
	}
	if b.rootfs, err = rootDisk(ctx, b.tool, filepath.Join(b.work, "images")); err != nil {
		return fmt.Errorf("failed to make the root disk: %w", err)
	}
	if b.initrd, err = initrd(sandboxInit, modules, filepath.Join(b.work, "initrd.cpio")); err != nil {
		return fmt.Errorf("failed to build the initramfs: %w", err)
	}

	stopServers, err := b.startServers()
	if err != nil {
		return err
	}
	defer stopServers()

	logf("booting the VM (%s)", c.accelerator)
	if b.g, err = bootGuest(ctx, b); err != nil {
		return err
	}
	defer b.g.close()
	logf("guest ready %v after QEMU started", b.g.bootTime.Round(time.Millisecond))

	// The guest's tool times with the guest's clock: say which it is.
	if out, err := b.g.exec(ctx, "cat", "/sys/devices/system/clocksource/clocksource0/current_clocksource"); err == nil {
		b.clocksource = strings.TrimSpace(string(out))
	}
	logf("the guest's clock source: %s", b.clocksource)
	if err := b.warmUp(ctx); err != nil {
		return fmt.Errorf("warm-up: %w%s", err, b.g.consoleTail())
	}
	guest0, host0, err := b.g.uptime(ctx)
	if err != nil {
		return err
	}
	if err := b.measureConnect(ctx); err != nil {
		return fmt.Errorf("connect: %w%s", err, b.g.consoleTail())
	}
	if err := b.measureThroughput(ctx); err != nil {
		return fmt.Errorf("throughput: %w%s", err, b.g.consoleTail())
	}
	guest1, host1, err := b.g.uptime(ctx)
	if err != nil {
		return err
	}
	b.guestClock, b.hostClock = guest1-guest0, host1.Sub(host0).Seconds()
	logf("over the measurements the guest's clock advanced %.2f s, the host's %.2f s", b.guestClock, b.hostClock)
	b.tcpFlows = b.g.stack.Stats.TCPAllowed.Load()
	b.bytesOut, b.bytesIn = b.g.stack.Stats.BytesOut.Load(), b.g.stack.Stats.BytesIn.Load()
	b.elapsed = time.Since(b.started)
	b.machine, b.loadEnd = machineString(), loadAvg()

	rep := b.report()
	rep.print()
	if err := rep.write(b.cfg.out); err != nil {
		return err
	}
	logf("wrote %s and %s", filepath.Join(b.cfg.out, "results.json"), filepath.Join(b.cfg.out, "results.md"))
	return nil
}

// startServers starts the host's sink and echo server on 127.0.0.1.
func (b *bench) startServers() (stop func(), err error) {
	sinkLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	echoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = sinkLn.Close()
		return nil, err
	}
	b.sinkAddr, b.echoAddr = sinkLn.Addr().String(), echoLn.Addr().String()
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = tcpprobe.Sink(sinkLn, func(t tcpprobe.Transfer) {
			select {
			case b.sunk <- t:
			default:
			}
		})
	})
	wg.Go(func() { _ = tcpprobe.Echo(echoLn) })
	return func() {
		_ = sinkLn.Close()
		_ = echoLn.Close()
		wg.Wait()
	}, nil
}

// guestAddr is addr (a host server on 127.0.0.1) as the guest reaches it:
// at its gateway, which stands for the node's loopback.
func guestAddr(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return net.JoinHostPort("10.0.2.2", port)
}

// warmUp makes the first connection of each path untimed (the guest's
// ARP for its gateway, page faults of the tool's first runs, the host
// tool's first start).
func (b *bench) warmUp(ctx context.Context) error {
	if _, err := b.guestConnect(ctx, 2); err != nil {
		return err
	}
	if _, err := b.hostConnect(ctx, 2); err != nil {
		return err
	}
	return nil
}

// measureConnect times connect+echo round trips from the guest and from
// the host in alternating rounds of cfg.connectsPerExec.
func (b *bench) measureConnect(ctx context.Context) error {
	rounds := (b.cfg.connects + b.cfg.connectsPerExec - 1) / b.cfg.connectsPerExec
	for i := range rounds {
		n := min(b.cfg.connectsPerExec, b.cfg.connects-i*b.cfg.connectsPerExec)
		guestFirst := i%2 == 0
		for k := range 2 {
			if (k == 0) == guestFirst {
				ms, err := b.guestConnect(ctx, n)
				if err != nil {
					return err
				}
				b.connGuest = append(b.connGuest, ms...)
			} else {
				ms, err := b.hostConnect(ctx, n)
				if err != nil {
					return err
				}
				b.connHost = append(b.connHost, ms...)
			}
		}
	}
	logf("connect+echo: %d from the guest, %d from the host", len(b.connGuest), len(b.connHost))
	return nil
}

func (b *bench) guestConnect(ctx context.Context, n int) ([]float64, error) {
	out, err := b.g.run(ctx, "connect", guestAddr(b.echoAddr), strconv.Itoa(n))
	if err != nil {
		return nil, err
	}
	return decodeMillis(out)
}

func (b *bench) hostConnect(ctx context.Context, n int) ([]float64, error) {
	out, err := b.hostTool(ctx, "connect", b.echoAddr, strconv.Itoa(n))
	if err != nil {
		return nil, err
	}
	return decodeMillis(out)
}

func decodeMillis(out []byte) ([]float64, error) {
	var r struct{ Millis []float64 }
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("nettool connect printed %q: %w", out, err)
	}
	return r.Millis, nil
}

// measureThroughput runs cfg.runs rounds of the guest→host transfer and
// its host→host baseline (alternating which goes first), then of the
// host→guest transfer through the published port.
func (b *bench) measureThroughput(ctx context.Context) error {
	size := strconv.FormatInt(int64(b.cfg.mib)<<20, 10)
	for i := range b.cfg.runs {
		for k := range 2 {
			if (k == 0) == (i%2 == 0) {
				out, err := b.g.run(ctx, "send", guestAddr(b.sinkAddr), size)
				if err != nil {
					return err
				}
				if err := b.record(out, &b.out, &b.outSink); err != nil {
					return err
				}
			} else {
				out, err := b.hostTool(ctx, "send", b.sinkAddr, size)
				if err != nil {
					return err
				}
				if err := b.record(out, &b.base, &b.baseSink); err != nil {
					return err
				}
			}
		}
		logf("round %d: guest→host %.1f MiB/s, host→host %.1f MiB/s", i+1, b.out[i], b.base[i])
	}
	if !b.cfg.inbound {
		return nil
	}
	sunk, err := b.g.startSink(ctx, b.cfg.runs)
	if err != nil {
		return err
	}
	for i := range b.cfg.runs {
		out, err := b.hostTool(ctx, "send", b.g.published, size)
		if err != nil {
			return err
		}
		t, err := decodeTransfer(out)
		if err != nil {
			return err
		}
		b.in = append(b.in, t.MiBps())
		select {
		case gt, ok := <-sunk:
			if !ok {
				return errors.New("the guest's sink ended early")
			}
			if gt.err != nil {
				return gt.err
			}
			b.inSink = append(b.inSink, gt.MiBps())
		case <-time.After(10 * time.Second):
			return errors.New("the guest's sink did not report a transfer")
		}
		logf("round %d: host→guest %.1f MiB/s", i+1, b.in[i])
	}
	return nil
}

// record appends a sender's transfer and the host sink's view of it.
func (b *bench) record(out []byte, sender, sink *[]float64) error {
	t, err := decodeTransfer(out)
	if err != nil {
		return err
	}
	*sender = append(*sender, t.MiBps())
	select {
	case s := <-b.sunk:
		*sink = append(*sink, s.MiBps())
	case <-time.After(10 * time.Second):
		return errors.New("the host's sink did not report the transfer")
	}
	return nil
}

func decodeTransfer(out []byte) (tcpprobe.Transfer, error) {
	var t tcpprobe.Transfer
	if err := json.Unmarshal(out, &t); err != nil {
		return t, fmt.Errorf("nettool send printed %q: %w", out, err)
	}
	return t, nil
}

// hostTool runs the same tool binary on the host.
func (b *bench) hostTool(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, b.tool, args...)
	var stderr []byte
	out, err := cmd.Output()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		stderr = ee.Stderr
	}
	if err != nil {
		return nil, fmt.Errorf("host: nettool %v: %w: %s", args, err, stderr)
	}
	return out, nil
}
