package sandboxlog

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/utils/ptr"
)

// writeSample writes, one millisecond apart (at(1) … at(8)), across files of
// 150 bytes (about two records each):
//
//	stdout "a1\na2"   stderr "e1\n"   stdout "\na3\n"   system "booted"
//	stdout "a4\n"     stderr "e2"     stdout "a5\na6\n" stdout "a7"
//
// so stdout and stderr hold the lines "a1\n" "a2e1\n" "\n" "a3\n" "a4\n"
// "e2a5\n" "a6\n" "a7".
func writeSample(t *testing.T, dir string) {
	t.Helper()
	w := openTest(t, dir, Options{MaxFileBytes: 150, MaxFiles: 100})
	write(t, w, SourceStdout, "a1\na2")
	write(t, w, SourceStderr, "e1\n")
	write(t, w, SourceStdout, "\na3\n")
	write(t, w, SourceSystem, "booted")
	write(t, w, SourceStdout, "a4\n")
	write(t, w, SourceStderr, "e2")
	write(t, w, SourceStdout, "a5\na6\n", "a7")
	NewWithT(t).Expect(len(logFiles(t, dir))).To(BeNumerically(">=", 3), "the sample spans rotated files")
}

func TestReadSelects(t *testing.T) {
	tests := []struct {
		name string
		opts ReadOptions
		want []string
	}{
		{
			name: "everything from stdout and stderr by default, across rotated files",
			want: []string{"a1\na2", "e1\n", "\na3\n", "a4\n", "e2", "a5\na6\n", "a7"},
		},
		{
			name: "system markers on request",
			opts: ReadOptions{Sources: AllSources},
			want: []string{"a1\na2", "e1\n", "\na3\n", "booted", "a4\n", "e2", "a5\na6\n", "a7"},
		},
		{
			name: "one source",
			opts: ReadOptions{Sources: []Source{SourceStderr}},
			want: []string{"e1\n", "e2"},
		},
		{
			name: "since is inclusive",
			opts: ReadOptions{Since: at(5)},
			want: []string{"a4\n", "e2", "a5\na6\n", "a7"},
		},
		{
			name: "until is exclusive",
			opts: ReadOptions{Until: at(3)},
			want: []string{"a1\na2", "e1\n"},
		},
		{
			name: "since after everything",
			opts: ReadOptions{Since: at(100)},
			want: nil,
		},
		{
			name: "tail counts lines, the unterminated end being one",
			opts: ReadOptions{Tail: ptr.To(1)},
			want: []string{"a7"},
		},
		{
			name: "tail cuts the first record to where the lines start",
			opts: ReadOptions{Tail: ptr.To(5)},
			want: []string{"a3\n", "a4\n", "e2", "a5\na6\n", "a7"},
		},
		{
			name: "tail across rotated files, lines spanning records of both sources",
			opts: ReadOptions{Tail: ptr.To(7)},
			want: []string{"a2", "e1\n", "\na3\n", "a4\n", "e2", "a5\na6\n", "a7"},
		},
		{
			name: "tail of one source",
			opts: ReadOptions{Tail: ptr.To(1), Sources: []Source{SourceStderr}},
			want: []string{"e2"},
		},
		{
			name: "tail with a trailing newline does not count an empty line",
			opts: ReadOptions{Tail: ptr.To(2), Sources: []Source{SourceStderr}, Until: at(6)},
			want: []string{"e1\n"},
		},
		{
			name: "tail after since",
			opts: ReadOptions{Tail: ptr.To(100), Since: at(7)},
			want: []string{"a5\na6\n", "a7"},
		},
		{
			name: "tail longer than the log is all of it",
			opts: ReadOptions{Tail: ptr.To(1000)},
			want: []string{"a1\na2", "e1\n", "\na3\n", "a4\n", "e2", "a5\na6\n", "a7"},
		},
		{
			name: "a negative tail is all, as kubectl's --tail=-1",
			opts: ReadOptions{Tail: ptr.To(-1)},
			want: []string{"a1\na2", "e1\n", "\na3\n", "a4\n", "e2", "a5\na6\n", "a7"},
		},
		{
			name: "tail zero is nothing",
			opts: ReadOptions{Tail: ptr.To(0)},
			want: nil,
		},
	}
	dir := t.TempDir()
	writeSample(t, dir)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			recs := readAll(t, dir, tt.opts)
			if tt.want == nil {
				g.Expect(recs).To(BeEmpty())
				return
			}
			g.Expect(datas(recs)).To(Equal(tt.want))
		})
	}
}

