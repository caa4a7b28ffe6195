package sandboxlog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// DefaultMaxFileBytes is the default Options.MaxFileBytes: 10 MiB, as
	// microsandbox's exec.log.
	DefaultMaxFileBytes = 10 << 20
	// DefaultMaxFiles is the default Options.MaxFiles: the current file and
	// three rotated ones, 40 MiB per sandbox with DefaultMaxFileBytes.
	DefaultMaxFiles = 4
)

// Options configure a Writer. The zero value is the defaults.
type Options struct {
	// MaxFileBytes is the size output.log may reach before it is rotated;
	// 0 means DefaultMaxFileBytes. A single record larger than it (only
	// possible with a very small MaxFileBytes) gets a file of its own.
	MaxFileBytes int64
	// MaxFiles is how many files are kept, output.log included; 0 means
	// DefaultMaxFiles. It must be at least 2: with one file a rotation
	// would truncate the file under its readers.
	MaxFiles int
	// Clock stamps records; nil means time.Now. For tests.
	Clock func() time.Time
}

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("sandbox log writer is closed")

// Writer appends records to a sandbox's log directory, rotating it. It is
// safe for concurrent use: records are appended whole, in the order the
// Write calls took its lock, and times never go backwards within one Writer
// unless the clock does.
type Writer struct {
	dir  string
	opts Options

	mu sync.Mutex
	// f is output.log, opened for appending; nil after Close.
	f *os.File
	// size is how many bytes f holds.
	size int64
	// torn is set when a write failed part-way: the next record first ends
	// the torn line, so that it is not glued to it.
	torn bool
	buf  bytes.Buffer
}

// Open opens the log in dir for appending, creating dir and output.log when
// they do not exist. A restarted agent opens the same dir and continues the
// same files.
func Open(dir string, opts Options) (*Writer, error) {
	switch {
	case opts.MaxFileBytes < 0:
		return nil, fmt.Errorf("sandbox log MaxFileBytes must not be negative, got %d", opts.MaxFileBytes)
	case opts.MaxFileBytes == 0:
		opts.MaxFileBytes = DefaultMaxFileBytes
	}
	switch {
	case opts.MaxFiles == 0:
		opts.MaxFiles = DefaultMaxFiles
	case opts.MaxFiles < 2:
		return nil, fmt.Errorf("sandbox log MaxFiles must be at least 2, got %d", opts.MaxFiles)
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("failed to create sandbox log directory: %w", err)
	}
	w := &Writer{dir: dir, opts: opts}
	var err error
	if w.f, w.size, w.torn, err = w.openCurrent(); err != nil {
		return nil, err
	}
	return w, nil
}

// openCurrent opens output.log for appending and returns its size. torn
// reports that its last line is torn (the node crashed mid-write), so that
// the next record first ends that line instead of being glued to it.
func (w *Writer) openCurrent() (f *os.File, size int64, torn bool, err error) {
	f, err = os.OpenFile(rotatedPath(w.dir, 0), os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, 0, false, fmt.Errorf("failed to open sandbox log: %w", err)
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() > 0 {
		last := make([]byte, 1)
		if _, err = f.ReadAt(last, fi.Size()-1); err == nil {
			torn = last[0] != '\n'
		}
	}
	if err != nil {
		_ = f.Close()
		return nil, 0, false, fmt.Errorf("failed to open sandbox log: %w", err)
	}
	return f, fi.Size(), torn, nil
}

// Write appends data from source as one record, or several when data is
// longer than MaxRecordData; session is the exec session (0: the main
// process). Empty data writes nothing. The data need not be lines nor valid
// UTF-8.
func (w *Writer) Write(source Source, session uint64, data []byte) error {
	if !source.valid() {
		return fmt.Errorf("unknown sandbox log source %q", source)
	}
	if len(data) == 0 {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return ErrClosed
	}
	now := w.opts.Clock()
	for _, part := range splitData(data) {
		w.buf.Reset()
		if w.torn {
			w.buf.WriteByte('\n')
		}
		if err := appendLine(&w.buf, now, source, session, part); err != nil {
			return fmt.Errorf("failed to encode sandbox log record: %w", err)
		}
		if w.size > 0 && w.size+int64(w.buf.Len()) > w.opts.MaxFileBytes {
			if err := w.rotate(); err != nil {
				return err
			}
			if w.buf.Bytes()[0] == '\n' {
				w.buf.Next(1) // The torn line stayed in the rotated file.
			}
		}
		n, err := w.f.Write(w.buf.Bytes())
		w.size += int64(n)
		if err != nil {
			w.torn = n > 0
			return fmt.Errorf("failed to write sandbox log: %w", err)
		}
		w.torn = false
	}
	return nil
}

// rotate shifts the files by one (output.log becomes output.log.1) and
// opens a new output.log, under the directory's exclusive lock so that
// readers see it whole. The renames go from the oldest down, each to a
// vacant index, so that the order by index stays the order by age at every
// step, should the node crash in the middle; the file beyond MaxFiles is
// removed first. The old output.log stays open until the new one is, so
// that a failed rotation leaves the Writer appending to what it had.
func (w *Writer) rotate() error {
	unlock, err := lockDir(w.dir, unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("failed to rotate sandbox log: %w", err)
	}
	defer unlock()
	files, err := listFiles(w.dir)
	if err != nil {
		return fmt.Errorf("failed to rotate sandbox log: %w", err)
	}
	// files is oldest first, output.log last.
	for _, lf := range files {
		switch {
		case lf.index+1 >= w.opts.MaxFiles:
			err = os.Remove(lf.path)
		default:
			err = os.Rename(lf.path, rotatedPath(w.dir, lf.index+1))
		}
		if err != nil {
			return fmt.Errorf("failed to rotate sandbox log: %w", err)
		}
	}
	f, size, torn, err := w.openCurrent()
	if err != nil {
		// Keep appending to the renamed file rather than losing records.
		return err
	}
	old := w.f
	w.f, w.size, w.torn = f, size, torn
	if err := old.Close(); err != nil {
		return fmt.Errorf("failed to close rotated sandbox log: %w", err)
	}
	return nil
}

// Close syncs and closes the log, so that a clean shutdown of the agent
// loses nothing even if the node crashes afterwards. Write returns
// ErrClosed after it.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	f := w.f
	w.f = nil
	return errors.Join(f.Sync(), f.Close())
}
