package sandboxlog

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// testPoll keeps following tests fast.
const testPoll = 5 * time.Millisecond

var epoch = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

// testClock ticks one millisecond per reading, so that every record has its
// own time.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock { return &testClock{t: epoch} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

// at is the time of the n-th reading of a new testClock.
func at(n int) time.Time { return epoch.Add(time.Duration(n) * time.Millisecond) }

func openTest(t *testing.T, dir string, opts Options) *Writer {
	t.Helper()
	if opts.Clock == nil {
		opts.Clock = newClock().Now
	}
	w, err := Open(dir, opts)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = w.Close() })
	return w
}

func write(t *testing.T, w *Writer, s Source, data ...string) {
	t.Helper()
	for _, d := range data {
		NewWithT(t).Expect(w.Write(s, 0, []byte(d))).To(Succeed())
	}
}

func readAll(t *testing.T, dir string, opts ReadOptions) []Record {
	t.Helper()
	var recs []Record
	err := Read(context.Background(), dir, opts, func(r Record) error {
		recs = append(recs, r)
		return nil
	})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	return recs
}

func datas(recs []Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = string(r.Data)
	}
	return out
}

func joined(recs []Record) string { return strings.Join(datas(recs), "") }

// logFiles lists the names of the files in dir, sorted.
func logFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func appendRaw(t *testing.T, dir, s string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, currentFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	_, err = f.WriteString(s)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	NewWithT(t).Expect(f.Close()).To(Succeed())
}

// follower is a following Read running in the background.
type follower struct {
	recs   chan Record
	cancel context.CancelFunc
	done   chan error
}

func startFollow(dir string, opts ReadOptions) *follower {
	opts.Follow = true
	opts.PollInterval = testPoll
	ctx, cancel := context.WithCancel(context.Background())
	f := &follower{recs: make(chan Record, 1<<16), cancel: cancel, done: make(chan error, 1)}
	go func() {
		f.done <- Read(ctx, dir, opts, func(r Record) error {
			f.recs <- r
			return nil
		})
	}()
	return f
}

// next waits for n records.
func (f *follower) next(t *testing.T, n int) []Record {
	t.Helper()
	var recs []Record
	timeout := time.After(10 * time.Second)
	for len(recs) < n {
		select {
		case r := <-f.recs:
			recs = append(recs, r)
		case <-timeout:
			t.Fatalf("got %d records of %d, the last ones %q", len(recs), n, datas(recs[max(len(recs)-5, 0):]))
		}
	}
	return recs
}

// none checks that nothing arrives for a few polls.
func (f *follower) none(t *testing.T) {
	t.Helper()
	select {
	case r := <-f.recs:
		t.Fatalf("unexpected record %q", r.Data)
	case <-time.After(20 * testPoll):
	}
}

// stop ends the Read and returns its error.
func (f *follower) stop() error {
	f.cancel()
	return <-f.done
}
