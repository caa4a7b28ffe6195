package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultQEMUBinary is the QEMU executable QEMU uses when Config.Binary is
// empty.
const DefaultQEMUBinary = "qemu-system-x86_64"

// qmpWait bounds how long QEMU takes to create its QMP socket.
const qmpWait = 5 * time.Second

// QEMU starts QEMU microvm VMs.
type QEMU struct{}

var _ VMM = QEMU{}

// Start implements VMM.
func (QEMU) Start(ctx context.Context, cfg Config) (VM, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	bin := cfg.Binary
	if bin == "" {
		bin = DefaultQEMUBinary
	}
	p := PathsIn(cfg.RunDir)
	if err := ensureRunDir(p, cfg.RunDir); err != nil {
		return nil, fmt.Errorf("vmm: preparing %s: %w", cfg.RunDir, err)
	}
	logf, err := os.OpenFile(p.MonitorLog, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	defer func() { _ = logf.Close() }() // the child has its own copy

	// Not CommandContext: the VM must outlive ctx (and the agent).
	cmd := exec.Command(bin, QEMUArgs(cfg)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own session: no signal sent to the agent's process group (a ^C, a
	// systemd stop) reaches QEMU.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var cg *Cgroup
	if cfg.CgroupParent != "" {
		c, err := createCgroup(cfg.CgroupParent, filepath.Base(cfg.RunDir), cfg.CPUs, cfg.MemoryMiB)
		if err != nil {
			return nil, err
		}
		dir, err := os.Open(c.Path)
		if err != nil {
			removeCgroup(c)
			return nil, fmt.Errorf("vmm: opening cgroup %s: %w", c.Path, err)
		}
		defer func() { _ = dir.Close() }()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(dir.Fd())
		cg = &c
	}
	if err := cmd.Start(); err != nil {
		if cg != nil {
			removeCgroup(*cg)
		}
		return nil, fmt.Errorf("vmm: starting %s: %w", bin, err)
	}
	vm := &qemuVM{paths: p, done: make(chan struct{})}
	vm.signal = func(sig syscall.Signal) error { return cmd.Process.Signal(sig) }
	go func() {
		vm.exitErr = cmd.Wait()
		if cg != nil {
			removeCgroup(*cg)
		}
		close(vm.done)
	}()

	st, err := ProcessStartTime("/proc", cmd.Process.Pid)
	if err == nil {
		vm.proc = Process{PID: cmd.Process.Pid, StartTime: st, Cgroup: cg, Network: copyNetwork(cfg.Network)}
		err = WriteProcess(p.Process, vm.proc)
	}
	if err != nil {
		_ = vm.Kill(context.Background())
		return nil, fmt.Errorf("vmm: recording QEMU's process: %w", err)
	}
	return vm, nil
}

// Adopt implements VMM. The adopted QEMU is watched through a pidfd, which
// names the process itself (not its pid): the pid may be recycled once it
// exits, the pidfd is not.
func (QEMU) Adopt(runDir string) (VM, error) {
	p := PathsIn(runDir)
	rec, err := ReadProcess(p.Process)
	if err != nil {
		return nil, err
	}
	fd, err := unix.PidfdOpen(rec.PID, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil, ErrProcessGone
	}
	if err != nil {
		return nil, fmt.Errorf("vmm: opening a pidfd for %d: %w", rec.PID, err)
	}
	// Checked after the pidfd is open: if the start time matches now, the
	// pidfd refers to the recorded process and not to a later one.
	if alive, err := rec.Alive(); err != nil || !alive {
		_ = unix.Close(fd)
		if err != nil {
			return nil, err
		}
		return nil, ErrProcessGone
	}
	vm := &qemuVM{paths: p, proc: rec, done: make(chan struct{}), exitErr: ErrExitUnknown}
	vm.signal = func(sig syscall.Signal) error {
		return unix.PidfdSendSignal(fd, sig, nil, 0)
	}
	go func() {
		defer func() {
			_ = unix.Close(fd)
			if rec.Cgroup != nil {
				removeCgroup(*rec.Cgroup)
			}
		}()
		// A pidfd polls readable when its process exits.
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(pfd, -1)
			if err == nil && n > 0 {
				break
			}
			if err != nil && !errors.Is(err, unix.EINTR) {
				// Cannot watch it any more: fall back to the process record.
				for {
					if alive, _ := rec.Alive(); !alive {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				break
			}
		}
		close(vm.done)
	}()
	return vm, nil
}

type qemuVM struct {
	proc   Process
	paths  Paths
	signal func(syscall.Signal) error

	done    chan struct{}
	exitErr error
}

func (v *qemuVM) Process() Process      { return v.proc }
func (v *qemuVM) Paths() Paths          { return v.paths }
func (v *qemuVM) Done() <-chan struct{} { return v.done }
func (v *qemuVM) ExitErr() error        { <-v.done; return v.exitErr }
func (v *qemuVM) Close() error          { return nil }

// ErrExited is returned when the monitor exits while waiting for it.
var ErrExited = errors.New("vmm: the VM exited")

// agentDialRetry is the pause between attempts to reach the agent or
// network socket (QEMU creates them within milliseconds of starting).
const agentDialRetry = 5 * time.Millisecond

func (v *qemuVM) DialAgent(ctx context.Context) (net.Conn, error) {
	return v.dial(ctx, "agent", v.paths.Agent)
}

func (v *qemuVM) DialNet(ctx context.Context) (net.Conn, error) {
	if v.proc.Network == nil {
		return nil, ErrNoNetwork
	}
	return v.dial(ctx, "network", v.paths.Net)
}

// dial connects to the unix socket at path, which QEMU serves, retrying
// until QEMU listens on it, ctx ends or the VM exits.
func (v *qemuVM) dial(ctx context.Context, what, path string) (net.Conn, error) {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-v.done:
			return nil, fmt.Errorf("%w before its %s socket answered: %v", ErrExited, what, v.exitErr)
		case <-ctx.Done():
			return nil, fmt.Errorf("vmm: connecting to the %s socket: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(agentDialRetry):
		}
	}
}

func (v *qemuVM) qmp(ctx context.Context) (*QMP, error) {
	// wait=off: QEMU creates the socket early, but maybe not yet.
	deadline := time.Now().Add(qmpWait)
	for {
		q, err := DialQMP(ctx, v.paths.QMP)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return q, err
		}
		select {
		case <-v.done:
			return nil, ErrExited
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (v *qemuVM) PowerDown(ctx context.Context) error {
	q, err := v.qmp(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = q.Close() }()
	return q.SystemPowerdown(ctx)
}

func (v *qemuVM) Kill(ctx context.Context) error {
	select {
	case <-v.done:
		return nil
	default:
	}
	if q, err := DialQMP(ctx, v.paths.QMP); err == nil {
		_ = q.Quit(ctx)
		_ = q.Close()
		select {
		case <-v.done:
			return nil
		case <-time.After(time.Second):
		}
	}
	if err := v.signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("vmm: killing QEMU: %w", err)
	}
	select {
	case <-v.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// copyNetwork keeps the VM's record independent of the caller's Config.
func copyNetwork(n *NetworkDevice) *NetworkDevice {
	if n == nil {
		return nil
	}
	c := *n
	return &c
}
