package initd

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Serials of the disks the host attaches for every sandbox (QEMU's
// virtio-blk serial= property). Volumes have serials of their own, named
// by protocol.Mount.Disk.
const (
	// RootSerial is the image's root filesystem (ext4, read-only).
	RootSerial = "root"
)

// FindDisk returns the device name ("vdb") of the virtio-blk disk whose
// serial is serial, reading sysfsRoot/block/vd*/serial, which virtio_blk
// publishes. The order of the disks is no help: microvm assigns its
// virtio-mmio slots in an order of its own, not the command line's. It
// returns "" when no disk has that serial (yet).
func FindDisk(sysfsRoot, serial string) (string, error) {
	devs, err := filepath.Glob(filepath.Join(sysfsRoot, "block", "vd*"))
	if err != nil {
		return "", fmt.Errorf("listing block devices: %w", err)
	}
	for _, dev := range devs {
		b, err := os.ReadFile(filepath.Join(dev, "serial"))
		if err != nil {
			// A disk without a serial, or one being probed: not ours.
			continue
		}
		// virtio_blk reports up to 20 bytes; trim NUL padding defensively.
		if string(bytes.TrimSpace(bytes.TrimRight(b, "\x00"))) == serial {
			return filepath.Base(dev), nil
		}
	}
	return "", nil
}

// diskWait bounds the wait for a disk after virtio_blk is loaded.
const diskWait = 10 * time.Second

// waitDisk waits up to diskWait for the disk with serial to appear and
// returns its device node (/dev/vdb). Disks are probed asynchronously after
// the module loads, and devtmpfs creates the node a moment after sysfs
// lists the disk.
func waitDisk(serial string) (string, error) {
	deadline := time.Now().Add(diskWait)
	for {
		dev, err := FindDisk("/sys", serial)
		if err != nil {
			return "", err
		}
		if dev != "" {
			node := filepath.Join("/dev", dev)
			if _, err := os.Stat(node); err == nil {
				return node, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no disk with serial %q after %v", serial, diskWait)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
