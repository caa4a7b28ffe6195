package initd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microvm-dev/sandbox-operator/internal/guest/initramfs"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// portWait bounds the wait for the agent port after the modules are loaded
// (it appears ~10 ms after virtio_console under TCG).
const portWait = 10 * time.Second

// Main is sandbox-init's PID 1: it never returns.
func Main() {
	boot := bootNanos()
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "sandbox-init: "+format+"\n", args...)
	}
	s, err := run(boot, logf)
	if errors.Is(err, ErrShutdown) {
		stopProcesses(s, time.Duration(s.Shutdown.GraceMillis)*time.Millisecond, logf)
		logf("powering off")
	} else {
		logf("fatal: %v; powering off", err)
	}
	powerOff(logf)
}

// stopProcesses ends the sandbox's processes for a shutdown: SIGTERM to all
// of them, up to grace for the main process to end, then SIGKILL to what
// is left, so that the filesystems are synced with nothing writing.
func stopProcesses(s *Session, grace time.Duration, logf func(string, ...any)) {
	// kill(-1) signals every process but PID 1 (this one).
	_ = unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(grace)
	for s.MainRunning() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s.MainRunning() {
		logf("the main process outlived the %v grace period; killing everything", grace)
	}
	_ = unix.Kill(-1, unix.SIGKILL)
	// Let the kernel tear the killed processes down before the sync.
	time.Sleep(20 * time.Millisecond)
}

func run(boot int64, logf func(string, ...any)) (*Session, error) {
	if err := mountBasics(); err != nil {
		return nil, err
	}
	// 127.0.0.1 works in every sandbox, with a NIC or without.
	if err := bringUpLoopback(); err != nil {
		return nil, err
	}
	t0 := time.Now()
	n, err := loadModules(initramfs.ModulesLoadPath)
	if err != nil {
		return nil, err
	}
	logf("loaded %d modules in %v", n, time.Since(t0).Round(time.Millisecond))

	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return nil, err
	}
	params := ParseCmdline(string(cmdline))
	name := params[PortParam]
	if name == "" {
		return nil, fmt.Errorf("no %s= on the kernel command line", PortParam)
	}
	rootCfg, err := ParseRootConfig(params)
	if err != nil {
		return nil, err
	}

	// The workload's root is assembled while the host is greeted; a Start
	// waits for it. Without a root disk only a Start fails.
	root := sync.OnceValue(func() error { return prepareRoot(rootCfg, logf) })
	go func() {
		if err := root(); err != nil {
			logf("preparing the root filesystem: %v", err)
		}
	}()

	port, err := openPort(name, portWait)
	if err != nil {
		return nil, err
	}
	logf("agent port %s is %s", name, port.Name())
	defer func() { _ = port.Close() }()

	go watchPowerButton(logf)

	s := &Session{Port: port, BootNanos: boot, Logf: logf,
		Metrics: func() *protocol.Metrics { return readMetrics("/proc", upperMnt) },
	}
	s.RunMain = func(st protocol.Start) (MainProcess, error) {
		return startMain(root, lowerMnt, RootMnt, st, logf, s.MainOutput(protocol.TypeStdout), s.MainOutput(protocol.TypeStderr))
	}
	// Sessions run in the root: they wait for it like a Start does.
	s.RunExec = func(st protocol.Start, ex protocol.Exec) (*ExecProcess, error) {
		if err := root(); err != nil {
			return nil, fmt.Errorf("preparing the root filesystem: %w", err)
		}
		return startExec(RootMnt, st, ex, logf)
	}
	s.RunFile = func(st protocol.Start, req protocol.FileRequest) (*FileProcess, error) {
		if err := root(); err != nil {
			return nil, fmt.Errorf("preparing the root filesystem: %w", err)
		}
		return startFile(RootMnt, st, req, logf)
	}
	return s, s.Serve()
}

// bootNanos reads CLOCK_BOOTTIME: the guest's time since the kernel started.
func bootNanos() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

func mountBasics() error {
	for _, m := range []struct{ src, dst, fstype, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		// The kernel does not mount devtmpfs into an initramfs by itself
		// (DEVTMPFS_MOUNT applies to the root device only).
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
		// Ptys of tty exec sessions; mounted before the root binds /dev
		// (recursively), so the root's /dev/pts is this one.
		{"devpts", "/dev/pts", "devpts", "mode=0620,ptmxmode=0666"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	return nil
}

// loadModules loads each module listed in file, in order. A module already
// loaded (EEXIST) is fine.
func loadModules(file string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, fmt.Errorf("reading the module list: %w", err)
	}
	n := 0
	for _, p := range strings.Fields(string(b)) {
		f, err := os.Open(p)
		if err != nil {
			return n, fmt.Errorf("loading module: %w", err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		_ = f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return n, fmt.Errorf("loading module %s: %w", p, err)
		}
		n++
	}
	return n, nil
}

// openPort waits for the virtio-serial port called name to appear and
// opens its device node.
func openPort(name string, timeout time.Duration) (*os.File, error) {
	deadline := time.Now().Add(timeout)
	for {
		dev, err := FindPort("/sys", name)
		if err != nil {
			return nil, err
		}
		if dev != "" {
			f, err := os.OpenFile(filepath.Join("/dev", dev), os.O_RDWR, 0)
			if err == nil {
				return f, nil
			}
			if !os.IsNotExist(err) || time.Now().After(deadline) {
				return nil, fmt.Errorf("opening agent port %q: %w", name, err)
			}
		} else if time.Now().After(deadline) {
			return nil, fmt.Errorf("no virtio-serial port named %q after %v", name, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Input event constants from <linux/input-event-codes.h>.
const (
	evKey    = 0x01
	keyPower = 116
)

// watchPowerButton powers off when the ACPI power button is pressed, which
// is what QMP system_powerdown does on the microvm machine (button.ko and
// evdev.ko make it an input device). Without the modules it does nothing.
func watchPowerButton(logf func(string, ...any)) {
	names, _ := filepath.Glob("/sys/class/input/event*/device/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil || strings.TrimSpace(string(b)) != "Power Button" {
			continue
		}
		ev := filepath.Base(filepath.Dir(filepath.Dir(n)))
		f, err := os.Open(filepath.Join("/dev/input", ev))
		if err != nil {
			logf("opening the power button: %v", err)
			return
		}
		go func() {
			defer func() { _ = f.Close() }()
			r := bufio.NewReader(f)
			// struct input_event on 64-bit: timeval (16), type u16, code u16, value s32.
			var e [24]byte
			for {
				if _, err := io.ReadFull(r, e[:]); err != nil {
					logf("reading the power button: %v", err)
					return
				}
				typ, code, val := binary.LittleEndian.Uint16(e[16:]), binary.LittleEndian.Uint16(e[18:]), int32(binary.LittleEndian.Uint32(e[20:]))
				if typ == evKey && code == keyPower && val == 1 {
					logf("power button pressed; powering off")
					powerOff(logf)
				}
			}
		}()
		return
	}
}

// powerOff syncs the filesystems and powers the VM off; it does not return.
func powerOff(logf func(string, ...any)) {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		logf("power off: %v", err)
	}
	// Unreachable unless reboot failed; PID 1 must not exit.
	select {}
}
