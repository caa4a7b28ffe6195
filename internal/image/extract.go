package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
)

// blockSize is the ext4 block size the root filesystem is made with; it is
// also the unit in which extract estimates the space files take.
const blockSize = 4096

// fsStats is what mkfs needs to know about an extracted tree.
type fsStats struct {
	// bytes estimates the data blocks: file sizes rounded up to whole
	// blocks, one block per directory and per long symlink.
	bytes int64
	// inodes counts files, directories, symlinks and device nodes (hard
	// links share an inode).
	inodes int64
}

func (s *fsStats) add(bytes int64) {
	s.inodes++
	s.bytes += (bytes + blockSize - 1) / blockSize * blockSize
}

// extractor writes a flattened image (the tar stream of mutate.Extract) into
// a directory. All writes go through an os.Root, which refuses any path or
// symlink that resolves outside the directory; symlinks in the image are
// created verbatim and are only ever followed inside it.
//
// mutate.Extract emits the top layer first, so a directory's entry can come
// after its contents (which created it with mode 0755) and a hard link's
// target can come after the link. Directory metadata and hard links are
// therefore applied once the whole stream has been written.
type extractor struct {
	root  *os.Root
	dirs  map[string]bool // known to exist (as a directory or a symlink to one)
	meta  []*tar.Header   // directory entries, applied at the end
	links []*tar.Header   // hard links, created at the end
	stats fsStats
}

// extractTar writes the tar stream r into dir, which must exist and be empty.
func extractTar(ctx context.Context, r io.Reader, dir string) (fsStats, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fsStats{}, err
	}
	defer func() { _ = root.Close() }()

	e := &extractor{root: root, dirs: map[string]bool{".": true}}
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		if n%256 == 0 {
			if err := ctx.Err(); err != nil {
				return fsStats{}, err
			}
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// A layer that does not decompress, is not a tar stream, does
			// not match its digest or holds an unsafe path (mutate.Extract
			// rejects those) ends up here.
			return fsStats{}, fmt.Errorf("%w: failed to read the flattened layers: %w", ErrInvalidImage, err)
		}
		if err := e.entry(h, tr); err != nil {
			return fsStats{}, err
		}
	}
	// mutate.Extract reports its errors (an unsafe path, a layer that does
	// not match its digest) by closing the pipe with them, but only after
	// its deferred tar.Writer.Close has written the end-of-archive marker:
	// the tar reader above sees a clean end. The error is the next read.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fsStats{}, fmt.Errorf("%w: failed to flatten the layers: %w", ErrInvalidImage, err)
	}
	for _, h := range e.links {
		if err := e.link(h); err != nil {
			return fsStats{}, err
		}
	}
	for _, h := range e.meta {
		if err := e.setMeta(h.Name, h); err != nil {
			return fsStats{}, err
		}
	}
	return e.stats, nil
}

// archivePath turns a tar entry's name (or a hard link's target) into a
// clean path relative to the root, rejecting any that would leave it. A
// leading "/" means the root, as it does for GNU tar.
func archivePath(p string) (string, error) {
	clean := path.Clean(strings.TrimLeft(p, "/"))
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("%w: tar entry %q escapes the root filesystem", ErrInvalidImage, p)
	}
	return clean, nil
}

func (e *extractor) entry(h *tar.Header, r io.Reader) error {
	name, err := archivePath(h.Name)
	if err != nil {
		return err
	}
	h.Name = name

	switch h.Typeflag {
	case tar.TypeDir:
		if err := e.mkdirAll(name); err != nil {
			return err
		}
		e.meta = append(e.meta, h)
		return nil
	case tar.TypeLink:
		e.links = append(e.links, h)
		return nil
	case tar.TypeReg, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	default:
		// archive/tar consumes PAX, GNU long-name and sparse headers itself;
		// anything else (sockets do not travel in tar) has no place in a
		// root filesystem.
		return nil
	}
	if name == "." {
		return fmt.Errorf("%w: tar entry %q replaces the root directory", ErrInvalidImage, h.Name)
	}
	if err := e.mkdirAll(path.Dir(name)); err != nil {
		return err
	}
	if e.exists(name) {
		// Each name comes once from mutate.Extract, so this is a directory
		// created for an upper layer's entries; the upper layer wins.
		return nil
	}

	switch h.Typeflag {
	case tar.TypeReg:
		return e.file(name, h, r)
	case tar.TypeSymlink:
		if err := e.root.Symlink(h.Linkname, name); err != nil {
			return fmt.Errorf("failed to create symlink %q: %w", name, err)
		}
		if err := e.root.Lchown(name, h.Uid, h.Gid); err != nil {
			return fmt.Errorf("failed to chown symlink %q: %w", name, err)
		}
		// Targets shorter than 60 bytes live in the inode ("fast" symlinks).
		long := int64(0)
		if len(h.Linkname) >= 60 {
			long = int64(len(h.Linkname))
		}
		e.stats.add(long)
		return nil
	default:
		return e.node(name, h)
	}
}

func (e *extractor) exists(name string) bool {
	_, err := e.root.Lstat(name)
	return err == nil
}

