package sandboxlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultPollInterval is how often a following Read looks for new records.
const DefaultPollInterval = 100 * time.Millisecond

// ReadOptions select what Read emits. The zero value emits everything the
// processes wrote (stdout and stderr) and returns.
type ReadOptions struct {
	// Tail, when set, emits only the last *Tail lines of the selected
	// records (those that pass Sources and Since), like `kubectl logs
	// --tail`. Lines are counted on the concatenation of the selected
	// records' data, a line being the bytes up to and including a '\n' (or
	// the unterminated end), since records are chunks, not lines: the
	// emitted data is exactly the last *Tail lines, so the first record
	// emitted may be cut to its end. 0 emits no history (with Follow: only
	// new records); nil or a negative value (kubectl's --tail=-1) emits
	// all. The records are kept in memory until the end of the log is
	// reached, at most the cap's worth.
	Tail *int
	// Since, when not zero, skips records older than it.
	Since time.Time
	// Until, when not zero, skips records at or after it. A following Read
	// still runs until its context ends; give it a deadline to stop there.
	Until time.Time
	// Sources are the sources to emit; empty means DefaultSources.
	Sources []Source
	// After, when not zero, starts right after the record it was taken
	// from, instead of at the oldest record: a follower that reconnects
	// passes the Cursor of the last record it received. Read returns
	// ErrStaleCursor when that record is no longer in the log.
	After Cursor
	// Follow keeps emitting records as they are appended, across
	// rotations, until ctx ends; without it Read returns at the end of the
	// log. A following Read on a directory that does not exist yet waits
	// for it.
	Follow bool
	// PollInterval is how often a following Read looks for new records;
	// 0 means DefaultPollInterval.
	PollInterval time.Duration
}

// ErrStaleCursor is returned by Read when ReadOptions.After names a record
// that is no longer in the log: the Writer dropped its file to keep the
// cap. A caller may read again with Since set to the cursor's time.
var ErrStaleCursor = errors.New("log cursor is past the retained log")

// Read emits the records of the log in dir, oldest first, that opts
// selects, calling out for each in the caller's goroutine; an error from out
// stops Read and is returned as is. It returns ctx.Err() when ctx ends
// first, which for a following Read is the normal way to stop, and an error
// satisfying errors.Is(err, fs.ErrNotExist) when dir does not exist and
// opts.Follow is not set.
//
// Lines that are not valid records are skipped: a torn last line (a crash
// mid-write) at the end of a rotated file, or at the end of output.log when
// not following (a record the Writer is appending just then is left out
// too). A following Read waits for the end of the last line of output.log,
// which the Writer may be writing.
//
// Records are emitted as written; a caller that prints lines (with
// `--timestamps`, say) splits their Data at '\n' and prefixes Time.
func Read(ctx context.Context, dir string, opts ReadOptions, out func(Record) error) error {
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if len(opts.Sources) == 0 {
		opts.Sources = DefaultSources
	}
	r := &reader{dir: dir, opts: opts, out: out, inHistory: true}
	if opts.Tail != nil && *opts.Tail >= 0 {
		r.tail = &tailBuffer{lines: *opts.Tail}
	}
	defer r.close()
	return r.run(ctx)
}

// reader is one Read: the file it reads (by descriptor, so that renames do
// not matter), how far, and the end of a line it has not seen whole yet.
type reader struct {
	dir  string
	opts ReadOptions
	out  func(Record) error

	f  *os.File
	id fileID
	// off is where the next read from f starts.
	off int64
	// pending is the start of a line read from f but not yet ended.
	pending []byte
	// skipping is set while skipping a line longer than maxLine.
	skipping bool
	buf      []byte

	// inHistory is set until the reader first reached the end of the log;
	// tail collects the records until then when opts.Tail is set.
	inHistory bool
	tail      *tailBuffer
}

func (r *reader) close() {
	if r.f != nil {
		_ = r.f.Close()
		r.f = nil
	}
}

