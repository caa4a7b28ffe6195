package initd_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/microvm-dev/sandbox-operator/internal/guest/guesttest"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
	"github.com/microvm-dev/sandbox-operator/internal/vmm/vmtest"
)

// mainScript is the main process of the first boot: it prints what the
// Start configured, one "key=value" per line, then waits long enough for
// the test to restart "the agent" while it runs.
const mainScript = `
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
echo "host=$(hostname) etc=$(cat /etc/hostname) hosts=$(grep -c 'sbx-test' /etc/hosts)"
echo "nofile=$(ulimit -n)/$(ulimit -Hn)"
echo "pwd=$(pwd) home=$HOME env=$GREETING"
echo "text=$(cat /etc/greeting.txt) link=$(readlink /etc/link)"
echo "motd=$(tr '\n' '|' < /etc/motd)"
echo "files=$(cat /etc/app/app.conf) filesro=$(grep -c ' /etc/app tmpfs ro,' /proc/mounts)"
echo "scratch=$(grep -c ' /scratch tmpfs rw,.*size=8192k' /proc/mounts) data=$(grep -c ' /data ext4 rw' /proc/mounts)"
echo "netifs=$(ls /sys/class/net | tr '\n' ' ')lo=$(cat /sys/class/net/lo/flags)"
echo x > /scratch/f && echo x > /data/f && echo "volumes=writable"
test -d /srv/cache && echo "mkdir=ok"
greet world
echo upper-data > /srv/cache/persist.txt && echo "wrote=ok"
sync
echo "main=running"
sleep 3
exit 3
`

// initScript is the image's /sbin/init, which the second boot hands off
// to: it reports its PID, the processes its /proc shows and what the first
// boot left in the writable layer.
const initScript = `#!/bin/sh
echo "init: pid=$$ procs=$(ls /proc | grep -c '^[0-9]')"
echo "init: persisted=$(cat /srv/cache/persist.txt) text=$(cat /etc/greeting.txt)"
exit 4
`

