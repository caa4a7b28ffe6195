package nodeagent

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

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
	if f, err := os.OpenFile(kvmPath, os.O_RDWR, 0); err == nil {
		_ = f.Close()
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
