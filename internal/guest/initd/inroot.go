package initd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// maxSymlinks bounds the symbolic links followed while resolving one path,
// as the kernel's ELOOP limit does.
const maxSymlinks = 40

// guestPath validates p as an absolute path in the guest's root, as the
// host sends it (a mount point, a patch target), and returns it cleaned.
// A ".." component is refused outright rather than cleaned away: the host
// never needs one, so one is a bug or an attempt to escape.
func guestPath(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("path %q is not absolute", p)
	}
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("path %q contains a NUL byte", p)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", fmt.Errorf("path %q contains \"..\"", p)
		}
	}
	return path.Clean(p), nil
}

// resolveInRoot returns the path on this machine of the guest path p inside
// root, resolving symbolic links as the workload would see them: an
// absolute link target starts again at root, and ".." never climbs above
// root (the semantics of openat2's RESOLVE_IN_ROOT, done in user space so
// that it can be tested on any kernel). Without it, an image's absolute
// symlink (/etc/resolv.conf -> /run/...) would lead a write into
// sandbox-init's own initramfs.
//
// Every component that exists is resolved; the final one only when
// followFinal is set, so that a patch replaces a symlink itself instead of
// writing through it. Components that do not exist are kept as they are
// (the caller creates them). An intermediate component that is not a
// directory fails with ENOTDIR.
//
// It is not safe against a concurrent writer that swaps a component for a
// symlink between the resolution and the use of the result (what openat2
// closes). sandbox-init only resolves before the workload's first process
// starts, when nothing else writes in root.
func resolveInRoot(root, p string, followFinal bool) (string, error) {
	resolved := "/" // the guest path resolved so far
	rest := p       // the components still to walk
	links := 0
	for {
		rest = strings.TrimLeft(rest, "/")
		if rest == "" {
			return filepath.Join(root, resolved), nil
		}
		comp, tail, _ := strings.Cut(rest, "/")
		rest = tail
		switch comp {
		case ".":
			continue
		case "..":
			resolved = path.Dir(resolved)
			continue
		}
		next := path.Join(resolved, comp)
		if strings.Trim(rest, "/") == "" && !followFinal {
			return filepath.Join(root, next), nil
		}
		fi, err := os.Lstat(filepath.Join(root, next))
		if errors.Is(err, fs.ErrNotExist) {
			// Nothing below a missing component can be a link: keep the rest
			// lexically (path.Join clamps any ".." at the root).
			return filepath.Join(root, path.Join(next, rest)), nil
		}
		if err != nil {
			return "", fmt.Errorf("resolving %s in the root: %w", p, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if !fi.IsDir() && strings.Trim(rest, "/") != "" {
				return "", fmt.Errorf("resolving %s in the root: %s: %w", p, next, syscall.ENOTDIR)
			}
			resolved = next
			continue
		}
		if links++; links > maxSymlinks {
			return "", fmt.Errorf("resolving %s in the root: %w", p, syscall.ELOOP)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", fmt.Errorf("resolving %s in the root: %w", p, err)
		}
		if path.IsAbs(target) {
			resolved = "/"
		}
		rest = target + "/" + rest
	}
}

// mkdirAllInRoot creates the guest directory p in root with mode perm, and
// its missing parents with 0755, following existing symlinks inside root.
// An existing directory is left as it is. It returns the directory's path
// on this machine.
func mkdirAllInRoot(root, p string, perm fs.FileMode) (string, error) {
	dir, err := resolveInRoot(root, p, true)
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return "", fmt.Errorf("%s exists and is not a directory", p)
		}
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("creating the parents of %s: %w", p, err)
	}
	if err := os.Mkdir(dir, perm); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("creating %s: %w", p, err)
	}
	// MkdirAll is subject to the umask: the requested mode is the contract.
	if err := os.Chmod(dir, perm); err != nil {
		return "", fmt.Errorf("setting the mode of %s: %w", p, err)
	}
	return dir, nil
}

// unixMode converts permission bits as the protocol carries them (0o4755)
// into an fs.FileMode, whose setuid, setgid and sticky bits are elsewhere.
func unixMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m) & fs.ModePerm
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// replaceFile writes content to the file at dst (a path on this machine)
// with mode perm, replacing whatever dst is (a file or a symlink, which is
// replaced and not followed) by a rename, so that a reader never sees a
// half-written file.
func replaceFile(dst string, content []byte, perm fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".sandbox-*")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp.Name()) }() // a no-op after the rename
	if _, err := tmp.Write(content); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	// CreateTemp makes the file 0600 and the umask would bite os.WriteFile.
	if err := os.Chmod(tmp.Name(), perm); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}
