// Package vmtest holds what tests that boot real microVMs share: finding
// the guest kernel that hack/setup-guest-kernel.sh unpacked, and deciding
// whether its absence skips the test or fails it.
package vmtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// RequireVMEnv makes a missing kernel, QEMU or tool a failure instead of a
// skip; `make test` sets it, so CI cannot pass without booting a VM.
const RequireVMEnv = "SANDBOX_REQUIRE_VM"

// Prereqs returns the guest kernel and its modules directory (bin/guest of
// the repository), checking that they and QEMU exist, as well as any extra
// tools named (e.g. "mkfs.ext4"). When something is missing the test is
// skipped, or failed under SANDBOX_REQUIRE_VM=1.
func Prereqs(t testing.TB, tools ...string) (kernel, modules string) {
	t.Helper()
	guest := filepath.Join(repoRoot(t), "bin", "guest")
	kernel, modules = filepath.Join(guest, "vmlinux"), filepath.Join(guest, "modules")
	var missing []string
	if _, err := os.Stat(kernel); err != nil {
		missing = append(missing, kernel+" (run make guest-kernel)")
	}
	for _, tool := range append([]string{vmm.DefaultQEMUBinary}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool+" (run hack/setup.sh)")
		}
	}
	if len(missing) > 0 {
		msg := "cannot boot a microVM: missing " + strings.Join(missing, ", ")
		if os.Getenv(RequireVMEnv) == "1" {
			t.Fatal(msg + "; " + RequireVMEnv + "=1 requires it")
		}
		t.Skip(msg + "; set " + RequireVMEnv + "=1 to make this a failure")
	}
	return kernel, modules
}

// repoRoot walks up from the test's working directory to the go.mod.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}
