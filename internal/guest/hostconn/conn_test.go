package hostconn_test

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	gtypes "github.com/onsi/gomega/types"

	"github.com/microvm-dev/sandbox-operator/internal/guest/hostconn"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

func TestCallbacks(t *testing.T) {
	g := NewWithT(t)
	var mu sync.Mutex
	var control []protocol.Frame
	var output []string
	c, guest := newConn(t, hostconn.Options{
		OnControl: func(f protocol.Frame) {
			mu.Lock()
			defer mu.Unlock()
			control = append(control, f)
		},
		OnMainOutput: func(stderr bool, data []byte) {
			mu.Lock()
			defer mu.Unlock()
			prefix := "out:"
			if stderr {
				prefix = "err:"
			}
			output = append(output, prefix+string(data))
		},
	})
	hb := protocol.Heartbeat{ActiveSessions: 2, ActivitySeq: 9}
	g.Expect(guest.SendMsg(protocol.ControlStream, protocol.TypeHeartbeat, hb)).To(Succeed())
	g.Expect(guest.Send(protocol.Frame{Stream: protocol.MainOutputStream, Type: protocol.TypeStdout, Payload: []byte("hello")})).To(Succeed())
	g.Expect(guest.Send(protocol.Frame{Stream: protocol.MainOutputStream, Type: protocol.TypeStderr, Payload: []byte("oops")})).To(Succeed())
	// Unknown types and streams nobody opened are ignored.
	g.Expect(guest.Send(protocol.Frame{Stream: protocol.MainOutputStream, Type: 99, Payload: []byte("?")})).To(Succeed())
	g.Expect(guest.Send(protocol.Frame{Stream: 77, Type: protocol.TypeStdout, Payload: []byte("stray")})).To(Succeed())
	g.Expect(guest.SendMsg(protocol.ControlStream, protocol.TypeExit, protocol.Exit{Code: 4})).To(Succeed())

	g.Eventually(func() int { mu.Lock(); defer mu.Unlock(); return len(control) }).Should(Equal(2))
	mu.Lock()
	defer mu.Unlock()
	g.Expect(control[0]).To(Equal(protocol.Frame{Stream: 0, Type: protocol.TypeHeartbeat, Payload: mustJSON(hb)}))
	g.Expect(control[1]).To(Equal(protocol.Frame{Stream: 0, Type: protocol.TypeExit, Payload: mustJSON(protocol.Exit{Code: 4})}))
	g.Expect(output).To(Equal([]string{"out:hello", "err:oops"}))
	g.Expect(c.Err()).NotTo(HaveOccurred())
}

func TestSendControl(t *testing.T) {
	g := NewWithT(t)
	host, guestEnd := net.Pipe()
	c := hostconn.New(host, hostconn.Options{})
	defer func() { _ = guestEnd.Close(); _ = c.Close(); <-c.Done() }()
	sent := make(chan error, 1)
	go func() { sent <- c.SendControl(protocol.TypeShutdown, protocol.Shutdown{GraceMillis: 1500}) }()
	f, err := protocol.ReadFrame(guestEnd)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(<-sent).To(Succeed())
	g.Expect(f).To(Equal(protocol.Frame{Stream: 0, Type: protocol.TypeShutdown, Payload: mustJSON(protocol.Shutdown{GraceMillis: 1500})}))
}