func TestTailCases(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		tail   int
		want   string
	}{
		{name: "last line without newline", chunks: []string{"a\nb"}, tail: 1, want: "b"},
		{name: "last line with newline", chunks: []string{"a\nb\n"}, tail: 1, want: "b\n"},
		{name: "a line split over records", chunks: []string{"a\nb", "c", "d\n"}, tail: 1, want: "bcd\n"},
		{name: "empty lines count", chunks: []string{"a\n\n\n"}, tail: 2, want: "\n\n"},
		{name: "a record ending where the lines start", chunks: []string{"a\n", "b\n"}, tail: 1, want: "b\n"},
		{name: "many lines in one record", chunks: []string{"1\n2\n3\n4\n5\n"}, tail: 3, want: "3\n4\n5\n"},
		{name: "many small records", chunks: strings.Split(strings.Repeat("x\n", 50), ""), tail: 2, want: "x\nx\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			dir := t.TempDir()
			w := openTest(t, dir, Options{MaxFileBytes: 200, MaxFiles: 1000})
			write(t, w, SourceStdout, tt.chunks...)
			g.Expect(joined(readAll(t, dir, ReadOptions{Tail: ptr.To(tt.tail)}))).To(Equal(tt.want))
		})
	}
}

func TestReadSkipsInvalidLines(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	w := openTest(t, dir, Options{})
	write(t, w, SourceStdout, "one\n")
	appendRaw(t, dir, "not json\n")
	appendRaw(t, dir, `{"t":"yesterday","s":"stdout","d":"bad time"}`+"\n")
	appendRaw(t, dir, `{"t":"2026-11-28T12:00:00Z","s":"stdout","d":"!!","e":"base64"}`+"\n")
	appendRaw(t, dir, `{"t":"2026-11-28T12:00:00Z","s":"stdout","d":"x","e":"rot13"}`+"\n")
	appendRaw(t, dir, strings.Repeat("z", 2*maxLine)+"\n")
	write(t, w, SourceStdout, "two\n")
	// A torn last line: the node crashed mid-write.
	appendRaw(t, dir, `{"t":"2026-11-28T12:00:00Z","s":"stdout","d":"thr`)

	g.Expect(datas(readAll(t, dir, ReadOptions{}))).To(Equal([]string{"one\n", "two\n"}))
}

func TestReadErrors(t *testing.T) {
	t.Run("a missing directory is not found", func(t *testing.T) {
		g := NewWithT(t)
		err := Read(context.Background(), filepath.Join(t.TempDir(), "nope"), ReadOptions{}, func(Record) error { return nil })
		g.Expect(err).To(MatchError(fs.ErrNotExist))
	})
	t.Run("an empty directory is an empty log", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(readAll(t, t.TempDir(), ReadOptions{})).To(BeEmpty())
	})
	t.Run("an error from out stops the read", func(t *testing.T) {
		g := NewWithT(t)
		dir := t.TempDir()
		writeSample(t, dir)
		n := 0
		err := Read(context.Background(), dir, ReadOptions{}, func(Record) error {
			n++
			if n == 2 {
				return errWriteFailed
			}
			return nil
		})
		g.Expect(err).To(MatchError(errWriteFailed))
		g.Expect(n).To(Equal(2))
	})
	t.Run("a canceled context stops the read", func(t *testing.T) {
		g := NewWithT(t)
		dir := t.TempDir()
		writeSample(t, dir)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		g.Expect(Read(ctx, dir, ReadOptions{}, func(Record) error { return nil })).To(MatchError(context.Canceled))
	})
}

func TestFollow(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	w := openTest(t, dir, Options{MaxFileBytes: 300, MaxFiles: 1000})
	write(t, w, SourceStdout, "old1\n", "old2\n")

	f := startFollow(dir, ReadOptions{})
	g.Expect(datas(f.next(t, 2))).To(Equal([]string{"old1\n", "old2\n"}))
	f.none(t)

	write(t, w, SourceStderr, "new1\n")
	g.Expect(datas(f.next(t, 1))).To(Equal([]string{"new1\n"}))

	// Enough to rotate many times, while the follower reads.
	var want []string
	for i := range 100 {
		want = append(want, fmt.Sprintf("rot%03d\n", i))
		write(t, w, SourceStdout, want[i])
	}
	g.Expect(len(logFiles(t, dir))).To(BeNumerically(">", 10))
	g.Expect(datas(f.next(t, 100))).To(Equal(want), "nothing lost or repeated across rotations")
	f.none(t)
	g.Expect(f.stop()).To(MatchError(context.Canceled))
}