// TestMicroVMRunsAConfiguredSandboxAcrossAgentRestarts boots real QEMU
// microVMs with this tree's sandbox-init as PID 1 and a busybox image on
// ext4 disks, as the node agent attaches them (by serial: root, upper,
// vol-0).
//
// Boot 1 sends a Start with every feature (user, host name, env, working
// directory, rlimits, a script, patches, tmpfs/disk/Files mounts, a
// writable layer on a disk) and checks each in the main process's console
// output; then it closes the agent connection and dials again, as a
// restarted node agent does: the guest says Hello again with the main
// process's PID, refuses a second Start, heartbeats and delivers the exit.
// The main process's output also reaches the agent on its stream; after
// its exit, exec sessions (stdin, a tty, signals, a timeout), file
// operations, heartbeat metrics and the drain are checked (checkSessions).
//
// Boot 2 reuses the disks and hands off to the image's init: it runs as
// PID 1 of its own PID namespace and finds what boot 1 wrote; after its
// exit a reconnection's Hello carries that exit.
//
// Boot 3 has a NIC (checkNetwork). Boots 1 and 2 have none: only lo, up.
func TestMicroVMRunsAConfiguredSandboxAcrossAgentRestarts(t *testing.T) {
	kernel, modules := vmtest.Prereqs(t, "mkfs.ext4", "debugfs", "busybox")
	work := t.TempDir()
	initrd := guesttest.Initrd(t, work, modules)
	rootDir := filepath.Join(work, "rootfs")
	guesttest.BusyboxRoot(t, rootDir, map[string]guesttest.File{
		"etc/motd":  {Content: "image-motd\n"},
		"sbin/init": {Content: initScript, Mode: 0o755},
		// Read as app, a file operation is denied.
		"etc/secret": {Content: "root only\n", Mode: 0o600},
	})
	disks := vmDisks{root: filepath.Join(work, "root.ext4"), upper: filepath.Join(work, "upper.ext4"), vol: filepath.Join(work, "vol.ext4")}
	guesttest.Ext4(t, rootDir, disks.root, 32)
	guesttest.Ext4(t, "", disks.upper, 48) // formatted by the host, empty; room for a 10 MiB file
	guesttest.Ext4(t, "", disks.vol, 8)

	t.Run("boot 1: a configured main process, and an agent restart while it runs", func(t *testing.T) {
		g := NewWithT(t)
		vm := bootVM(t, kernel, initrd, disks, nil)
		conn := dial(t, vm)
		hello := readHello(t, conn)
		g.Expect(hello.Main).To(BeNil(), "a fresh boot has no main process")
		send(t, conn, protocol.TypeHelloAck, protocol.HelloAck{Version: protocol.Version})
		send(t, conn, protocol.TypeStart, protocol.Start{
			Argv:     []string{"sh", "-c", mainScript},
			Env:      []string{"PATH=" + protocol.ScriptsDir + ":/bin", "GREETING=hi-env"},
			Dir:      "/home/app/work",
			User:     "app",
			Hostname: "sbx-test",
			Rlimits:  []protocol.Rlimit{{Resource: "nofile", Soft: 123, Hard: 456}},
			Scripts:  map[string]string{"greet": `echo "script=$1"`},
			Mounts: []protocol.Mount{
				{Path: "/scratch", TmpfsMiB: 8},
				{Path: "/data", Disk: "vol-0"},
				{Path: "/etc/app", Files: []protocol.File{{Name: "app.conf", Content: []byte("from-files")}}},
			},
			Patches: []protocol.Patch{
				{Type: protocol.PatchText, Path: "/etc/greeting.txt", Content: []byte("patched")},
				{Type: protocol.PatchMkdir, Path: "/srv/cache", Mode: 0o777},
				{Type: protocol.PatchSymlink, Path: "/etc/link", Target: "/etc/greeting.txt"},
				{Type: protocol.PatchAppend, Path: "/etc/motd", Content: []byte("appended\n")},
			},
		})
		console := waitConsole(t, vm, "main=running", 30*time.Second)
		for _, want := range []string{
			"uid=1000 gid=1000 groups=1000 10",
			"host=sbx-test etc=sbx-test hosts=1",
			"nofile=123/456",
			"pwd=/home/app/work home=/home/app env=hi-env",
			"text=patched link=/etc/greeting.txt",
			"motd=image-motd|appended|",
			"files=from-files filesro=1",
			"scratch=1 data=1",
			// No Network: no NIC, and lo is up (IFF_UP|IFF_LOOPBACK).
			"netifs=lo lo=0x9",
			"volumes=writable",
			"mkdir=ok",
			"script=world",
			"wrote=ok",
		} {
			g.Expect(console).To(ContainSubstring(want))
		}

		// The main process's output reaches the host too, on its stream.
		var mainOut []byte
		for !bytes.Contains(mainOut, []byte("main=running")) {
			if f := readFrame(t, conn, 10*time.Second); f.Stream == protocol.MainOutputStream && f.Type == protocol.TypeStdout {
				mainOut = append(mainOut, f.Payload...)
			}
		}
		g.Expect(string(mainOut)).To(ContainSubstring("uid=1000 gid=1000 groups=1000 10\n"))

		// The node agent restarts: its connection goes, a new one comes.
		restartAgent(t, vm, conn)
		conn = dial(t, vm)
		hello = readHello(t, conn)
		g.Expect(hello.Main).NotTo(BeNil(), "the guest reports its main process to the new agent")
		g.Expect(hello.Main.PID).To(BeNumerically(">", 1))
		g.Expect(hello.Main.Exit).To(BeNil(), "it still runs")
		send(t, conn, protocol.TypeHelloAck, protocol.HelloAck{Version: protocol.Version})
		send(t, conn, protocol.TypeStart, protocol.Start{Argv: []string{"true"}})
		var sawError, sawHeartbeat bool
		var exit *protocol.Exit
		for exit == nil {
			f := readFrame(t, conn, 20*time.Second)
			switch f.Type {
			case protocol.TypeError:
				var e protocol.Error
				g.Expect(protocol.Decode(f, &e)).To(Succeed())
				g.Expect(e.Message).To(ContainSubstring("already started"))
				sawError = true
			case protocol.TypeHeartbeat:
				sawHeartbeat = true
			case protocol.TypeExit:
				exit = &protocol.Exit{}
				g.Expect(protocol.Decode(f, exit)).To(Succeed())
			}
		}
		g.Expect(sawError).To(BeTrue(), "a second Start is refused")
		g.Expect(sawHeartbeat).To(BeTrue(), "heartbeats while the main process runs")
		g.Expect(*exit).To(Equal(protocol.Exit{Code: 3}))

		// The sandbox outlives its main process: exec sessions and file
		// operations, as its user, then the drain.
		checkSessions(t, conn)
		shutdown(t, vm, conn)
		console = waitConsole(t, vm, "powering off", time.Second)
		// The port supports the write deadline that keeps a write meant
		// for the old agent from reaching the new one before the Hello.
		g.Expect(console).NotTo(ContainSubstring("cannot interrupt a blocked write"))

		// What the main process wrote is on the upper disk.
		g.Expect(debugfsCat(t, disks.upper, "/upper/srv/cache/persist.txt")).To(Equal("upper-data\n"))
	})

	t.Run("boot 2: the init hand-off, on what boot 1 left", func(t *testing.T) {
		g := NewWithT(t)
		vm := bootVM(t, kernel, initrd, disks, nil)
		conn := dial(t, vm)
		g.Expect(readHello(t, conn).Main).To(BeNil())
		send(t, conn, protocol.TypeHelloAck, protocol.HelloAck{Version: protocol.Version})
		send(t, conn, protocol.TypeStart, protocol.Start{
			Init: &protocol.Init{Argv: []string{"auto"}, Env: []string{"PATH=/bin"}},
			// The writable layer holds this path from boot 1, the image does
			// not: no Replace needed.
			Patches: []protocol.Patch{{Type: protocol.PatchText, Path: "/etc/greeting.txt", Content: []byte("second")}},
		})
		exit := waitExit(t, conn)
		g.Expect(exit).To(Equal(protocol.Exit{Code: 4}))
		console := waitConsole(t, vm, "init: persisted=", 5*time.Second)
		g.Expect(console).To(MatchRegexp(`init: pid=1 procs=[1-4]\r?\n`), "PID 1 of its own namespace, with its own /proc")
		g.Expect(console).To(ContainSubstring("init: persisted=upper-data text=second"))

		// The exit happened on this connection; a new agent reads it in Hello.
		restartAgent(t, vm, conn)
		conn = dial(t, vm)
		hello := readHello(t, conn)
		g.Expect(hello.Main).NotTo(BeNil())
		g.Expect(hello.Main.Exit).To(Equal(&protocol.Exit{Code: 4}))
		send(t, conn, protocol.TypeHelloAck, protocol.HelloAck{Version: protocol.Version})
		shutdown(t, vm, conn)
	})

	t.Run("boot 3: a NIC, configured by the Start, reached through net.sock", func(t *testing.T) {
		checkNetwork(t, kernel, initrd, disks)
	})
}