func TestConnectionEnd(t *testing.T) {
	tests := []struct {
		name string
		end  func(c *hostconn.Conn, guest *scriptedGuest)
		// cause matches Conn.Err.
		cause gtypes.GomegaMatcher
	}{
		{
			name: "the guest hangs up",
			end:  func(_ *hostconn.Conn, guest *scriptedGuest) { guest.HangUp() },
			// The reader sees the EOF, or a write the closed pipe first.
			cause: Or(MatchError(io.EOF), MatchError(io.ErrClosedPipe)),
		},
		{
			name:  "the host closes",
			end:   func(c *hostconn.Conn, _ *scriptedGuest) { _ = c.Close() },
			cause: MatchError(hostconn.ErrClosed),
		},
		{
			name: "a write times out because the guest stopped reading",
			end: func(c *hostconn.Conn, guest *scriptedGuest) {
				guest.StopReading()
				// The first may still be read, not the second.
				_ = c.SendControl(protocol.TypeDrain, protocol.Drain{})
				_ = c.SendControl(protocol.TypeDrain, protocol.Drain{})
			},
			cause: MatchError(os.ErrDeadlineExceeded),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c, guest := newConn(t, hostconn.Options{WriteTimeout: 100 * time.Millisecond})
			ctx := context.Background()

			running, err := c.Exec(ctx, protocol.Exec{Argv: []string{"cat"}, Stdin: true})
			g.Expect(err).NotTo(HaveOccurred())
			_, err = running.Stdin.Write([]byte("buffered"))
			g.Expect(err).NotTo(HaveOccurred())
			g.Eventually(guest.echoed.Load).Should(BeEquivalentTo(len("buffered")))
			guest.Sync()
			starting := make(chan error, 1)
			go func() {
				_, err := c.Exec(ctx, protocol.Exec{Argv: []string{"silent"}})
				starting <- err
			}()
			reading := make(chan error, 1)
			go func() {
				_, err := c.ReadFile(ctx, "/hang")
				reading <- err
			}()
			upload, feed := io.Pipe()
			defer func() { _ = feed.Close() }()
			writing := make(chan error, 1)
			go func() { writing <- c.Untar(ctx, "/x", upload) }()
			_, _ = feed.Write([]byte("partial"))
			g.Eventually(guest.Streams).Should(HaveLen(4))

			tt.end(c, guest)
			g.Eventually(c.Done(), 2*time.Second).Should(BeClosed())
			g.Expect(c.Err()).To(tt.cause)

			closed := MatchError(hostconn.ErrClosed)
			for _, ch := range []chan error{starting, reading, writing} {
				g.Eventually(ch, 2*time.Second).Should(Receive(closed))
			}
			_, err = running.Wait()
			g.Expect(err).To(closed)
			// What arrived before the end can still be read; then the error.
			b, err := io.ReadAll(running.Stdout)
			g.Expect(string(b)).To(Equal("buffered"))
			g.Expect(err).To(closed)
			_, err = running.Stdin.Write([]byte("more"))
			g.Expect(err).To(closed)

			// New requests fail at once.
			_, err = c.Exec(ctx, protocol.Exec{Argv: []string{"cat"}})
			g.Expect(err).To(closed)
			_, err = c.Exists(ctx, "/")
			g.Expect(err).To(closed)
			g.Expect(c.SendControl(protocol.TypeDrain, protocol.Drain{})).To(closed)
		})
	}
}

func TestStreamIDsAreNeverReused(t *testing.T) {
	g := NewWithT(t)
	c, guest := newConn(t, hostconn.Options{})
	ctx := context.Background()
	p, err := c.Exec(ctx, protocol.Exec{Argv: []string{"emit", "10", "10"}})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = p.Wait()
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.Exec(ctx, protocol.Exec{Argv: []string{"missing"}})
	g.Expect(err).To(HaveOccurred())
	g.Expect(c.WriteFile(ctx, "/a", []byte("a"), 0)).To(Succeed())
	_, err = c.ReadFile(ctx, "/nope")
	g.Expect(err).To(HaveOccurred())
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	_, err = c.Exec(short, protocol.Exec{Argv: []string{"silent"}})
	g.Expect(err).To(HaveOccurred())
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() { _, _ = c.Exists(ctx, "/a") })
	}
	wg.Wait()

	ids := guest.Streams()
	g.Expect(ids).To(HaveLen(15))
	seen := map[uint32]bool{}
	for _, id := range ids {
		g.Expect(id).To(BeNumerically(">=", protocol.FirstHostStream))
		g.Expect(seen).NotTo(HaveKey(id))
		seen[id] = true
	}
	// Allocated in order, one by one.
	g.Expect(ids[:5]).To(Equal([]uint32{2, 3, 4, 5, 6}))
	for id := protocol.FirstHostStream; id < protocol.FirstHostStream+15; id++ {
		g.Expect(seen).To(HaveKey(id))
	}
}
