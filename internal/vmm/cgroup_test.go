package vmm

import (
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
)

// fakeCgroupfs makes a directory that looks like a cgroup v2 parent with
// the given controllers available. It is a simulation of the cgroup2
// filesystem (plain files, no kernel behind them) for the limit-writing
// logic; TestBootMicroVM starts a real QEMU in a real cgroup where the host
// has a cgroup2 hierarchy.
func fakeCgroupfs(t *testing.T, controllers string) string {
	dir := t.TempDir()
	for f, v := range map[string]string{"cgroup.controllers": controllers, "cgroup.subtree_control": ""} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestCreateCgroup(t *testing.T) {
	t.Run("with cpu and memory delegated, the VM's cgroup gets cpu.max and memory.max", func(t *testing.T) {
		g := NewWithT(t)
		parent := fakeCgroupfs(t, "cpuset cpu io memory pids")
		cg, err := createCgroup(parent, "uid-1", 2, 512)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(cg).To(Equal(Cgroup{Path: filepath.Join(parent, "uid-1"), Limited: true}))
		g.Expect(os.ReadFile(filepath.Join(cg.Path, "cpu.max"))).To(BeEquivalentTo("200000 100000"))
		g.Expect(os.ReadFile(filepath.Join(cg.Path, "memory.max"))).To(BeEquivalentTo("939524096"), "512 MiB of guest RAM + 384 MiB for QEMU")
		// The fake file keeps the last write: the agent enabled memory last.
		g.Expect(os.ReadFile(filepath.Join(parent, "cgroup.subtree_control"))).To(BeEquivalentTo("+memory"))
	})
	t.Run("without the controllers, the cgroup only groups the VMM's processes", func(t *testing.T) {
		g := NewWithT(t)
		parent := fakeCgroupfs(t, "hugetlb")
		cg, err := createCgroup(parent, "uid-2", 1, 128)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(cg.Limited).To(BeFalse())
		g.Expect(filepath.Join(cg.Path, "cpu.max")).NotTo(BeAnExistingFile())
	})
	t.Run("a parent that is not a cgroup v2 directory is an error", func(t *testing.T) {
		_, err := createCgroup(t.TempDir(), "uid-3", 1, 128)
		NewWithT(t).Expect(err).To(MatchError(ContainSubstring("not a cgroup v2 directory")))
	})
}