func TestFollowTail(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	w := openTest(t, dir, Options{})
	write(t, w, SourceStdout, "a\nb\nc\n")

	f := startFollow(dir, ReadOptions{Tail: ptr.To(1)})
	g.Expect(datas(f.next(t, 1))).To(Equal([]string{"c\n"}))
	write(t, w, SourceStdout, "d\ne\n")
	g.Expect(datas(f.next(t, 1))).To(Equal([]string{"d\ne\n"}), "new records are emitted whole")
	g.Expect(f.stop()).To(MatchError(context.Canceled))

	f = startFollow(dir, ReadOptions{Tail: ptr.To(0)})
	f.none(t)
	write(t, w, SourceStdout, "f\n")
	g.Expect(datas(f.next(t, 1))).To(Equal([]string{"f\n"}), "tail 0 follows only new records")
	g.Expect(f.stop()).To(MatchError(context.Canceled))
}

func TestFollowWaitsForWholeLines(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	w := openTest(t, dir, Options{})
	write(t, w, SourceStdout, "one\n")
	f := startFollow(dir, ReadOptions{})
	g.Expect(datas(f.next(t, 1))).To(Equal([]string{"one\n"}))

	// A record caught half-written.
	appendRaw(t, dir, `{"t":"2026-11-28T12:00:00Z","s":"stdout",`)
	f.none(t)
	appendRaw(t, dir, `"d":"two\n"}`+"\n")
	g.Expect(datas(f.next(t, 1))).To(Equal([]string{"two\n"}))
	g.Expect(f.stop()).To(MatchError(context.Canceled))
}

func TestFollowBeforeTheLogExists(t *testing.T) {
	g := NewWithT(t)
	dir := filepath.Join(t.TempDir(), "sandbox", "logs")
	f := startFollow(dir, ReadOptions{})
	f.none(t)

	w := openTest(t, dir, Options{})
	write(t, w, SourceStdout, "hello\n")
	g.Expect(datas(f.next(t, 1))).To(Equal([]string{"hello\n"}))
	g.Expect(f.stop()).To(MatchError(context.Canceled))
}

func TestFollowAcrossAgentRestart(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	opts := Options{MaxFileBytes: 200, MaxFiles: 1000}
	w, err := Open(dir, opts)
	g.Expect(err).NotTo(HaveOccurred())
	write(t, w, SourceStdout, "before\n")
	f := startFollow(dir, ReadOptions{})
	g.Expect(datas(f.next(t, 1))).To(Equal([]string{"before\n"}))

	// The node crashes mid-record; the agent restarts and goes on.
	g.Expect(w.Close()).To(Succeed())
	appendRaw(t, dir, `{"t":"2026-11-28T12:00:00Z","s":"stdout","d":"lo`)
	w = openTest(t, dir, opts)
	for i := range 10 {
		write(t, w, SourceStdout, fmt.Sprintf("after%d\n", i))
	}
	g.Expect(joined(f.next(t, 10))).To(Equal("after0\nafter1\nafter2\nafter3\nafter4\nafter5\nafter6\nafter7\nafter8\nafter9\n"))
	f.none(t)
	g.Expect(f.stop()).To(MatchError(context.Canceled))
}

func TestCursorResume(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	w := openTest(t, dir, Options{MaxFileBytes: 200, MaxFiles: 5})
	for i := range 6 {
		write(t, w, SourceStdout, fmt.Sprintf("r%d\n", i))
	}
	recs := readAll(t, dir, ReadOptions{})
	g.Expect(recs).To(HaveLen(6))
	c := recs[1].Cursor

	// The cursor survives the wire and a rotation.
	parsed, err := ParseCursor(c.String())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(parsed.Time).To(BeTemporally("==", c.Time))
	g.Expect(parsed.Dev).To(Equal(c.Dev))
	g.Expect(parsed.Inode).To(Equal(c.Inode))
	g.Expect(parsed.Offset).To(Equal(c.Offset))
	write(t, w, SourceStdout, "r6\n", "r7\n")
	g.Expect(joined(readAll(t, dir, ReadOptions{After: parsed}))).To(Equal("r2\nr3\nr4\nr5\nr6\nr7\n"))

	// The cursor of the last record resumes a follower with nothing repeated.
	last := readAll(t, dir, ReadOptions{Tail: ptr.To(1)})[0].Cursor
	f := startFollow(dir, ReadOptions{After: last})
	f.none(t)
	write(t, w, SourceStdout, "r8\n")
	g.Expect(datas(f.next(t, 1))).To(Equal([]string{"r8\n"}))
	g.Expect(f.stop()).To(MatchError(context.Canceled))

	// A cursor into a file the cap dropped is stale.
	for i := range 100 {
		write(t, w, SourceStdout, fmt.Sprintf("more%d\n", i))
	}
	err = Read(context.Background(), dir, ReadOptions{After: c}, func(Record) error { return nil })
	g.Expect(err).To(MatchError(ErrStaleCursor))

	// A cursor whose record does not match is stale.
	c = readAll(t, dir, ReadOptions{Tail: ptr.To(2)})[0].Cursor
	for _, bad := range []Cursor{
		{Dev: c.Dev, Inode: c.Inode, Offset: c.Offset - 1, Time: c.Time},
		{Dev: c.Dev, Inode: c.Inode, Offset: c.Offset, Time: c.Time.Add(time.Nanosecond)},
		{Dev: c.Dev, Inode: c.Inode, Offset: c.Offset + 1<<20, Time: c.Time},
		{Dev: c.Dev, Inode: c.Inode + 1<<40, Offset: c.Offset, Time: c.Time},
	} {
		err = Read(context.Background(), dir, ReadOptions{After: bad}, func(Record) error { return nil })
		g.Expect(err).To(MatchError(ErrStaleCursor), "%+v", bad)
	}
	g.Expect(joined(readAll(t, dir, ReadOptions{After: c}))).To(Equal("more99\n"))
}