func (r *reader) run(ctx context.Context) error {
	if !r.opts.After.IsZero() {
		if err := r.openAfter(r.opts.After); err != nil {
			return err
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if r.f != nil {
			if err := r.drain(); err != nil {
				return err
			}
		}
		next, err := r.next()
		if err != nil {
			return err
		}
		if next != nil {
			if r.f != nil {
				// f is no longer output.log, so the Writer is done with it:
				// what it holds now is all it will hold. Read the rest; a
				// torn last line is dropped with pending.
				if err := r.drain(); err != nil {
					_ = next.Close()
					return err
				}
			}
			if err := r.switchTo(next); err != nil {
				return err
			}
			continue
		}
		// At the end of the log.
		if r.inHistory {
			r.inHistory = false
			if r.tail != nil {
				if err := r.tail.flush(r.out); err != nil {
					return err
				}
			}
		}
		if !r.opts.Follow {
			return nil
		}
		if err := sleep(ctx, r.opts.PollInterval); err != nil {
			return err
		}
	}
}

// next opens the file to read after f (the oldest one when there is no f
// yet), or returns nil when f is the newest file. It lists and opens under
// the directory's shared lock, so that a rotation cannot rename the file
// between the two.
func (r *reader) next() (*os.File, error) {
	unlock, err := lockDir(r.dir, unix.LOCK_SH)
	if errors.Is(err, fs.ErrNotExist) && r.opts.Follow {
		return nil, nil // Not created yet, or the sandbox was deleted.
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read sandbox log: %w", err)
	}
	defer unlock()
	files, err := listFiles(r.dir)
	if err != nil {
		return nil, fmt.Errorf("failed to list sandbox log files: %w", err)
	}
	lf, ok, err := r.successor(files)
	if err != nil || !ok {
		return nil, err
	}
	f, err := os.Open(lf.path)
	if err != nil {
		return nil, fmt.Errorf("failed to open sandbox log: %w", err)
	}
	return f, nil
}

// successor returns the file after f in files: the oldest file when there
// is no f yet, none when f is the newest file, and the oldest file left
// when f was dropped.
func (r *reader) successor(files []logFile) (logFile, bool, error) {
	if r.f == nil {
		if len(files) == 0 {
			return logFile{}, false, nil
		}
		return files[0], true, nil
	}
	fi, err := r.f.Stat()
	if err != nil {
		return logFile{}, false, fmt.Errorf("failed to read sandbox log: %w", err)
	}
	_, nlink, err := statID(fi)
	if err != nil {
		return logFile{}, false, err
	}
	i := slices.IndexFunc(files, func(lf logFile) bool { return lf.id == r.id })
	switch {
	case nlink == 0 || i < 0:
		// Dropped by the cap while being read (a reader more than the cap
		// behind), or the sandbox's directory removed: continue with the
		// oldest file left, if any. A listed file with f's identity is a
		// newer file that reuses the dropped one's inode (nlink tells them
		// apart), so it is a successor like any other.
		if len(files) == 0 {
			return logFile{}, false, nil
		}
		return files[0], true, nil
	case i == len(files)-1:
		// The newest file: output.log, or output.log.1 when a crash
		// mid-rotation left no output.log.
		return logFile{}, false, nil
	default:
		return files[i+1], true, nil
	}
}

// switchTo makes f the file being read, from its start.
func (r *reader) switchTo(f *os.File) error {
	fi, err := f.Stat()
	var id fileID
	if err == nil {
		id, _, err = statID(fi)
	}
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("failed to open sandbox log: %w", err)
	}
	r.close()
	r.f, r.id, r.off, r.pending, r.skipping = f, id, 0, r.pending[:0], false
	return nil
}

// openAfter positions the reader right after the record c was taken from,
// checking that the line ending at c.Offset in the file c names is that
// record.
func (r *reader) openAfter(c Cursor) error {
	want := fileID{dev: c.Dev, ino: c.Inode}
	f, err := func() (*os.File, error) {
		unlock, err := lockDir(r.dir, unix.LOCK_SH)
		if err != nil {
			return nil, fmt.Errorf("failed to read sandbox log: %w", err)
		}
		defer unlock()
		files, err := listFiles(r.dir)
		if err != nil {
			return nil, fmt.Errorf("failed to list sandbox log files: %w", err)
		}
		i := slices.IndexFunc(files, func(lf logFile) bool { return lf.id == want })
		if i < 0 || c.Offset <= 0 {
			return nil, ErrStaleCursor
		}
		f, err := os.Open(files[i].path)
		if err != nil {
			return nil, fmt.Errorf("failed to open sandbox log: %w", err)
		}
		return f, nil
	}()
	if err != nil {
		return err
	}
	if err := checkCursor(f, c); err != nil {
		_ = f.Close()
		return err
	}
	r.f, r.id, r.off = f, want, c.Offset
	return nil
}