// mkdirAll creates dir and its missing parents with mode 0755 (whatever the
// umask); their entries, when the image has them, set the real metadata at
// the end.
func (e *extractor) mkdirAll(dir string) error {
	if e.dirs[dir] {
		return nil
	}
	if err := e.mkdirAll(path.Dir(dir)); err != nil {
		return err
	}
	fi, err := e.root.Lstat(dir)
	switch {
	case err == nil && (fi.IsDir() || fi.Mode()&fs.ModeSymlink != 0):
		// A symlink to a directory is followed by later writes, but only
		// inside the root: os.Root refuses absolute or escaping targets.
	case err == nil:
		return fmt.Errorf("%w: %q is not a directory but the image has entries under it", ErrInvalidImage, dir)
	case errors.Is(err, fs.ErrNotExist):
		if err := e.root.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("failed to create directory %q: %w", dir, err)
		}
		if err := e.root.Chmod(dir, 0o755); err != nil {
			return fmt.Errorf("failed to chmod directory %q: %w", dir, err)
		}
		e.stats.add(blockSize)
	default:
		return fmt.Errorf("failed to inspect %q: %w", dir, err)
	}
	e.dirs[dir] = true
	return nil
}

// file writes a regular file. Ownership is set before the mode, because
// chown clears the setuid and setgid bits, and before the extended
// attributes, because it also clears file capabilities.
func (e *extractor) file(name string, h *tar.Header, r io.Reader) (err error) {
	f, err := e.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("failed to create %q: %w", name, err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("failed to write %q: %w", name, cerr)
		}
	}()
	if _, err := io.Copy(f, r); err != nil {
		return fmt.Errorf("%w: failed to read %q from the flattened layers: %w", ErrInvalidImage, name, err)
	}
	if err := f.Chown(h.Uid, h.Gid); err != nil {
		return fmt.Errorf("failed to chown %q: %w", name, err)
	}
	if err := f.Chmod(h.FileInfo().Mode()); err != nil {
		return fmt.Errorf("failed to chmod %q: %w", name, err)
	}
	setXattrs(f, h)
	if err := e.root.Chtimes(name, h.AccessTime, h.ModTime); err != nil {
		return fmt.Errorf("failed to set times of %q: %w", name, err)
	}
	e.stats.add(h.Size)
	return nil
}

// setXattrs copies the PAX "SCHILY.xattr." records (file capabilities such
// as ping's cap_net_raw) onto f; mkfs.ext4 -d copies them into the image.
// It is best effort: the scratch directory's filesystem may not support a
// namespace, and a missing label is not worth failing a pull for.
func setXattrs(f *os.File, h *tar.Header) {
	for k, v := range h.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		_ = syscall.Setxattr(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), attr, []byte(v), 0)
	}
}

// node creates a device node or FIFO with mknodat in its parent directory,
// opened through the root so that the parent cannot be a way out.
func (e *extractor) node(name string, h *tar.Header) error {
	var kind uint32
	switch h.Typeflag {
	case tar.TypeChar:
		kind = syscall.S_IFCHR
	case tar.TypeBlock:
		kind = syscall.S_IFBLK
	default:
		kind = syscall.S_IFIFO
	}
	parent, err := e.root.Open(path.Dir(name))
	if err != nil {
		return fmt.Errorf("failed to open directory of %q: %w", name, err)
	}
	defer func() { _ = parent.Close() }()
	major, minor := uint64(h.Devmajor), uint64(h.Devminor)
	dev := (major&0xfffff000)<<32 | (major&0xfff)<<8 | (minor&0xffffff00)<<12 | minor&0xff
	if err := syscall.Mknodat(int(parent.Fd()), path.Base(name), kind|uint32(h.Mode&0o7777), int(dev)); err != nil {
		return fmt.Errorf("failed to create device node %q: %w", name, err)
	}
	if err := e.root.Lchown(name, h.Uid, h.Gid); err != nil {
		return fmt.Errorf("failed to chown %q: %w", name, err)
	}
	if err := e.root.Chmod(name, h.FileInfo().Mode()); err != nil {
		return fmt.Errorf("failed to chmod %q: %w", name, err)
	}
	e.stats.add(0)
	return nil
}

// link creates a hard link. Its target is a path inside the image; an
// absolute target means the image's root, and one with ".." is rejected.
func (e *extractor) link(h *tar.Header) error {
	target, err := archivePath(h.Linkname)
	if err != nil {
		return fmt.Errorf("%w: hard link %q points to %q, outside the root filesystem", ErrInvalidImage, h.Name, h.Linkname)
	}
	if h.Name == "." || target == "." {
		return fmt.Errorf("%w: hard link %q to %q involves the root directory", ErrInvalidImage, h.Name, h.Linkname)
	}
	if err := e.mkdirAll(path.Dir(h.Name)); err != nil {
		return err
	}
	if e.exists(h.Name) {
		return nil
	}
	if err := e.root.Link(target, h.Name); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: hard link %q points to %q, which the flattened image does not contain",
				ErrInvalidImage, h.Name, h.Linkname)
		}
		return fmt.Errorf("failed to link %q to %q: %w", h.Name, target, err)
	}
	return nil
}

// setMeta applies a directory entry's owner, mode and times.
func (e *extractor) setMeta(name string, h *tar.Header) error {
	if err := e.root.Lchown(name, h.Uid, h.Gid); err != nil {
		return fmt.Errorf("failed to chown %q: %w", name, err)
	}
	if err := e.root.Chmod(name, h.FileInfo().Mode()); err != nil {
		return fmt.Errorf("failed to chmod %q: %w", name, err)
	}
	if err := e.root.Chtimes(name, h.AccessTime, h.ModTime); err != nil {
		return fmt.Errorf("failed to set times of %q: %w", name, err)
	}
	return nil
}
