package vmm_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/microvm-dev/sandbox-operator/internal/guest/initd"
	"github.com/microvm-dev/sandbox-operator/internal/guest/initramfs"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
	"github.com/microvm-dev/sandbox-operator/internal/vmm/vmtest"
)

// buildInitrd compiles sandbox-init (static) and packs it with the default
// modules.
func buildInitrd(t *testing.T, dir, modules string) string {
	t.Helper()
	bin := filepath.Join(dir, "sandbox-init")
	// No -trimpath: the test then shares the build cache with go test.
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", bin, "../../cmd/sandbox-init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building sandbox-init: %v\n%s", err, out)
	}
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := initramfs.WriteFile(initrd, initramfs.Spec{Init: bin, KernelModulesDir: modules, Modules: initramfs.DefaultModules}); err != nil {
		t.Fatal(err)
	}
	return initrd
}

// consoleTail returns the last n lines of the VM's console log.
func consoleTail(paths vmm.Paths, n int) string {
	var out []string
	for _, f := range []string{paths.Console, paths.MonitorLog} {
		b, _ := os.ReadFile(f)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		out = append(out, fmt.Sprintf("--- last lines of %s:", f))
		out = append(out, lines[max(0, len(lines)-n):]...)
	}
	return strings.Join(out, "\n")
}