// checkCursor checks that the line of f ending at c.Offset is a record
// stamped c.Time.
func checkCursor(f *os.File, c Cursor) error {
	start := max(c.Offset-maxLine-1, 0)
	win := make([]byte, c.Offset-start)
	if _, err := f.ReadAt(win, start); err != nil {
		if errors.Is(err, io.EOF) {
			return ErrStaleCursor
		}
		return fmt.Errorf("failed to read sandbox log: %w", err)
	}
	if win[len(win)-1] != '\n' {
		return ErrStaleCursor
	}
	line := win[:len(win)-1]
	if j := bytes.LastIndexByte(line, '\n'); j >= 0 {
		line = line[j+1:]
	} else if start > 0 {
		return ErrStaleCursor
	}
	rec, ok := parseLine(line)
	if !ok || !rec.Time.Equal(c.Time) {
		return ErrStaleCursor
	}
	return nil
}

// drain reads f from off to its end and handles each whole line; the start
// of a line not ended yet stays in pending.
func (r *reader) drain() error {
	if r.buf == nil {
		r.buf = make([]byte, 64<<10)
	}
	for {
		n, err := r.f.ReadAt(r.buf, r.off)
		if n > 0 {
			if herr := r.consume(r.buf[:n]); herr != nil {
				return herr
			}
		}
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("failed to read sandbox log: %w", err)
		}
	}
}

// consume handles the bytes just read at r.off.
func (r *reader) consume(b []byte) error {
	for len(b) > 0 {
		j := bytes.IndexByte(b, '\n')
		if j < 0 {
			r.off += int64(len(b))
			if !r.skipping {
				r.pending = append(r.pending, b...)
				if len(r.pending) > maxLine {
					r.pending, r.skipping = r.pending[:0], true
				}
			}
			return nil
		}
		r.off += int64(j + 1)
		line := b[:j]
		if len(r.pending) > 0 {
			r.pending = append(r.pending, line...)
			line = r.pending
		}
		b = b[j+1:]
		if r.skipping {
			r.skipping = false
		} else if err := r.line(line); err != nil {
			return err
		}
		r.pending = r.pending[:0]
	}
	return nil
}

// line handles one whole line, which ends at r.off.
func (r *reader) line(b []byte) error {
	rec, ok := parseLine(b)
	if !ok || !slices.Contains(r.opts.Sources, rec.Source) ||
		(!r.opts.Since.IsZero() && rec.Time.Before(r.opts.Since)) ||
		(!r.opts.Until.IsZero() && !rec.Time.Before(r.opts.Until)) {
		return nil
	}
	rec.Cursor = Cursor{Dev: r.id.dev, Inode: r.id.ino, Offset: r.off, Time: rec.Time}
	if r.inHistory && r.tail != nil {
		r.tail.add(rec)
		return nil
	}
	return r.out(rec)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// tailBuffer keeps the fewest records that hold the last lines lines of
// what it was given.
type tailBuffer struct {
	lines int
	recs  []Record
	// newlines counts the '\n' in recs.
	newlines int
}

func (t *tailBuffer) add(rec Record) {
	if t.lines == 0 {
		return
	}
	t.recs = append(t.recs, rec)
	t.newlines += bytes.Count(rec.Data, []byte{'\n'})
	// The first record can go once the ones after it hold lines+1
	// newlines: the last lines lines start after the (lines+1)-th newline
	// from the end at the latest, whatever comes later.
	for len(t.recs) > 1 {
		first := bytes.Count(t.recs[0].Data, []byte{'\n'})
		if t.newlines-first < t.lines+1 {
			break
		}
		t.newlines -= first
		t.recs[0] = Record{}
		t.recs = t.recs[1:]
	}
}

// flush emits the records holding the last lines lines, the first one cut
// to where those lines start.
func (t *tailBuffer) flush(out func(Record) error) error {
	recs := t.recs
	t.recs = nil
	if len(recs) == 0 {
		return nil
	}
	// The last lines lines start after the lines-th newline from the end,
	// or the (lines+1)-th when the data ends with one (the newline ending
	// the last line is not a line boundary to count).
	need := t.lines
	if last := recs[len(recs)-1].Data; len(last) > 0 && last[len(last)-1] == '\n' {
		need++
	}
	start, cut := 0, 0
	seen := 0
find:
	for i := len(recs) - 1; i >= 0; i-- {
		d := recs[i].Data
		for j := len(d) - 1; j >= 0; j-- {
			if d[j] != '\n' {
				continue
			}
			if seen++; seen == need {
				start, cut = i, j+1
				break find
			}
		}
	}
	if cut == len(recs[start].Data) {
		start, cut = start+1, 0
	}
	for i := start; i < len(recs); i++ {
		rec := recs[i]
		if i == start {
			rec.Data = rec.Data[cut:]
		}
		if err := out(rec); err != nil {
			return err
		}
	}
	return nil
}