func TestParseCursor(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{name: "four hex numbers", in: "fd01-2a-10-187c3a5e2b1c4000"},
		{name: "too few parts", in: "fd01-2a-10", wantErr: true},
		{name: "not hex", in: "fd01-2a-10-xyz", wantErr: true},
		{name: "empty", in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c, err := ParseCursor(tt.in)
			if tt.wantErr {
				g.Expect(err).To(MatchError(ErrBadCursor))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(c.String()).To(Equal(tt.in))
		})
	}
}

func TestFollowRacesRotation(t *testing.T) {
	tests := []struct {
		name     string
		maxFiles int
		// wantAll is false when the cap may drop files before the follower
		// read them: then what it gets must still be in order, without
		// repeats.
		wantAll bool
	}{
		{name: "a follower keeping up gets every record once, in order", maxFiles: 10000, wantAll: true},
		{name: "a follower the cap overtakes loses records but repeats none", maxFiles: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			dir := t.TempDir()
			w := openTest(t, dir, Options{MaxFileBytes: 500, MaxFiles: tt.maxFiles})
			f := startFollow(dir, ReadOptions{})
			const n = 2000
			done := make(chan error, 1)
			go func() {
				for i := range n {
					if err := w.Write(SourceStdout, 0, fmt.Appendf(nil, "%d\n", i)); err != nil {
						done <- err
						return
					}
				}
				done <- w.Write(SourceStderr, 0, []byte("end\n"))
			}()
			g.Expect(<-done).To(Succeed())

			var recs []Record
			for len(recs) == 0 || string(recs[len(recs)-1].Data) != "end\n" {
				recs = append(recs, f.next(t, 1)...)
			}
			g.Expect(f.stop()).To(MatchError(context.Canceled))
			recs = recs[:len(recs)-1]
			if tt.wantAll {
				g.Expect(recs).To(HaveLen(n))
			}
			last := -1
			for _, r := range recs {
				var i int
				_, err := fmt.Sscanf(string(r.Data), "%d\n", &i)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(i).To(BeNumerically(">", last))
				if tt.wantAll {
					g.Expect(i).To(Equal(last + 1))
				}
				last = i
			}
		})
	}
}

func TestReadOvertakenByTheCap(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	w := openTest(t, dir, Options{MaxFileBytes: 200, MaxFiles: 2})
	write(t, w, SourceStdout, "old0\n", "old1\n", "old2\n", "old3\n", "old4\n")
	var got []string
	err := Read(context.Background(), dir, ReadOptions{}, func(r Record) error {
		got = append(got, string(r.Data))
		if len(got) == 1 {
			// While the reader is in the oldest file, the Writer rotates
			// it away twice: the reader finishes the file it holds open
			// and goes on with the oldest file left.
			for i := range 10 {
				write(t, w, SourceStdout, fmt.Sprintf("new%d\n", i))
			}
		}
		return nil
	})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got[:3]).To(Equal([]string{"old0\n", "old1\n", "old2\n"}), "the open file is read to its end")
	g.Expect(got[len(got)-1]).To(Equal("new9\n"))
	seen := map[string]bool{}
	for _, d := range got {
		g.Expect(seen[d]).To(BeFalse(), "%q repeated", d)
		seen[d] = true
	}
	g.Expect(seen).NotTo(HaveKey("new0\n"), "records dropped with their file are lost")
}
