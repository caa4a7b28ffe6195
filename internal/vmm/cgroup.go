package vmm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// cgroupMemoryOverheadMiB is what memory.max allows QEMU beyond the guest's
// RAM: its own heap, device emulation and, under TCG, the translation
// cache (~50 MiB for a small guest, measured).
const cgroupMemoryOverheadMiB = 384

// cgroupPeriod is cpu.max's period in microseconds.
const cgroupPeriod = 100000

// Cgroup is the cgroup v2 a VM's monitor runs in.
type Cgroup struct {
	// Path is the cgroup's directory in the cgroup2 filesystem.
	Path string `json:"path"`
	// Limited says whether cpu.max and memory.max were set (the parent
	// delegates the cpu and memory controllers); otherwise the cgroup only
	// groups the VMM's processes, apart from the agent's.
	Limited bool `json:"limited"`
}

// createCgroup makes the cgroup of one VM under parent, named name, with
// cpu.max = cpus and memory.max = the guest's RAM + overhead when the
// parent delegates those controllers. The VMM is started straight into it
// (CLONE_INTO_CGROUP), so it never runs in the agent's own cgroup: a
// container runtime that kills the agent's cgroup on a restart leaves the
// VMs alone.
func createCgroup(parent, name string, cpus, memoryMiB int) (Cgroup, error) {
	if _, err := os.Stat(filepath.Join(parent, "cgroup.controllers")); err != nil {
		return Cgroup{}, fmt.Errorf("vmm: %s is not a cgroup v2 directory: %w", parent, err)
	}
	cg := Cgroup{Path: filepath.Join(parent, name)}
	if err := os.Mkdir(cg.Path, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return Cgroup{}, fmt.Errorf("vmm: creating cgroup %s: %w", cg.Path, err)
	}
	if !delegates(parent, "cpu", "memory") {
		return cg, nil
	}
	limits := map[string]string{
		"cpu.max":    fmt.Sprintf("%d %d", cpus*cgroupPeriod, cgroupPeriod),
		"memory.max": strconv.FormatInt(int64(memoryMiB+cgroupMemoryOverheadMiB)<<20, 10),
	}
	for file, v := range limits {
		if err := os.WriteFile(filepath.Join(cg.Path, file), []byte(v), 0o644); err != nil {
			_ = os.Remove(cg.Path)
			return Cgroup{}, fmt.Errorf("vmm: setting %s of cgroup %s: %w", file, cg.Path, err)
		}
	}
	cg.Limited = true
	return cg, nil
}

// delegates reports whether parent's children get all of controllers,
// enabling them in parent's subtree_control when parent has them.
func delegates(parent string, controllers ...string) bool {
	have := func(file string) []string {
		b, _ := os.ReadFile(filepath.Join(parent, file))
		return strings.Fields(string(b))
	}
	avail, enabled := have("cgroup.controllers"), have("cgroup.subtree_control")
	for _, c := range controllers {
		if slices.Contains(enabled, c) {
			continue
		}
		if !slices.Contains(avail, c) {
			return false
		}
		if err := os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("+"+c), 0o644); err != nil {
			return false
		}
	}
	return true
}

// removeCgroup removes an empty VM cgroup (after its VMM exited).
func removeCgroup(cg Cgroup) {
	if cg.Path != "" {
		_ = os.Remove(cg.Path)
	}
}