// vmDisks are the test's disk images.
type vmDisks struct{ root, upper, vol string }

// bootVM starts a microVM with the disks attached as the node agent
// attaches them, and a NIC if network is set, and kills it when the test
// ends.
func bootVM(t *testing.T, kernel, initrd string, disks vmDisks, network *vmm.NetworkDevice) vmm.VM {
	t.Helper()
	tsc, err := vmm.HostTSCkHz()
	if err != nil {
		t.Fatal(err)
	}
	// A short run dir: unix socket paths are limited to 107 bytes.
	runDir, err := os.MkdirTemp("", "vm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(runDir) })
	accel := vmm.AccelTCG
	if os.Getenv("SANDBOX_TEST_ACCEL") == "kvm" {
		accel = vmm.AccelKVM
	}
	vm, err := vmm.QEMU{}.Start(context.Background(), vmm.Config{
		Kernel: kernel, Initrd: initrd, CPUs: 1, MemoryMiB: 192, Accel: accel, TSCkHz: tsc, RunDir: runDir,
		RootDisk:   disks.root,
		Disks:      []vmm.Disk{{Path: disks.upper, Serial: "upper"}, {Path: disks.vol, Serial: "vol-0"}},
		KernelArgs: []string{"sandbox.upper=upper"},
		Network:    network,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = vm.Kill(context.Background())
		_ = vm.Close()
		if t.Failed() {
			b, _ := os.ReadFile(vm.Paths().Console)
			t.Logf("console:\n%s", b)
		}
	})
	return vm
}

// dial connects to the guest agent as the node agent does.
func dial(t *testing.T, vm vmm.VM) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := vm.DialAgent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// restartAgent closes the agent connection as a dying node agent does and
// waits until the guest has noticed (its console says so) before the test
// dials again. A reconnection faster than the guest's reader wakes (QEMU
// handles a close and the next accept in microseconds; a TCG vCPU is slow)
// is invisible to the guest: virtio_console then reports the host as
// connected all along. The node agent pauses before it redials for that
// reason; the test waits for the evidence instead, and logs how long the
// guest took, which is what that pause must cover.
func restartAgent(t *testing.T, vm vmm.VM, conn net.Conn) {
	t.Helper()
	before, err := os.ReadFile(vm.Paths().Console)
	if err != nil {
		t.Fatal(err)
	}
	seen := bytes.Count(before, []byte(disconnectLog))
	closed := time.Now()
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := closed.Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(vm.Paths().Console)
		if bytes.Count(b, []byte(disconnectLog)) > seen {
			t.Logf("the guest noticed the agent's disconnection in %v", time.Since(closed).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the guest did not notice the agent's disconnection within 10 s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// disconnectLog is what sandbox-init logs when the agent goes.
const disconnectLog = "the host disconnected"

// readFrame reads one frame within timeout.
func readFrame(t *testing.T, conn net.Conn, timeout time.Duration) protocol.Frame {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	f, err := protocol.ReadFrame(conn)
	if err != nil {
		t.Fatalf("reading from the guest: %v", err)
	}
	return f
}

// readHello reads the guest's first frame on a connection, which must be
// a Hello (the boot takes a few seconds under TCG).
func readHello(t *testing.T, conn net.Conn) protocol.Hello {
	t.Helper()
	f := readFrame(t, conn, 30*time.Second)
	if f.Type != protocol.TypeHello {
		t.Fatalf("the first frame is of type %d, not Hello: %s", f.Type, f.Payload)
	}
	var h protocol.Hello
	if err := protocol.Decode(f, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// waitExit reads frames until the main process's TypeExit, failing on a
// TypeError.
func waitExit(t *testing.T, conn net.Conn) protocol.Exit {
	t.Helper()
	for {
		f := readFrame(t, conn, 30*time.Second)
		switch f.Type {
		case protocol.TypeError:
			t.Fatalf("the guest reports an error: %s", f.Payload)
		case protocol.TypeExit:
			var e protocol.Exit
			if err := protocol.Decode(f, &e); err != nil {
				t.Fatal(err)
			}
			return e
		}
	}
}

func send(t *testing.T, conn net.Conn, typ protocol.Type, msg any) {
	t.Helper()
	f, err := protocol.Encode(0, typ, msg)
	if err == nil {
		err = protocol.WriteFrame(conn, f)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// waitConsole waits until the console log contains want and returns it.
func waitConsole(t *testing.T, vm vmm.VM, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(vm.Paths().Console)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(want)) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the console within %v", want, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shutdown asks the guest to power off and waits for QEMU to exit cleanly
// (which syncs the writable layer).
func shutdown(t *testing.T, vm vmm.VM, conn net.Conn) {
	t.Helper()
	send(t, conn, protocol.TypeShutdown, protocol.Shutdown{GraceMillis: 1000})
	select {
	case <-vm.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("QEMU did not exit within 10 s of Shutdown")
	}
	if err := vm.ExitErr(); err != nil {
		t.Fatalf("QEMU exited with %v", err)
	}
}

// debugfsCat reads a file from an ext4 image without mounting it.
func debugfsCat(t *testing.T, image, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, image).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}
