package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
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
	// Listen before QEMU starts: it connects as a client and fails to start
	// without a listener, and nothing the guest sends can be lost.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: p.Agent, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vmm: listening for the agent: %w", err)
	}
	logf, err := os.OpenFile(p.MonitorLog, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("vmm: %w", err)
	}
	defer func() { _ = logf.Close() }() // the child has its own copy

	// Not CommandContext: the VM must outlive ctx (and the agent).
	cmd := exec.Command(bin, QEMUArgs(cfg)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own session: no signal sent to the agent's process group (a ^C, a
	// systemd stop) reaches QEMU.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("vmm: starting %s: %w", bin, err)
	}
	vm := &qemuVM{cmd: cmd, paths: p, ln: ln, done: make(chan struct{})}
	go vm.wait()

	st, err := ProcessStartTime("/proc", cmd.Process.Pid)
	if err == nil {
		vm.proc = Process{PID: cmd.Process.Pid, StartTime: st}
		err = WriteProcess(p.Process, vm.proc)
	}
	if err != nil {
		_ = vm.Kill(context.Background())
		return nil, fmt.Errorf("vmm: recording QEMU's process: %w", err)
	}
	return vm, nil
}

type qemuVM struct {
	cmd   *exec.Cmd
	proc  Process
	paths Paths
	ln    *net.UnixListener

	done    chan struct{}
	exitErr error

	closeOnce sync.Once
}

func (v *qemuVM) wait() {
	v.exitErr = v.cmd.Wait()
	close(v.done)
	// Nothing will connect any more: wake a pending AcceptAgent.
	_ = v.Close()
}

func (v *qemuVM) Process() Process      { return v.proc }
func (v *qemuVM) Paths() Paths          { return v.paths }
func (v *qemuVM) Done() <-chan struct{} { return v.done }
func (v *qemuVM) ExitErr() error        { <-v.done; return v.exitErr }

func (v *qemuVM) Close() error {
	var err error
	v.closeOnce.Do(func() { err = v.ln.Close() })
	return err
}

// ErrExited is returned when the monitor exits while waiting for it.
var ErrExited = errors.New("vmm: the VM exited")

func (v *qemuVM) AcceptAgent(ctx context.Context) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := v.ln.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			select {
			case <-v.done:
				return nil, fmt.Errorf("%w before its agent connected: %v", ErrExited, v.exitErr)
			default:
			}
			return nil, fmt.Errorf("vmm: accepting the agent: %w", r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		// Unblock Accept by closing the listener: one agent per VM, so the
		// listener has no other use.
		_ = v.Close()
		if r := <-ch; r.c != nil {
			_ = r.c.Close()
		}
		return nil, ctx.Err()
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
	if err := v.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("vmm: killing QEMU: %w", err)
	}
	select {
	case <-v.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
