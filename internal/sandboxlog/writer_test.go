package sandboxlog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	. "github.com/onsi/gomega"
)

func TestOpenValidatesOptions(t *testing.T) {
	tests := []struct {
		name      string
		opts      Options
		wantErr   string
		wantBytes int64
		wantFiles int
	}{
		{name: "the zero value is 10 MiB × 4 files, a 40 MiB cap", wantBytes: 10 << 20, wantFiles: 4},
		{name: "explicit sizes are kept", opts: Options{MaxFileBytes: 1000, MaxFiles: 7}, wantBytes: 1000, wantFiles: 7},
		{name: "a negative file size is refused", opts: Options{MaxFileBytes: -1}, wantErr: "must not be negative"},
		{name: "a single file is refused", opts: Options{MaxFiles: 1}, wantErr: "at least 2"},
		{name: "a negative file count is refused", opts: Options{MaxFiles: -3}, wantErr: "at least 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			w, err := Open(filepath.Join(t.TempDir(), "logs"), tt.opts)
			if tt.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tt.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			defer func() { g.Expect(w.Close()).To(Succeed()) }()
			g.Expect(w.opts.MaxFileBytes).To(Equal(tt.wantBytes))
			g.Expect(w.opts.MaxFiles).To(Equal(tt.wantFiles))
		})
	}
}

