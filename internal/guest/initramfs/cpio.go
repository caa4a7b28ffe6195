package initramfs

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// File-type bits of a newc entry's mode (from <sys/stat.h>).
const (
	ModeDir     = 0o040000
	ModeRegular = 0o100000
	ModeSymlink = 0o120000
	ModeCharDev = 0o020000

	modeTypeMask = 0o170000
)

// newcMagic starts every newc header ("new ASCII", no checksums).
const newcMagic = "070701"

// trailerName names the entry that ends an archive.
const trailerName = "TRAILER!!!"

// headerLen is the size of a newc header: the magic and 13 eight-digit hex
// fields.
const headerLen = 6 + 13*8

// Entry is one member of a newc archive.
type Entry struct {
	// Name is the path inside the archive, relative ("dev/console"), without
	// a leading slash.
	Name string
	// Mode is the full st_mode: a file-type bit (ModeDir, ModeRegular, ...)
	// and the permission bits.
	Mode uint32
	// RdevMajor and RdevMinor identify the device of a ModeCharDev entry.
	RdevMajor, RdevMinor uint32
	// Data is the content of a regular file, or the target of a symlink.
	Data []byte
}

// Writer writes a newc cpio archive. All entries are owned by root, dated
// 0 (the archive's bytes depend only on its content) and have one link.
type Writer struct {
	w      io.Writer
	ino    uint32
	closed bool
}

// NewWriter returns a Writer that writes an archive to w; Close writes the
// trailer.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w}
}

// errClosed is returned for a write after Close.
var errClosed = errors.New("initramfs: write to a closed archive")

// Write appends e to the archive.
func (w *Writer) Write(e Entry) error {
	if w.closed {
		return errClosed
	}
	name := strings.TrimPrefix(e.Name, "/")
	if name == "" || name == trailerName {
		return fmt.Errorf("initramfs: invalid entry name %q", e.Name)
	}
	switch e.Mode & modeTypeMask {
	case ModeRegular, ModeSymlink:
	case ModeDir, ModeCharDev:
		if len(e.Data) > 0 {
			return fmt.Errorf("initramfs: entry %q of mode %o cannot carry data", name, e.Mode)
		}
	default:
		return fmt.Errorf("initramfs: entry %q has unsupported mode %o", name, e.Mode)
	}
	w.ino++
	return w.write(w.ino, name, e)
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	return w.write(0, trailerName, Entry{})
}

func (w *Writer) write(ino uint32, name string, e Entry) error {
	nlink := uint32(1)
	if e.Mode&modeTypeMask == ModeDir {
		nlink = 2
	}
	if name == trailerName {
		nlink = 1
	}
	hdr := fmt.Sprintf("%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		newcMagic, ino, e.Mode, 0, 0, nlink, 0, len(e.Data), 0, 0,
		e.RdevMajor, e.RdevMinor, len(name)+1, 0)
	buf := make([]byte, 0, pad4(headerLen+len(name)+1)+pad4(len(e.Data)))
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = append(buf, make([]byte, pad4(len(buf))-len(buf))...)
	buf = append(buf, e.Data...)
	buf = append(buf, make([]byte, pad4(len(buf))-len(buf))...)
	if _, err := w.w.Write(buf); err != nil {
		return fmt.Errorf("initramfs: writing %q: %w", name, err)
	}
	return nil
}

// pad4 rounds n up to a multiple of 4, newc's alignment for names and data.
func pad4(n int) int { return (n + 3) &^ 3 }
