package sandboxlog

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Source is where a record's bytes came from.
type Source string

const (
	// SourceStdout is the standard output of the main process or of an exec
	// session.
	SourceStdout Source = "stdout"
	// SourceStderr is the standard error of the main process or of an exec
	// session.
	SourceStderr Source = "stderr"
	// SourceSystem is a marker the agent writes itself: the VM booted, the
	// main process exited with a status, the VM stopped.
	SourceSystem Source = "system"
)

// DefaultSources are what Read emits when ReadOptions.Sources is empty: the
// processes' output, without the agent's own markers (as `kubectl logs`
// shows the container's output only).
var DefaultSources = []Source{SourceStdout, SourceStderr}

// AllSources are all the sources a Writer writes.
var AllSources = []Source{SourceStdout, SourceStderr, SourceSystem}

func (s Source) valid() bool {
	return s == SourceStdout || s == SourceStderr || s == SourceSystem
}

// MaxRecordData is the most bytes of data one record holds: Write splits
// longer data into several records with the same time. It keeps a line of
// the file (at worst 6 bytes per data byte, for JSON-escaped control bytes)
// small enough for a reader to buffer.
const MaxRecordData = 64 << 10

// maxLine is the longest line a reader accepts: the longest line a Writer
// writes, with room to spare. A longer run of bytes without a newline is
// garbage and skipped up to the next newline.
const maxLine = 6*MaxRecordData + 4<<10

// Record is one chunk of output.
type Record struct {
	// Time is when the agent received the chunk.
	Time time.Time
	// Source is the stream it came from.
	Source Source
	// Session is the exec session it belongs to; 0 is the main process.
	Session uint64
	// Data is the bytes, exactly as received. With ReadOptions.Tail, the
	// first record emitted may hold only the end of what was written.
	Data []byte
	// Cursor is the position right after this record, to resume from with
	// ReadOptions.After.
	Cursor Cursor
}

// wireRecord is a line of the file.
type wireRecord struct {
	T string `json:"t"`
	S Source `json:"s"`
	D string `json:"d"`
	// ID is the exec session; omitted for the main process.
	ID uint64 `json:"id,omitempty"`
	// E is "base64" when D is base64, omitted when D is the UTF-8 text.
	E string `json:"e,omitempty"`
}

const encodingBase64 = "base64"

// appendLine appends the line for one record, newline included, to buf.
func appendLine(buf *bytes.Buffer, t time.Time, s Source, session uint64, data []byte) error {
	w := wireRecord{T: t.UTC().Format(time.RFC3339Nano), S: s, ID: session}
	if utf8.Valid(data) {
		w.D = string(data)
	} else {
		w.D = base64.StdEncoding.EncodeToString(data)
		w.E = encodingBase64
	}
	enc := json.NewEncoder(buf)
	// Output is not HTML; keep <, > and & readable for `tail -f output.log`.
	enc.SetEscapeHTML(false)
	return enc.Encode(w) // Encode ends the line with '\n'.
}

// parseLine decodes one line (without its newline); ok is false for a line
// that is not a valid record (torn by a crash, or garbage), which readers
// skip.
func parseLine(line []byte) (rec Record, ok bool) {
	var w wireRecord
	if err := json.Unmarshal(line, &w); err != nil || w.S == "" {
		return rec, false
	}
	t, err := time.Parse(time.RFC3339Nano, w.T)
	if err != nil {
		return rec, false
	}
	rec = Record{Time: t, Source: w.S, Session: w.ID}
	switch w.E {
	case "":
		rec.Data = []byte(w.D)
	case encodingBase64:
		if rec.Data, err = base64.StdEncoding.DecodeString(w.D); err != nil {
			return rec, false
		}
	default:
		return rec, false
	}
	return rec, true
}

// splitData cuts data into pieces of at most MaxRecordData bytes, each cut
// moved back to the start of a UTF-8 character where there is one nearby,
// so that splitting text does not turn both halves into base64.
func splitData(data []byte) [][]byte {
	var parts [][]byte
	for len(data) > MaxRecordData {
		cut := MaxRecordData
		for i := cut; i > MaxRecordData-utf8.UTFMax; i-- {
			if utf8.RuneStart(data[i]) {
				cut = i
				break
			}
		}
		parts = append(parts, data[:cut])
		data = data[cut:]
	}
	return append(parts, data)
}

// Cursor is a position in a sandbox's log: right after one record. It stays
// valid across rotations (it names the file by identity, not by name) until
// the Writer drops that file.
type Cursor struct {
	// Dev and Inode identify the file.
	Dev, Inode uint64
	// Offset is the byte offset right after the record's line.
	Offset int64
	// Time is the record's time, checked on resume so that a file that
	// reuses a dropped file's inode is not mistaken for it.
	Time time.Time
}

// IsZero reports whether c is the zero Cursor (no position).
func (c Cursor) IsZero() bool { return c == Cursor{} }

// String encodes c for a client to send back, as
// "<dev>-<inode>-<offset>-<unix nanoseconds>" in hex.
func (c Cursor) String() string {
	return fmt.Sprintf("%x-%x-%x-%x", c.Dev, c.Inode, c.Offset, c.Time.UnixNano())
}

// ErrBadCursor is returned by ParseCursor for a string that is not a Cursor.
var ErrBadCursor = errors.New("malformed log cursor")

// ParseCursor decodes what Cursor.String encoded.
func ParseCursor(s string) (Cursor, error) {
	parts := strings.Split(s, "-")
	if len(parts) != 4 {
		return Cursor{}, fmt.Errorf("%w: %q", ErrBadCursor, s)
	}
	var n [4]uint64
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 16, 64)
		if err != nil {
			return Cursor{}, fmt.Errorf("%w: %q", ErrBadCursor, s)
		}
		n[i] = v
	}
	if n[2] > 1<<62 || n[3] > 1<<63-1 {
		return Cursor{}, fmt.Errorf("%w: %q", ErrBadCursor, s)
	}
	return Cursor{Dev: n[0], Inode: n[1], Offset: int64(n[2]), Time: time.Unix(0, int64(n[3])).UTC()}, nil
}
