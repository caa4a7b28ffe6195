package initd

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Where the workload's root is assembled: the read-only image at
// lowerMnt, the writable layer at upperMnt (its upper/ and work/
// directories), the overlay at RootMnt.
const (
	lowerMnt = "/mnt/lower"
	upperMnt = "/mnt/upper"
	// RootMnt is the workload's root directory (the main process's chroot).
	RootMnt = "/mnt/root"
)

// prepareRoot mounts the image's disk (serial RootSerial) read-only under
// an overlay at RootMnt whose writable layer is the disk cfg.UpperDisk
// (ext4, kept across boots) or a tmpfs of cfg.UpperMiB, with proc, sys,
// dev and a tmpfs /tmp inside it.
func prepareRoot(cfg RootConfig, logf func(string, ...any)) error {
	t0 := time.Now()
	rootDev, err := waitDisk(RootSerial)
	if err != nil {
		return fmt.Errorf("root disk: %w", err)
	}
	for _, d := range []string{lowerMnt, upperMnt, RootMnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount(rootDev, lowerMnt, "ext4", unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mounting the root disk %s on %s: %w", rootDev, lowerMnt, err)
	}
	if err := mountUpper(cfg); err != nil {
		return err
	}
	upper, work := filepath.Join(upperMnt, "upper"), filepath.Join(upperMnt, "work")
	for _, d := range []string{upper, work} {
		// A disk upper keeps them from an earlier boot: only create them.
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	opts := "lowerdir=" + lowerMnt + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", RootMnt, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting the overlay on %s: %w", RootMnt, err)
	}
	for _, m := range []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"/dev", "dev", "", unix.MS_BIND | unix.MS_REC, ""},
		{"tmpfs", "tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	} {
		dst := filepath.Join(RootMnt, m.dst)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, dst, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mounting %s on %s: %w", m.src, dst, err)
		}
	}
	logf("root filesystem ready at %s in %v (%s, writable layer on %s)", RootMnt, time.Since(t0).Round(time.Millisecond),
		rootDev, upperDescription(cfg))
	return nil
}

// mountUpper mounts the writable layer at upperMnt.
func mountUpper(cfg RootConfig) error {
	if cfg.UpperDisk != "" {
		dev, err := waitDisk(cfg.UpperDisk)
		if err != nil {
			return fmt.Errorf("writable layer: %w", err)
		}
		if err := unix.Mount(dev, upperMnt, "ext4", unix.MS_NOATIME, ""); err != nil {
			return fmt.Errorf("mounting the writable layer %s on %s as ext4: %w", dev, upperMnt, err)
		}
		return nil
	}
	data := "mode=0755"
	if cfg.UpperMiB > 0 {
		data += ",size=" + strconv.Itoa(cfg.UpperMiB) + "m"
	}
	if err := unix.Mount("tmpfs", upperMnt, "tmpfs", 0, data); err != nil {
		return fmt.Errorf("mounting a tmpfs on %s: %w", upperMnt, err)
	}
	return nil
}

// upperDescription names the writable layer for the log.
func upperDescription(cfg RootConfig) string {
	switch {
	case cfg.UpperDisk != "":
		return "disk " + strconv.Quote(cfg.UpperDisk)
	case cfg.UpperMiB > 0:
		return strconv.Itoa(cfg.UpperMiB) + " MiB tmpfs"
	default:
		return "tmpfs"
	}
}
