package initd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// validateMount checks a Start mount before anything is mounted: an
// absolute path other than "/", exactly one source, and file names that
// stay inside the mount.
func validateMount(m protocol.Mount) error {
	p, err := guestPath(m.Path)
	if err != nil {
		return err
	}
	if p == "/" {
		return errors.New("cannot mount over the root directory")
	}
	n := 0
	if m.TmpfsMiB > 0 {
		n++
	}
	if m.Disk != "" {
		n++
	}
	if m.Files != nil {
		n++
	}
	if n != 1 {
		return fmt.Errorf("exactly one of tmpfsMiB, disk and files must be set, got %d", n)
	}
	if m.TmpfsMiB < 0 {
		return fmt.Errorf("tmpfsMiB %d is negative", m.TmpfsMiB)
	}
	for _, f := range m.Files {
		if err := validFileName(f.Name, true); err != nil {
			return fmt.Errorf("file %q: %w", f.Name, err)
		}
	}
	return nil
}

// WriteFiles writes a Files mount's files into dir (the fresh tmpfs, so
// nothing in it can be a symlink), creating subdirectories 0755. Names are
// checked again here (validFileName): a ".." must never reach a path.
func WriteFiles(dir string, files []protocol.File) error {
	for _, f := range files {
		if err := validFileName(f.Name, true); err != nil {
			return fmt.Errorf("file %q: %w", f.Name, err)
		}
		dst := filepath.Join(dir, filepath.FromSlash(f.Name))
		if err := os.MkdirAll(filepath.Dir(dst), defaultDirMode); err != nil {
			return fmt.Errorf("file %q: %w", f.Name, err)
		}
		if err := replaceFile(dst, f.Content, unixMode(modeOr(f.Mode, defaultFileMode))); err != nil {
			return fmt.Errorf("file %q: %w", f.Name, err)
		}
	}
	return nil
}

// openFreshVolume makes the root of a fresh ext4 volume (nothing in it but
// mkfs's lost+found) world-writable, as Kubernetes makes an emptyDir, since
// mkfs leaves it root's and 0755 and the workload may run as any user.
// A volume the workload already used keeps the mode it has: a later boot
// must not undo its chmod.
func openFreshVolume(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() != "lost+found" {
			return nil
		}
	}
	return os.Chmod(dir, 0o777)
}
