package nodeagent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// mkfsTimeout bounds formatting one sparse disk (~20 ms here).
const mkfsTimeout = time.Minute

// diskFile is the file of the disk with the given serial in a Sandbox's
// directory. Disks live next to the run's files but outlive runs: a
// Disk-medium writable layer and emptyDir volumes keep their contents
// across stop and start, until the Sandbox is deleted.
func diskFile(dir, serial string) string { return filepath.Join(dir, serial+".ext4") }

// ensureDisks creates (once) the sparse ext4 files of the plan's writable
// layer and volumes in dir and returns them as VM disks.
func ensureDisks(ctx context.Context, mkfs, dir string, p guestPlan) ([]vmm.Disk, error) {
	var disks []vmm.Disk
	add := func(serial string, sizeMiB int) error {
		f := diskFile(dir, serial)
		if err := ensureExt4(ctx, mkfs, f, sizeMiB); err != nil {
			return err
		}
		disks = append(disks, vmm.Disk{Path: f, Serial: serial})
		return nil
	}
	if p.upperMiB > 0 {
		if err := add(upperSerial, p.upperMiB); err != nil {
			return nil, err
		}
	}
	for _, v := range p.volumes {
		if err := add(v.serial, v.sizeMiB); err != nil {
			return nil, err
		}
	}
	return disks, nil
}

// ensureExt4 makes file a sparse ext4 filesystem of sizeMiB unless it
// already exists (a disk from an earlier run keeps its contents; a size
// change in the spec applies to new disks only — the spec is frozen while
// the VM runs, and growing a filesystem in place is not done here).
func ensureExt4(ctx context.Context, mkfs, file string, sizeMiB int) error {
	if _, err := os.Stat(file); err == nil {
		return nil
	}
	tmp := file + ".tmp"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating disk %s: %w", file, err)
	}
	err = f.Truncate(int64(sizeMiB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("sizing disk %s: %w", file, err)
	}
	ctx, cancel := context.WithTimeout(ctx, mkfsTimeout)
	defer cancel()
	// Lazy init: the inode tables and journal are not zeroed now (the
	// guest kernel finishes that in the background), so the file stays
	// sparse and formatting takes milliseconds.
	out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", tmp).CombinedOutput()
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("formatting disk %s: %w: %s", file, err, out)
	}
	return os.Rename(tmp, file)
}

// mkfsPath finds mkfs.ext4, which lives in /sbin or /usr/sbin (not always
// on a non-root PATH).
func mkfsPath() string {
	if p, err := exec.LookPath("mkfs.ext4"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "mkfs.ext4"
}
