package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// bareRun is one bare QEMU boot.
type bareRun struct {
	// hello is vmm.QEMU.Start called → the guest agent's Hello read.
	hello time.Duration
	// started is how long Start itself took (fork/exec of QEMU, the process
	// record), the counterpart of status.timings.vmmStartedMillis.
	started time.Duration
	// disk is how long making the writable disk took (before the clock
	// starts), the counterpart of status.timings.rootfsReadyMillis.
	disk time.Duration
	mem  vmMemory
	pid  int
	args []string // QEMU's argv as /proc shows it
	err  error
}

// vms tracks the bare VMs alive, so that every one is killed at exit.
type vms struct {
	mu   sync.Mutex
	live map[vmm.VM]bool
}

func (v *vms) add(vm vmm.VM) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.live == nil {
		v.live = map[vmm.VM]bool{}
	}
	v.live[vm] = true
}

func (v *vms) kill(vm vmm.VM) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = vm.Kill(ctx)
	_ = vm.Close()
	v.mu.Lock()
	delete(v.live, vm)
	v.mu.Unlock()
}

func (v *vms) killAll() {
	v.mu.Lock()
	var all []vmm.VM
	for vm := range v.live {
		all = append(all, vm)
	}
	v.mu.Unlock()
	for _, vm := range all {
		v.kill(vm)
	}
}

// The node agent's writable layer for a Sandbox without spec.rootDisk
// (internal/nodeagent: planGuest, ensureDisks, boot): a sparse ext4 disk of
// the API's default size, serial "upper", named to sandbox-init by a kernel
// parameter. They are unexported there; sameCmdline catches a drift.
const (
	upperSerial  = "upper"
	upperParam   = "sandbox.upper" // initd's UpperParam
	upperDiskMiB = 4096            // spec.rootDisk.sizeMiB's default
)

// bareConfig is the vmm.Config the node agent builds for a Sandbox
// (internal/nodeagent boot): the same kernel, initramfs, root disk,
// writable disk, accelerator and resources. Nothing exports the agent's
// builder, so the benchmark compares the resulting QEMU command lines
// (compareCmdlines) to catch a drift.
func bareConfig(b *bench, runDir string) vmm.Config {
	cfg := vmm.Config{
		Kernel: b.kernel, Initrd: b.initrd,
		CPUs: 1, MemoryMiB: b.cfg.memoryMiB,
		Accel: vmm.Accel(b.cfg.accelerator), TSCkHz: b.tscKHz, RunDir: runDir,
		RootDisk: b.rootfs, Binary: vmm.DefaultQEMUBinary,
	}
	if b.cfg.bareUpper {
		cfg.Disks = []vmm.Disk{{Path: filepath.Join(runDir, upperSerial+".ext4"), Serial: upperSerial}}
		cfg.KernelArgs = []string{upperParam + "=" + upperSerial}
	}
	return cfg
}

// makeUpperDisk formats a fresh sparse ext4 file as the agent does for a
// new Sandbox's writable layer (lazy inode table and journal init, so it
// takes milliseconds and stays sparse).
func makeUpperDisk(ctx context.Context, path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(int64(upperDiskMiB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", path, err, out)
	}
	return nil
}

// runBare boots one bare VM: vmm.QEMU.Start, then the guest agent's Hello
// on the agent socket (the clock stops there), then what the node agent
// does after it (HelloAck, Start of the image's entrypoint) so that the VM
// idles in the same state as a Sandbox's before its memory is read. The VM
// is killed before runBare returns.
func runBare(ctx context.Context, b *bench, i int) (r bareRun) {
	runDir := filepath.Join(b.work, "bare", fmt.Sprint(i))
	if err := os.RemoveAll(runDir); err != nil {
		r.err = err
		return r
	}
	defer func() { _ = os.RemoveAll(runDir) }()
	cfg := bareConfig(b, runDir)
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		r.err = err
		return r
	}
	diskStart := time.Now()
	for _, d := range cfg.Disks {
		if err := makeUpperDisk(ctx, d.Path); err != nil {
			r.err = err
			return r
		}
	}
	r.disk = time.Since(diskStart)

	bootCtx, cancel := context.WithTimeout(ctx, b.cfg.bootTimeout)
	defer cancel()
	start := time.Now()
	vm, err := vmm.QEMU{}.Start(bootCtx, cfg)
	if err != nil {
		r.err = fmt.Errorf("failed to start QEMU: %w", err)
		return r
	}
	r.started = time.Since(start)
	b.bare.add(vm)
	defer b.bare.kill(vm)
	r.pid = vm.Process().PID

	conn, err := vm.DialAgent(bootCtx)
	if err != nil {
		r.err = fmt.Errorf("failed to reach the agent socket: %w%s", err, consoleHint(vm))
		return r
	}
	defer func() { _ = conn.Close() }()
	if d, ok := bootCtx.Deadline(); ok {
		_ = conn.SetReadDeadline(d)
	}
	f, err := protocol.ReadFrame(conn)
	if err != nil {
		r.err = fmt.Errorf("no Hello from the guest: %w%s", err, consoleHint(vm))
		return r
	}
	r.hello = time.Since(start)
	if f.Type != protocol.TypeHello {
		r.err = fmt.Errorf("the guest's first frame is %v, not Hello", f.Type)
		return r
	}
	if err := handshake(conn, f); err != nil {
		r.err = err
		return r
	}
	_ = conn.SetReadDeadline(time.Time{})
	// The guest sends heartbeats: keep reading so its port never fills up.
	go func() {
		for {
			if _, err := protocol.ReadFrame(conn); err != nil {
				return
			}
		}
	}()
	r.args, _ = cmdline(r.pid)

	select {
	case <-time.After(b.cfg.idle):
	case <-vm.Done():
		r.err = fmt.Errorf("QEMU exited while idle%s", consoleHint(vm))
		return r
	case <-ctx.Done():
		r.err = ctx.Err()
		return r
	}
	if r.mem, err = readVMMemory(r.pid, b.cfg.memoryMiB); err != nil {
		r.err = fmt.Errorf("failed to read QEMU's memory: %w", err)
	}
	return r
}

// handshake answers the guest's Hello as the node agent does: HelloAck,
// then Start of the image's entrypoint (what the agent derives for a
// Sandbox that sets no runtime options).
func handshake(conn net.Conn, hello protocol.Frame) error {
	var h protocol.Hello
	if err := protocol.Decode(hello, &h); err != nil {
		return err
	}
	version, err := protocol.Negotiate(protocol.Version, h.Version)
	if err != nil {
		return err
	}
	ack, err := protocol.Encode(0, protocol.TypeHelloAck, protocol.HelloAck{Version: version})
	if err != nil {
		return err
	}
	start, err := protocol.Encode(0, protocol.TypeStart, protocol.Start{Argv: idleEntrypoint, Env: imageEnv, Dir: "/"})
	if err != nil {
		return err
	}
	return errors.Join(protocol.WriteFrame(conn, ack), protocol.WriteFrame(conn, start))
}

// consoleHint is the end of the VM's console log, for errors.
func consoleHint(vm vmm.VM) string {
	b, err := os.ReadFile(vm.Paths().Console)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return "; console:\n" + string(b)
}