func TestWriteFormat(t *testing.T) {
	tests := []struct {
		name     string
		source   Source
		session  uint64
		data     []byte
		wantLine string
	}{
		{
			name: "text is written as is", source: SourceStdout, data: []byte("hello <world> & \"you\"\n"),
			wantLine: `{"t":"2026-11-28T12:00:00.001Z","s":"stdout","d":"hello <world> & \"you\"\n"}`,
		},
		{
			name: "an exec session carries its id", source: SourceStderr, session: 7, data: []byte("oops"),
			wantLine: `{"t":"2026-11-28T12:00:00.001Z","s":"stderr","d":"oops","id":7}`,
		},
		{
			name: "bytes that are not UTF-8 are base64", source: SourceStdout, data: []byte{0xff, 0xfe, 'a', 0},
			wantLine: `{"t":"2026-11-28T12:00:00.001Z","s":"stdout","d":"//5hAA==","e":"base64"}`,
		},
		{
			name: "system markers", source: SourceSystem, data: []byte("VM started"),
			wantLine: `{"t":"2026-11-28T12:00:00.001Z","s":"system","d":"VM started"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			dir := t.TempDir()
			w := openTest(t, dir, Options{})
			g.Expect(w.Write(tt.source, tt.session, tt.data)).To(Succeed())
			b, err := os.ReadFile(filepath.Join(dir, "output.log"))
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(string(b)).To(Equal(tt.wantLine + "\n"))

			recs := readAll(t, dir, ReadOptions{Sources: AllSources})
			g.Expect(recs).To(HaveLen(1))
			g.Expect(recs[0].Data).To(Equal(tt.data))
			g.Expect(recs[0].Source).To(Equal(tt.source))
			g.Expect(recs[0].Session).To(Equal(tt.session))
			g.Expect(recs[0].Time).To(BeTemporally("==", at(1)))
		})
	}
}

func TestWriteRoundTrip(t *testing.T) {
	binary := make([]byte, 3*MaxRecordData+17)
	for i := range binary {
		binary[i] = byte(i * 7)
	}
	// "é" is two bytes: one of them straddles the 64 KiB boundary.
	text := []byte(strings.Repeat("a", MaxRecordData-1) + strings.Repeat("é", 10) + "\n")
	tests := []struct {
		name        string
		data        []byte
		wantRecords int
		wantText    bool
	}{
		{name: "an empty write writes nothing", data: nil, wantRecords: 0},
		{name: "a short chunk is one record", data: []byte("x"), wantRecords: 1, wantText: true},
		{name: "binary data longer than a record is split and round-trips", data: binary, wantRecords: 4},
		{name: "text is split at a character boundary and stays text", data: text, wantRecords: 2, wantText: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			dir := t.TempDir()
			w := openTest(t, dir, Options{})
			g.Expect(w.Write(SourceStdout, 0, tt.data)).To(Succeed())

			recs := readAll(t, dir, ReadOptions{})
			g.Expect(recs).To(HaveLen(tt.wantRecords))
			var got []byte
			for _, r := range recs {
				g.Expect(len(r.Data)).To(BeNumerically("<=", MaxRecordData))
				g.Expect(r.Time).To(Equal(recs[0].Time), "the pieces of one write share its time")
				if tt.wantText {
					g.Expect(utf8.Valid(r.Data)).To(BeTrue())
				}
				got = append(got, r.Data...)
			}
			g.Expect(bytes.Equal(got, tt.data)).To(BeTrue())
			if tt.wantText {
				b, err := os.ReadFile(filepath.Join(dir, "output.log"))
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(string(b)).NotTo(ContainSubstring(`"e":"base64"`))
			}
		})
	}
}

func TestWriteRejects(t *testing.T) {
	g := NewWithT(t)
	w := openTest(t, t.TempDir(), Options{})
	g.Expect(w.Write("output", 0, []byte("x"))).To(MatchError(ContainSubstring("unknown sandbox log source")))
	g.Expect(w.Close()).To(Succeed())
	g.Expect(w.Write(SourceStdout, 0, []byte("x"))).To(MatchError(ErrClosed))
	g.Expect(w.Close()).To(Succeed(), "Close is idempotent")
}

func TestRotation(t *testing.T) {
	tests := []struct {
		name      string
		maxBytes  int64
		maxFiles  int
		writes    int
		wantFiles []string
	}{
		{
			name: "no rotation below the file size", maxBytes: 1 << 20, maxFiles: 4, writes: 50,
			wantFiles: []string{"output.log"},
		},
		{
			name: "rotation keeps the older files in order", maxBytes: 1000, maxFiles: 4, writes: 40,
			wantFiles: []string{"output.log", "output.log.1", "output.log.2"},
		},
		{
			name: "the cap drops the oldest file", maxBytes: 1000, maxFiles: 4, writes: 500,
			wantFiles: []string{"output.log", "output.log.1", "output.log.2", "output.log.3"},
		},
		{
			name: "two files at least", maxBytes: 1000, maxFiles: 2, writes: 500,
			wantFiles: []string{"output.log", "output.log.1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			dir := t.TempDir()
			w := openTest(t, dir, Options{MaxFileBytes: tt.maxBytes, MaxFiles: tt.maxFiles})
			for i := range tt.writes {
				write(t, w, SourceStdout, fmt.Sprintf("line %04d\n", i))
			}
			g.Expect(logFiles(t, dir)).To(Equal(tt.wantFiles))
			var total int64
			for _, name := range tt.wantFiles {
				fi, err := os.Stat(filepath.Join(dir, name))
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(fi.Size()).To(BeNumerically("<=", tt.maxBytes), name)
				total += fi.Size()
			}
			g.Expect(total).To(BeNumerically("<=", tt.maxBytes*int64(tt.maxFiles)))

			// What is left is the newest records, whole and in order.
			recs := readAll(t, dir, ReadOptions{})
			g.Expect(recs).NotTo(BeEmpty())
			first := tt.writes - len(recs)
			for i, r := range recs {
				g.Expect(string(r.Data)).To(Equal(fmt.Sprintf("line %04d\n", first+i)))
			}
			if len(tt.wantFiles) == tt.maxFiles {
				g.Expect(first).To(BeNumerically(">", 0))
			}
		})
	}
}

func TestRotationOversizedRecord(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	w := openTest(t, dir, Options{MaxFileBytes: 100, MaxFiles: 3})
	write(t, w, SourceStdout, "a", strings.Repeat("b", 300), "c")
	g.Expect(logFiles(t, dir)).To(Equal([]string{"output.log", "output.log.1", "output.log.2"}))
	g.Expect(datas(readAll(t, dir, ReadOptions{}))).To(Equal([]string{"a", strings.Repeat("b", 300), "c"}))
}

func TestReopenAppends(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	clock := newClock()
	opts := Options{MaxFileBytes: 300, MaxFiles: 10, Clock: clock.Now}
	w, err := Open(dir, opts)
	g.Expect(err).NotTo(HaveOccurred())
	write(t, w, SourceStdout, "one\n", "two\n", "three\n", "four\n")
	g.Expect(w.Close()).To(Succeed())

	// The agent restarts.
	w, err = Open(dir, opts)
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { g.Expect(w.Close()).To(Succeed()) }()
	write(t, w, SourceStderr, "five\n", "six\n", "seven\n")

	recs := readAll(t, dir, ReadOptions{})
	g.Expect(joined(recs)).To(Equal("one\ntwo\nthree\nfour\nfive\nsix\nseven\n"))
	g.Expect(len(logFiles(t, dir))).To(BeNumerically(">", 1), "the reopened writer keeps rotating")
}

func TestReopenAfterTornLine(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	w := openTest(t, dir, Options{})
	write(t, w, SourceStdout, "before\n")
	g.Expect(w.Close()).To(Succeed())
	// The node crashed in the middle of a record.
	appendRaw(t, dir, `{"t":"2026-11-28T12:00:01Z","s":"stdout","d":"lo`)

	g.Expect(joined(readAll(t, dir, ReadOptions{}))).To(Equal("before\n"), "readers skip the torn line")

	w = openTest(t, dir, Options{})
	write(t, w, SourceStdout, "after\n")
	g.Expect(joined(readAll(t, dir, ReadOptions{}))).To(Equal("before\nafter\n"),
		"the record after the torn line is not glued to it")
}

func TestConcurrentWriters(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	const writers, each = 8, 200
	// Files large enough to keep everything, small enough to rotate often.
	w := openTest(t, dir, Options{MaxFileBytes: 4 << 10, MaxFiles: 1000})
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for n := range writers {
		wg.Go(func() {
			for i := range each {
				errs <- w.Write(SourceStdout, uint64(n+1), fmt.Appendf(nil, "%d:%d\n", n, i))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(len(logFiles(t, dir))).To(BeNumerically(">", 10))

	recs := readAll(t, dir, ReadOptions{})
	g.Expect(recs).To(HaveLen(writers * each))
	next := make([]int, writers)
	for i, r := range recs {
		var n, k int
		_, err := fmt.Sscanf(string(r.Data), "%d:%d\n", &n, &k)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(r.Session).To(Equal(uint64(n + 1)))
		g.Expect(k).To(Equal(next[n]), "each writer's records in order")
		next[n]++
		if i > 0 {
			g.Expect(r.Time).To(BeTemporally(">=", recs[i-1].Time), "times never go backwards")
		}
	}
}

func TestDefaultCap(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 48 MiB")
	}
	g := NewWithT(t)
	dir := t.TempDir()
	w := openTest(t, dir, Options{})
	chunk := bytes.Repeat([]byte("0123456789abcdef"), MaxRecordData/16)
	for range 48 << 20 / len(chunk) {
		g.Expect(w.Write(SourceStdout, 0, chunk)).To(Succeed())
	}
	var total int64
	for _, name := range logFiles(t, dir) {
		fi, err := os.Stat(filepath.Join(dir, name))
		g.Expect(err).NotTo(HaveOccurred())
		total += fi.Size()
	}
	g.Expect(logFiles(t, dir)).To(Equal([]string{"output.log", "output.log.1", "output.log.2", "output.log.3"}))
	g.Expect(total).To(BeNumerically("<=", 40<<20))
	g.Expect(total).To(BeNumerically(">", 30<<20))
}

// errWriteFailed is returned by out in tests of Read's error path.
var errWriteFailed = errors.New("client went away")
