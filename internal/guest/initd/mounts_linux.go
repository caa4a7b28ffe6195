package initd

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// applyMounts mounts the Start's volumes into root, in order (a later
// mount may nest in an earlier one). Each mount point is resolved inside
// root and created when missing.
func applyMounts(root string, mounts []protocol.Mount) error {
	for i, m := range mounts {
		if err := applyMount(root, m); err != nil {
			return fmt.Errorf("mount %d (%s): %w", i, m.Path, err)
		}
	}
	return nil
}

func applyMount(root string, m protocol.Mount) error {
	if err := validateMount(m); err != nil {
		return err
	}
	target, err := mkdirAllInRoot(root, m.Path, defaultDirMode)
	if err != nil {
		return err
	}
	var flags uintptr
	if m.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	switch {
	case m.TmpfsMiB > 0:
		// World-writable, as Kubernetes makes an emptyDir: the workload may
		// run as any user.
		data := "mode=0777,size=" + strconv.Itoa(m.TmpfsMiB) + "m"
		if err := unix.Mount("tmpfs", target, "tmpfs", flags, data); err != nil {
			return fmt.Errorf("mounting a tmpfs: %w", err)
		}
	case m.Disk != "":
		dev, err := waitDisk(m.Disk)
		if err != nil {
			return err
		}
		if err := unix.Mount(dev, target, "ext4", flags, ""); err != nil {
			return fmt.Errorf("mounting disk %q (%s) as ext4: %w", m.Disk, dev, err)
		}
		if !m.ReadOnly {
			if err := openFreshVolume(target); err != nil {
				return fmt.Errorf("disk %q: %w", m.Disk, err)
			}
		}
	default:
		// A projection (ConfigMap, Secret): populated, then frozen, so that
		// the workload reads exactly what the host sent.
		if err := unix.Mount("tmpfs", target, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
			return fmt.Errorf("mounting a tmpfs for files: %w", err)
		}
		if err := WriteFiles(target, m.Files); err != nil {
			return err
		}
		if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
			return fmt.Errorf("remounting the files read-only: %w", err)
		}
	}
	return nil
}
