package nodeagent

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// Host is what the agent learned about its machine.
type Host struct {
	CPUs      int32
	MemoryMiB int64
	// Accelerator is kvm when /dev/kvm opens read-write, else tcg when
	// emulation is allowed, else "" (the node cannot run VMs).
	Accelerator sandboxv1alpha1.Accelerator
	// KVMError says why KVM is not available, for the Ready condition.
	KVMError string
	QEMU     string
}

// ProbeHost reads the host's CPUs and memory and probes /dev/kvm and QEMU.
func ProbeHost(kvmPath, qemuBinary string, allowEmulation bool) Host {
	h := Host{CPUs: int32(runtime.NumCPU()), MemoryMiB: memTotalMiB("/proc/meminfo")}
	if err := kvmUsable(kvmPath); err == nil {
		h.Accelerator = sandboxv1alpha1.AcceleratorKVMName
	} else {
		h.KVMError = err.Error()
		if allowEmulation {
			h.Accelerator = sandboxv1alpha1.AcceleratorTCG
		}
	}
	h.QEMU = qemuVersion(qemuBinary)
	return h
}

// probe probes the host, honouring the --accelerator override.
func (a Args) probe() Host {
	switch a.Accelerator {
	case "tcg":
		h := ProbeHost("", a.QEMUBinary, true)
		h.KVMError = "not used: --accelerator=tcg"
		return h
	case "kvm":
		return ProbeHost(a.KVMPath, a.QEMUBinary, false)
	}
	return ProbeHost(a.KVMPath, a.QEMUBinary, a.AllowEmulation)
}

// KVM ioctls (linux/kvm.h).
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
	kvmAPIVersion    = 12
)

// kvmUsable checks that path is a KVM device this process can create a VM
// with: opening it read-write is not enough (a device node can exist where
// the CPU's virtualization is not exposed).
func kvmUsable(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	v, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if errno != 0 {
		return fmt.Errorf("%s: KVM_GET_API_VERSION: %w", path, errno)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("%s: KVM API version %d, want %d", path, v, kvmAPIVersion)
	}
	vm, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmCreateVM, 0)
	if errno != 0 {
		return fmt.Errorf("%s: KVM_CREATE_VM: %w", path, errno)
	}
	_ = syscall.Close(int(vm))
	return nil
}

// memTotalMiB reads MemTotal from a meminfo file (0 when unreadable).
func memTotalMiB(path string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer func() { _ = f.Close() }()
	s := bufio.NewScanner(f)
	for s.Scan() {
		var kb int64
		if _, err := fmt.Sscanf(s.Text(), "MemTotal: %d kB", &kb); err == nil {
			return kb / 1024
		}
	}
	return 0
}

// qemuVersion is the first line of `qemu --version`, or "" without QEMU.
func qemuVersion(binary string) string {
	out, err := exec.Command(binary, "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

// Reserve is capacity kept back for the host and the agent.
type Reserve struct {
	CPUs      int32
	MemoryMiB int64
}

// Allocatable is capacity minus the reserve, never below zero.
func Allocatable(capacity sandboxv1alpha1.NodeResources, r Reserve) sandboxv1alpha1.NodeResources {
	return sandboxv1alpha1.NodeResources{
		CPUs:      max(capacity.CPUs-r.CPUs, 0),
		MemoryMiB: max(capacity.MemoryMiB-r.MemoryMiB, 0),
		Sandboxes: capacity.Sandboxes,
	}
}
