package sandboxlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// currentFile is the file a Writer appends to; rotated files are
// currentFile + ".<index>".
const currentFile = "output.log"

// fileID identifies a file independently of its name, so that a reader
// recognises it after a rotation renamed it.
type fileID struct{ dev, ino uint64 }

// logFile is one file of a snapshot.
type logFile struct {
	path string
	// index is 0 for output.log, i for output.log.i.
	index int
	id    fileID
}

func statID(fi os.FileInfo) (id fileID, nlink uint64, err error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return id, 0, fmt.Errorf("no inode for %s", fi.Name())
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, uint64(st.Nlink), nil //nolint:unconvert // Dev and Nlink are not uint64 on every GOARCH.
}

func rotatedPath(dir string, index int) string {
	if index == 0 {
		return filepath.Join(dir, currentFile)
	}
	return filepath.Join(dir, currentFile+"."+strconv.Itoa(index))
}

// rotatedIndex returns i for "output.log.i" (i ≥ 1, plain decimal), 0 for
// "output.log", and false for any other name.
func rotatedIndex(name string) (int, bool) {
	if name == currentFile {
		return 0, true
	}
	suffix, ok := strings.CutPrefix(name, currentFile+".")
	if !ok || suffix == "" || suffix[0] < '1' || suffix[0] > '9' {
		return 0, false
	}
	for _, c := range suffix {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	i, err := strconv.Atoi(suffix)
	return i, err == nil
}

// listFiles lists the log files in dir, oldest first (output.log last).
// Because a rotation renames one file at a time, always to a vacant higher
// index, the order by index is the order by age, even after a crash
// mid-rotation left a gap. Readers call it under lockDir.
func listFiles(dir string) ([]logFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []logFile
	for _, e := range entries {
		i, ok := rotatedIndex(e.Name())
		if !ok {
			continue
		}
		fi, err := e.Info()
		if os.IsNotExist(err) {
			continue // Renamed or dropped since ReadDir.
		}
		if err != nil {
			return nil, err
		}
		id, _, err := statID(fi)
		if err != nil {
			return nil, err
		}
		files = append(files, logFile{path: filepath.Join(dir, e.Name()), index: i, id: id})
	}
	// Oldest first: the highest index first, output.log (0) last.
	slices.SortFunc(files, func(a, b logFile) int { return b.index - a.index })
	return files, nil
}

// lockDir takes a flock(2) on dir itself: exclusive (unix.LOCK_EX) while a
// Writer rotates, shared (unix.LOCK_SH) while a reader lists the files and
// opens the one it goes on with. Listing a directory while files in it are
// renamed can miss a file or show one twice (getdents walks the directory
// in hash order, and each stat follows the listing), and a reader that
// missed a file would skip its records; under the lock a reader sees the
// files either before or after a whole rotation. The lock is released by
// the kernel when its holder dies, so a crashed agent leaves none behind.
func lockDir(dir string, how int) (unlock func(), err error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	fd := int(d.Fd())
	for {
		err = unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("failed to lock %s: %w", dir, err)
	}
	return func() {
		_ = unix.Flock(fd, unix.LOCK_UN)
		_ = d.Close()
	}, nil
}
