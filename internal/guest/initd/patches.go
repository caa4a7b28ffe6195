package initd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// Default modes of what patches create when Patch.Mode is 0.
const (
	defaultFileMode = 0o644
	defaultDirMode  = 0o755
)

// ApplyPatches applies patches, in order, to the workload's root (the
// overlay, where writes land in the writable layer), checking whether a
// path exists in the image against lower (the read-only image alone), so
// that what an earlier boot left in a persistent writable layer does not
// fail the next start. The first failure stops it; the error names the
// patch by index, type and path.
//
// Paths are resolved inside root (see resolveInRoot): a symlink in the
// image cannot lead a patch out of it.
//
// Applied at every start, a patch is idempotent except Append, which
// appends again to a file a persistent writable layer kept: the host should
// not pair Append with a persistent layer unless repeating is intended.
func ApplyPatches(lower, root string, patches []protocol.Patch) error {
	for i, p := range patches {
		if err := applyPatch(lower, root, p); err != nil {
			return fmt.Errorf("patch %d (%s %s): %w", i, p.Type, p.Path, err)
		}
	}
	return nil
}

func applyPatch(lower, root string, p protocol.Patch) error {
	clean, err := guestPath(p.Path)
	if err != nil {
		return err
	}
	if clean == "/" {
		return errors.New("the root directory itself cannot be patched")
	}
	switch p.Type {
	case protocol.PatchText, protocol.PatchFile:
		if err := checkNotInImage(lower, clean, p.Replace); err != nil {
			return err
		}
		dst, err := createParents(root, clean)
		if err != nil {
			return err
		}
		return replaceFile(dst, p.Content, unixMode(modeOr(p.Mode, defaultFileMode)))
	case protocol.PatchSymlink:
		if p.Target == "" {
			return errors.New("a symlink needs a target")
		}
		if err := checkNotInImage(lower, clean, p.Replace); err != nil {
			return err
		}
		dst, err := createParents(root, clean)
		if err != nil {
			return err
		}
		// Replace what a persistent layer (or, with Replace, the image)
		// holds there; a non-empty directory is not silently removed.
		if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("replacing the existing entry: %w", err)
		}
		return os.Symlink(p.Target, dst)
	case protocol.PatchMkdir:
		_, err := mkdirAllInRoot(root, clean, unixMode(modeOr(p.Mode, defaultDirMode)))
		return err
	case protocol.PatchRemove:
		dst, err := resolveInRoot(root, clean, false)
		if err != nil {
			return err
		}
		// RemoveAll does not follow symlinks below dst; removing a path the
		// image holds leaves a whiteout in the writable layer.
		return os.RemoveAll(dst)
	case protocol.PatchAppend:
		// Append follows a final symlink (inside the root), as a shell's >>
		// would.
		dst, err := resolveInRoot(root, clean, true)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(dst), defaultDirMode); err != nil {
			return fmt.Errorf("creating the parent directory: %w", err)
		}
		f, err := os.OpenFile(dst, os.O_WRONLY|os.O_APPEND|os.O_CREATE, unixMode(modeOr(p.Mode, defaultFileMode)))
		if err != nil {
			return err
		}
		_, err = f.Write(p.Content)
		return errors.Join(err, f.Close())
	default:
		return fmt.Errorf("unknown patch type %q", p.Type)
	}
}

// modeOr returns m, or def when m is 0 (the protocol's "unset").
func modeOr(m, def uint32) uint32 {
	if m == 0 {
		return def
	}
	return m
}

// checkNotInImage fails when the guest path p exists in the image (lower)
// and replace is not set.
func checkNotInImage(lower, p string, replace bool) error {
	if replace {
		return nil
	}
	src, err := resolveInRoot(lower, p, false)
	if errors.Is(err, syscall.ENOTDIR) {
		return nil // a parent is a file: p cannot exist
	}
	if err != nil {
		return err
	}
	if _, err := os.Lstat(src); err == nil {
		return errors.New("the path exists in the image; set replace to overwrite it")
	} else if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("checking the image: %w", err)
	}
	return nil
}

// createParents resolves the guest path p in root without following its
// final component, creates its missing parent directories (mode 0755) and
// returns the path on this machine.
func createParents(root, p string) (string, error) {
	dst, err := resolveInRoot(root, p, false)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(dst), defaultDirMode); err != nil {
		return "", fmt.Errorf("creating the parent directory: %w", err)
	}
	return dst, nil
}
