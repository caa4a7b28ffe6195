package hostconn_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	gtypes "github.com/onsi/gomega/types"

	"github.com/microvm-dev/sandbox-operator/internal/guest/hostconn"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

func TestFileOperations(t *testing.T) {
	ctx := context.Background()
	seed := func(g Gomega, c *hostconn.Conn) {
		g.Expect(c.Mkdir(ctx, "/d", 0, false)).To(Succeed())
		g.Expect(c.WriteFile(ctx, "/d/a", []byte("alpha"), 0)).To(Succeed())
		g.Expect(c.WriteFile(ctx, "/d/b", []byte("beta"), 0o600)).To(Succeed())
	}
	tests := []struct {
		name string
		do   func(c *hostconn.Conn) (any, error)
		want gtypes.GomegaMatcher
		// kind is the GuestError's kind ("" when it succeeds).
		kind protocol.ErrorKind
	}{
		{
			name: "ReadFile returns what WriteFile wrote",
			do:   func(c *hostconn.Conn) (any, error) { b, err := c.ReadFile(ctx, "/d/a"); return string(b), err },
			want: Equal("alpha"),
		},
		{
			name: "ReadFile of an empty file is empty",
			do: func(c *hostconn.Conn) (any, error) {
				if err := c.WriteFile(ctx, "/d/empty", nil, 0); err != nil {
					return nil, err
				}
				b, err := c.ReadFile(ctx, "/d/empty")
				return len(b), err
			},
			want: Equal(0),
		},
		{
			name: "ReadFile of a missing file is NotFound",
			do:   func(c *hostconn.Conn) (any, error) { return c.ReadFile(ctx, "/d/nope") },
			kind: protocol.ErrNotFound,
		},
		{
			name: "File returns the guest's FileResult",
			do: func(c *hostconn.Conn) (any, error) {
				return c.File(ctx, protocol.FileRequest{Op: protocol.FileRead, Path: "/d/b"}, nil, io.Discard)
			},
			want: Equal(protocol.FileResult{Bytes: 4}),
		},
		{
			name: "Stat describes a file",
			do:   func(c *hostconn.Conn) (any, error) { return c.Stat(ctx, "/d/b") },
			want: Equal(protocol.FileInfo{Name: "/d/b", Kind: protocol.KindFile, Size: 4, Mode: 0o644}),
		},
		{
			name: "List lists a directory by name",
			do: func(c *hostconn.Conn) (any, error) {
				entries, err := c.List(ctx, "/d")
				var names []string
				for _, e := range entries {
					names = append(names, e.Name)
				}
				return names, err
			},
			want: Equal([]string{"a", "b"}),
		},
		{
			name: "Exists says yes and no",
			do: func(c *hostconn.Conn) (any, error) {
				yes, err1 := c.Exists(ctx, "/d/a")
				no, err2 := c.Exists(ctx, "/d/z")
				return []bool{yes, no}, errors.Join(err1, err2)
			},
			want: Equal([]bool{true, false}),
		},
		{
			name: "Mkdir of an existing directory is Exists, unless recursive",
			do: func(c *hostconn.Conn) (any, error) {
				if err := c.Mkdir(ctx, "/d", 0, true); err != nil {
					return nil, err
				}
				return nil, c.Mkdir(ctx, "/d", 0, false)
			},
			kind: protocol.ErrExists,
		},
		{
			name: "Copy and Rename move content, Remove removes it",
			do: func(c *hostconn.Conn) (any, error) {
				err := errors.Join(c.Copy(ctx, "/d/a", "/d/c", false), c.Rename(ctx, "/d/c", "/d/e"), c.Remove(ctx, "/d/b", false))
				entries, lerr := c.List(ctx, "/d")
				var names []string
				for _, e := range entries {
					names = append(names, e.Name)
				}
				e, rerr := c.ReadFile(ctx, "/d/e")
				return append(names, string(e)), errors.Join(err, lerr, rerr)
			},
			want: Equal([]string{"a", "e", "alpha"}),
		},
		{
			name: "Remove of a missing path is NotFound",
			do:   func(c *hostconn.Conn) (any, error) { return nil, c.Remove(ctx, "/nope", true) },
			kind: protocol.ErrNotFound,
		},
		{
			name: "Tar and Untar round-trip a tree",
			do: func(c *hostconn.Conn) (any, error) {
				var archive bytes.Buffer
				if err := c.Tar(ctx, "/d", &archive); err != nil {
					return nil, err
				}
				var names []string
				tr := tar.NewReader(bytes.NewReader(archive.Bytes()))
				for h, err := tr.Next(); err == nil; h, err = tr.Next() {
					names = append(names, h.Name)
				}
				if err := c.Untar(ctx, "/copy", bytes.NewReader(archive.Bytes())); err != nil {
					return nil, err
				}
				b, err := c.ReadFile(ctx, "/copy/d/b")
				return append(names, string(b)), err
			},
			want: Equal([]string{"d/a", "d/b", "beta"}),
		},
		{
			name: "a write the guest refuses at once returns its error without sending everything",
			do: func(c *hostconn.Conn) (any, error) {
				return nil, c.WriteFile(ctx, "/ro/big", make([]byte, 8<<20), 0)
			},
			kind: protocol.ErrReadOnly,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c, _ := newConn(t, hostconn.Options{})
			seed(g, c)
			got, err := tt.do(c)
			if tt.kind != "" {
				g.Expect(hostconn.IsKind(err, tt.kind)).To(BeTrue(), "error %v", err)
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(tt.want)
		})
	}
}