// TestBootMicroVM is the proof that the pieces fit: a real QEMU microvm
// boots Debian's cloud kernel under TCG with sandbox-init as PID 1, which
// greets the host over the virtio-serial agent port and powers the VM off
// when asked to.
func TestBootMicroVM(t *testing.T) {
	kernel, modules := vmtest.Prereqs(t)
	g := NewWithT(t)
	work := t.TempDir()
	initrd := buildInitrd(t, work, modules)

	// The boot's budget starts after the build, which can take longer than
	// the boot on a cold build cache. A boot takes ~3 s under TCG here; a
	// hang in the guest is what this bounds.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tsc, err := vmm.HostTSCkHz()
	g.Expect(err).NotTo(HaveOccurred())

	// Unix socket paths are limited to 107 bytes; t.TempDir() under a long
	// TMPDIR may exceed that, so the run dir is a short one of its own.
	runDir, err := os.MkdirTemp("", "vm")
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = os.RemoveAll(runDir) })

	// The VMM starts in its own cgroup where the host has a cgroup2
	// hierarchy (this machine has one, without the cpu and memory
	// controllers: the cgroup then groups QEMU without limits).
	cgParent := cgroupTestParent(t)

	start := time.Now()
	vm, err := vmm.QEMU{}.Start(ctx, vmm.Config{
		Kernel: kernel, Initrd: initrd, CPUs: 1, MemoryMiB: 128,
		Accel: testAccel(), TSCkHz: tsc, RunDir: runDir, CgroupParent: cgParent,
	})
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() {
		_ = vm.Kill(context.Background())
		_ = vm.Close()
		if t.Failed() {
			t.Log(consoleTail(vm.Paths(), 40))
		}
	})

	rec, err := vmm.ReadProcess(vm.Paths().Process)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(rec).To(Equal(vm.Process()))
	g.Expect(rec.Alive()).To(BeTrue(), "the recorded pid and start time identify the running QEMU")
	if cgParent != "" {
		g.Expect(rec.Cgroup).NotTo(BeNil())
		g.Expect(rec.Cgroup.Path).To(Equal(filepath.Join(cgParent, filepath.Base(runDir))))
		procs, err := os.ReadFile(filepath.Join(rec.Cgroup.Path, "cgroup.procs"))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(strings.Fields(string(procs))).To(ContainElement(fmt.Sprint(rec.PID)), "QEMU was started straight into its cgroup")
		t.Logf("QEMU runs in cgroup %s (limits set: %v)", rec.Cgroup.Path, rec.Cgroup.Limited)
	}

	conn, err := vm.DialAgent(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = conn.Close() }()
	// Frames start when the guest opens its port; bound the wait by ctx.
	if d, ok := ctx.Deadline(); ok {
		g.Expect(conn.SetReadDeadline(d)).To(Succeed())
	}

	f, err := protocol.ReadFrame(conn)
	g.Expect(err).NotTo(HaveOccurred(), "no Hello from the guest")
	helloAfter := time.Since(start)
	g.Expect(f.Type).To(Equal(protocol.TypeHello))
	var hello protocol.Hello
	g.Expect(protocol.Decode(f, &hello)).To(Succeed())
	g.Expect(hello.Version).To(Equal(protocol.Version))
	g.Expect(hello.Agent).To(Equal(initd.AgentName))
	g.Expect(hello.BootNanos).To(BeNumerically(">", 0))
	t.Logf("QEMU start → Hello: %v (guest CLOCK_BOOTTIME at sandbox-init start: %v)",
		helloAfter.Round(time.Millisecond), time.Duration(hello.BootNanos).Round(time.Millisecond))

	version, err := protocol.Negotiate(protocol.Version, hello.Version)
	g.Expect(err).NotTo(HaveOccurred())
	ack, err := protocol.Encode(0, protocol.TypeHelloAck, protocol.HelloAck{Version: version})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(protocol.WriteFrame(conn, ack)).To(Succeed())

	// Another process can adopt the running VM from its run dir: the same
	// process, alive; its Done fires when the VM exits below.
	adopted, err := vmm.QEMU{}.Adopt(runDir)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(adopted.Process()).To(Equal(rec))
	g.Expect(adopted.Done()).NotTo(BeClosed())
	// Without a Config.Network the VM has no NIC and no net.sock.
	g.Expect(vm.Paths().Net).NotTo(BeAnExistingFile())
	for _, v := range []vmm.VM{vm, adopted} {
		_, err := v.DialNet(ctx)
		g.Expect(err).To(MatchError(vmm.ErrNoNetwork))
	}

	// QMP answers while the guest runs.
	q, err := vmm.DialQMP(ctx, vm.Paths().QMP)
	g.Expect(err).NotTo(HaveOccurred())
	st, err := q.QueryStatus(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(st).To(Equal(vmm.Status{Status: "running", Running: true}))
	g.Expect(q.Close()).To(Succeed())

	shutdown, err := protocol.Encode(0, protocol.TypeShutdown, protocol.Shutdown{GraceMillis: 1000})
	g.Expect(err).NotTo(HaveOccurred())
	sent := time.Now()
	g.Expect(protocol.WriteFrame(conn, shutdown)).To(Succeed())
	// Keep the connection open until QEMU exits: closing right after a
	// write can lose it.
	select {
	case <-vm.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("QEMU did not exit within 5 s of Shutdown")
	}
	t.Logf("Shutdown → QEMU exit: %v", time.Since(sent).Round(time.Millisecond))
	g.Expect(vm.ExitErr()).NotTo(HaveOccurred(), "QEMU exits cleanly after a guest power-off")
	g.Eventually(adopted.Done(), time.Second).Should(BeClosed(), "the adopter sees the exit through its pidfd")
	g.Expect(adopted.ExitErr()).To(MatchError(vmm.ErrExitUnknown))
	_, err = vmm.QEMU{}.Adopt(runDir)
	g.Expect(err).To(MatchError(vmm.ErrProcessGone), "a VM that exited cannot be adopted")

	console, err := os.ReadFile(vm.Paths().Console)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(bytes.Contains(console, []byte("sandbox-init: powering off"))).To(BeTrue(), "console:\n%s", console)
	g.Expect(rec.Alive()).To(BeFalse())
	if cgParent != "" {
		g.Eventually(rec.Cgroup.Path).ShouldNot(BeADirectory(), "the VM's cgroup is removed after QEMU exits")
	}
}

// cgroupTestParent creates a cgroup for the test under the host's cgroup2
// mount, or returns "" (with a log line) when the host has none or it is
// not writable.
func cgroupTestParent(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Logf("no cgroup test: %v", err)
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		fields := strings.Fields(pre)
		if len(fields) < 5 {
			continue
		}
		dir, err := os.MkdirTemp(fields[4], "sandbox-vmm-test-")
		if err != nil {
			t.Logf("no cgroup test: %v", err)
			return ""
		}
		t.Cleanup(func() { _ = os.Remove(dir) })
		return dir
	}
	t.Log("no cgroup test: the host has no cgroup2 mount")
	return ""
}

// testAccel is TCG unless SANDBOX_TEST_ACCEL=kvm asks for KVM.
func testAccel() vmm.Accel {
	if os.Getenv("SANDBOX_TEST_ACCEL") == "kvm" {
		return vmm.AccelKVM
	}
	return vmm.AccelTCG
}