func TestLargeFileTransfer(t *testing.T) {
	g := NewWithT(t)
	c, _ := newConn(t, hostconn.Options{StreamBuffer: 1 << 20})
	ctx := context.Background()
	data := make([]byte, 10<<20+17)
	_, _ = rand.Read(data)
	res, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileWrite, Path: "/big"}, bytes.NewReader(data), nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Bytes).To(BeEquivalentTo(len(data)))
	h := sha256.New()
	res, err = c.File(ctx, protocol.FileRequest{Op: protocol.FileRead, Path: "/big"}, nil, h)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Bytes).To(BeEquivalentTo(len(data)))
	g.Expect([32]byte(h.Sum(nil))).To(Equal(sha256.Sum256(data)))
}

// failingWriter fails after n bytes.
type failingWriter struct{ n int }

var errDisk = errors.New("disk full")

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return w.n, errDisk
	}
	w.n -= len(p)
	return len(p), nil
}

func TestFileGivenUp(t *testing.T) {
	ctx := context.Background()
	t.Run("a failing download cancels the stream, and the connection goes on", func(t *testing.T) {
		g := NewWithT(t)
		c, guest := newConn(t, hostconn.Options{StreamBuffer: 64 << 10})
		g.Expect(c.WriteFile(ctx, "/big", make([]byte, 4<<20), 0)).To(Succeed())
		_, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileRead, Path: "/big"}, nil, &failingWriter{n: 100000})
		g.Expect(err).To(MatchError(errDisk))
		g.Eventually(guest.cancels).Should(Receive(Equal(guest.Streams()[1])))
		b, err := c.ReadFile(ctx, "/big")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(b).To(HaveLen(4 << 20))
	})
	t.Run("a canceled context cancels a read that hangs", func(t *testing.T) {
		g := NewWithT(t)
		c, guest := newConn(t, hostconn.Options{})
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		_, err := c.ReadFile(short, "/hang")
		g.Expect(err).To(MatchError(context.DeadlineExceeded))
		g.Eventually(guest.cancels).Should(Receive(Equal(guest.Streams()[0])))
	})
	t.Run("a canceled context cancels an upload whose reader blocks", func(t *testing.T) {
		g := NewWithT(t)
		c, guest := newConn(t, hostconn.Options{})
		upload, feed := io.Pipe()
		defer func() { _ = feed.Close() }()
		short, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := c.File(short, protocol.FileRequest{Op: protocol.FileWrite, Path: "/partial"}, upload, nil)
			done <- err
		}()
		_, err := feed.Write([]byte("some"))
		g.Expect(err).NotTo(HaveOccurred())
		cancel()
		g.Eventually(done).Should(Receive(MatchError(context.Canceled)))
		g.Eventually(guest.cancels).Should(Receive(Equal(guest.Streams()[0])))
		ok, err := c.Exists(ctx, "/partial")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(ok).To(BeFalse(), "a canceled write is not committed")
	})
}
