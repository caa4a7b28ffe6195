package hostconn_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/microvm-dev/sandbox-operator/internal/guest/hostconn"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// readAll reads r to its end in the background.
func readAll(r io.Reader) <-chan []byte {
	ch := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		ch <- b
	}()
	return ch
}

func TestExec(t *testing.T) {
	tests := []struct {
		name       string
		req        protocol.Exec
		stdin      string
		wantStart  protocol.ErrorKind // a *GuestError from Exec
		wantStdout string
		wantStderr string
		wantExit   protocol.Exit
		wantWait   protocol.ErrorKind // a *GuestError from Wait
	}{
		{
			name:       "cat echoes its stdin and exits at its end",
			req:        protocol.Exec{Argv: []string{"cat"}, Stdin: true},
			stdin:      "hello\nworld\n",
			wantStdout: "hello\nworld\n",
		},
		{
			name:       "an empty stdin ends at once",
			req:        protocol.Exec{Argv: []string{"cat"}, Stdin: true},
			wantStdout: "",
		},
		{
			name:       "stdout and stderr are told apart, and the exit code comes with Wait",
			req:        protocol.Exec{Argv: []string{"emit", "5", "2", "stderr"}},
			wantStdout: string(pattern(protocol.FirstHostStream, 5)),
			wantStderr: "done\n",
			wantExit:   protocol.Exit{Code: 3},
		},
		{
			name:      "a missing program is a GuestError of kind NotFound",
			req:       protocol.Exec{Argv: []string{"nope"}},
			wantStart: protocol.ErrNotFound,
		},
		{
			name:     "the guest's timeout comes with Wait, and the exit too",
			req:      protocol.Exec{Argv: []string{"timeout"}, TimeoutMillis: 10},
			wantExit: protocol.Exit{Code: -1, Signal: "SIGKILL"},
			wantWait: protocol.ErrTimeout,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c, _ := newConn(t, hostconn.Options{})
			p, err := c.Exec(context.Background(), tt.req)
			if tt.wantStart != "" {
				var ge *hostconn.GuestError
				g.Expect(errors.As(err, &ge)).To(BeTrue(), "error %v", err)
				g.Expect(ge.Kind).To(Equal(tt.wantStart))
				g.Expect(hostconn.IsKind(err, tt.wantStart)).To(BeTrue())
				g.Expect(p).To(BeNil())
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(p.PID).To(Equal(1000 + int(protocol.FirstHostStream)))
			stdout, stderr := readAll(p.Stdout), readAll(p.Stderr)
			if tt.req.Stdin {
				_, err := io.WriteString(p.Stdin, tt.stdin)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(p.Stdin.Close()).To(Succeed())
			}
			exit, err := p.Wait()
			if tt.wantWait != "" {
				g.Expect(hostconn.IsKind(err, tt.wantWait)).To(BeTrue(), "error %v", err)
			} else {
				g.Expect(err).NotTo(HaveOccurred())
			}
			g.Expect(exit).To(Equal(tt.wantExit))
			g.Expect(string(<-stdout)).To(Equal(tt.wantStdout))
			g.Expect(string(<-stderr)).To(Equal(tt.wantStderr))
		})
	}
}

func TestStdin(t *testing.T) {
	t.Run("writes after Close fail, and a second Close is a no-op", func(t *testing.T) {
		g := NewWithT(t)
		c, _ := newConn(t, hostconn.Options{})
		p, err := c.Exec(context.Background(), protocol.Exec{Argv: []string{"cat"}, Stdin: true})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(p.Stdin.Close()).To(Succeed())
		g.Expect(p.Stdin.Close()).To(Succeed())
		_, err = p.Stdin.Write([]byte("late"))
		g.Expect(err).To(MatchError(io.ErrClosedPipe))
		_, err = p.Wait()
		g.Expect(err).NotTo(HaveOccurred())
	})
	t.Run("an exec without stdin refuses writes", func(t *testing.T) {
		g := NewWithT(t)
		c, _ := newConn(t, hostconn.Options{})
		p, err := c.Exec(context.Background(), protocol.Exec{Argv: []string{"sleep"}})
		g.Expect(err).NotTo(HaveOccurred())
		_, err = p.Stdin.Write([]byte("x"))
		g.Expect(err).To(MatchError(hostconn.ErrNoStdin))
		g.Expect(p.Close()).To(Succeed())
	})
	t.Run("input after the exit fails", func(t *testing.T) {
		g := NewWithT(t)
		c, _ := newConn(t, hostconn.Options{})
		p, err := c.Exec(context.Background(), protocol.Exec{Argv: []string{"cat"}, Stdin: true})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(p.Signal("SIGTERM")).To(Succeed())
		exit, err := p.Wait()
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(exit).To(Equal(protocol.Exit{Code: -1, Signal: "SIGTERM"}))
		_, err = p.Stdin.Write([]byte("x"))
		g.Expect(err).To(HaveOccurred())
		g.Expect(p.Signal("SIGTERM")).NotTo(Succeed())
	})
}

func TestSignalAndResize(t *testing.T) {
	g := NewWithT(t)
	c, guest := newConn(t, hostconn.Options{})
	p, err := c.Exec(context.Background(), protocol.Exec{Argv: []string{"tty"}, Tty: true})
	g.Expect(err).NotTo(HaveOccurred())
	stdout := readAll(p.Stdout)
	g.Expect(p.Resize(40, 100)).To(Succeed())
	g.Expect(p.Resize(50, 132)).To(Succeed())
	// A signal the guest does not know: an error that does not end it.
	g.Expect(p.Signal("SIGBOGUS")).To(Succeed())
	g.Eventually(guest.signals).Should(Receive(Equal(signalEvent{p2s(p), "SIGBOGUS"})))
	g.Expect(p.Signal("SIGHUP")).To(Succeed())
	g.Eventually(guest.signals).Should(Receive(Equal(signalEvent{p2s(p), "SIGHUP"})))
	exit, err := p.Wait()
	g.Expect(err).NotTo(HaveOccurred(), "an unknown signal is no error of the process")
	g.Expect(exit).To(Equal(protocol.Exit{Code: -1, Signal: "SIGHUP"}))
	g.Expect(string(<-stdout)).To(Equal("40x100\n50x132\n"))
	g.Expect(p.Errors()).To(Equal([]*hostconn.GuestError{{Kind: protocol.ErrInvalid, Message: `unknown signal "SIGBOGUS"`}}))
}

// p2s is the stream of a process started by the scripted guest (its PID
// is 1000 + its stream).
func p2s(p *hostconn.Process) uint32 { return uint32(p.PID - 1000) }

func TestConcurrentExecsInterleaveOnOneConnection(t *testing.T) {
	g := NewWithT(t)
	c, _ := newConn(t, hostconn.Options{})
	const sessions, size = 8, 1 << 20
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for range sessions {
		wg.Go(func() {
			// 4 KiB frames: the sessions' frames interleave on the wire.
			p, err := c.Exec(context.Background(), protocol.Exec{Argv: []string{"emit", strconv.Itoa(size), "4096", "stderr"}})
			if err != nil {
				errs <- err
				return
			}
			stderr := readAll(p.Stderr)
			out, err := io.ReadAll(p.Stdout)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(out, pattern(p2s(p), size)) {
				errs <- fmt.Errorf("stream %d: stdout differs (%d bytes)", p2s(p), len(out))
			}
			if e := string(<-stderr); e != "done\n" {
				errs <- fmt.Errorf("stream %d: stderr %q", p2s(p), e)
			}
			if exit, err := p.Wait(); err != nil || exit.Code != 3 {
				errs <- fmt.Errorf("stream %d: exit %+v, %v", p2s(p), exit, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		g.Expect(err).NotTo(HaveOccurred())
	}
}

func TestLargeTransferThroughASession(t *testing.T) {
	g := NewWithT(t)
	c, _ := newConn(t, hostconn.Options{})
	data := make([]byte, 10<<20)
	_, _ = rand.Read(data)
	p, err := c.Exec(context.Background(), protocol.Exec{Argv: []string{"cat"}, Stdin: true})
	g.Expect(err).NotTo(HaveOccurred())
	sum := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		_, _ = io.Copy(h, p.Stdout)
		sum <- [32]byte(h.Sum(nil))
	}()
	// Uneven writes, some larger than a frame.
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 3<<20+12345)
		_, err := p.Stdin.Write(rest[:n])
		g.Expect(err).NotTo(HaveOccurred())
		rest = rest[n:]
	}
	g.Expect(p.Stdin.Close()).To(Succeed())
	_, err = p.Wait()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(<-sum).To(Equal(sha256.Sum256(data)))
}

func TestExitedComesAfterAllOutput(t *testing.T) {
	g := NewWithT(t)
	// A small buffer: the output cannot all be buffered before the exit,
	// so the guest waits for the reader, which waits for the consumer.
	c, _ := newConn(t, hostconn.Options{StreamBuffer: 64 << 10})
	const size = 1 << 20
	p, err := c.Exec(context.Background(), protocol.Exec{Argv: []string{"emit", strconv.Itoa(size), "1000"}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Consistently(p.Exited(), 100*time.Millisecond).ShouldNot(BeClosed(), "the exit while output is unread")
	out, err := io.ReadAll(p.Stdout)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(Equal(pattern(p2s(p), size)))
	exit, err := p.Wait()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(exit.Code).To(Equal(3))

	// With room for all of it, Wait returns first and the output is all
	// there to read.
	p, err = c.Exec(context.Background(), protocol.Exec{Argv: []string{"emit", "50000", "1000"}})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = p.Wait()
	g.Expect(err).NotTo(HaveOccurred())
	out, err = io.ReadAll(p.Stdout)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(Equal(pattern(p2s(p), 50000)))
}

func TestSlowConsumer(t *testing.T) {
	const limit, size = 256 << 10, 4 << 20
	t.Run("the guest is held back, and no data is lost", func(t *testing.T) {
		g := NewWithT(t)
		c, guest := newConn(t, hostconn.Options{StreamBuffer: limit})
		p, err := c.Exec(context.Background(), protocol.Exec{Argv: []string{"emit", strconv.Itoa(size), "16384"}})
		g.Expect(err).NotTo(HaveOccurred())
		time.Sleep(200 * time.Millisecond)
		// The buffer, the frame the reader holds and the one net.Pipe holds.
		g.Expect(guest.emitted.Load()).To(BeNumerically("<=", limit+2*16384))
		var got bytes.Buffer
		buf := make([]byte, 1000)
		for {
			n, err := p.Stdout.Read(buf)
			got.Write(buf[:n])
			if err == io.EOF {
				break
			}
			g.Expect(err).NotTo(HaveOccurred())
			if got.Len()%(100<<10) < 1000 {
				time.Sleep(time.Millisecond) // slow
			}
		}
		g.Expect(got.Bytes()).To(Equal(pattern(p2s(p), size)))
	})
	t.Run("it stalls the connection until it reads or closes its session", func(t *testing.T) {
		g := NewWithT(t)
		c, guest := newConn(t, hostconn.Options{StreamBuffer: limit})
		slow, err := c.Exec(context.Background(), protocol.Exec{Argv: []string{"emit", strconv.Itoa(size), "16384"}})
		g.Expect(err).NotTo(HaveOccurred())
		g.Eventually(guest.emitted.Load).Should(BeNumerically(">", limit), "the buffer filling up")
		started := make(chan error, 1)
		go func() {
			p, err := c.Exec(context.Background(), protocol.Exec{Argv: []string{"sleep"}})
			if err == nil {
				err = p.Close()
			}
			started <- err
		}()
		g.Consistently(started, 200*time.Millisecond).ShouldNot(Receive(), "an answer behind the unread output")
		g.Expect(slow.Close()).To(Succeed())
		g.Eventually(started, 5*time.Second).Should(Receive(BeNil()))
		_, err = slow.Stdout.Read(make([]byte, 1))
		g.Expect(err).To(MatchError(hostconn.ErrSessionClosed))
	})
}

func TestExecContext(t *testing.T) {
	t.Run("an exec given up on is killed when it starts after all", func(t *testing.T) {
		g := NewWithT(t)
		c, guest := newConn(t, hostconn.Options{})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := c.Exec(ctx, protocol.Exec{Argv: []string{"silent"}})
		g.Expect(err).To(MatchError(context.DeadlineExceeded))
		stream := guest.Streams()[0]
		g.Expect(guest.SendMsg(stream, protocol.TypeExecStarted, protocol.ExecStarted{PID: 7})).To(Succeed())
		g.Expect(guest.Send(protocol.Frame{Stream: stream, Type: protocol.TypeStdout, Payload: []byte("dropped")})).To(Succeed())
		g.Eventually(guest.signals).Should(Receive(Equal(signalEvent{stream, "SIGKILL"})))
		g.Expect(guest.SendMsg(stream, protocol.TypeExited, protocol.Exit{Code: -1, Signal: "SIGKILL"})).To(Succeed())
		// The connection goes on.
		p, err := c.Exec(context.Background(), protocol.Exec{Argv: []string{"emit", "3", "3"}})
		g.Expect(err).NotTo(HaveOccurred())
		_, err = p.Wait()
		g.Expect(err).NotTo(HaveOccurred())
	})
	t.Run("Close kills a running process", func(t *testing.T) {
		g := NewWithT(t)
		c, guest := newConn(t, hostconn.Options{})
		p, err := c.Exec(context.Background(), protocol.Exec{Argv: []string{"sleep"}})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(c.ActiveSessions()).To(Equal(1))
		g.Expect(p.Close()).To(Succeed())
		g.Eventually(guest.signals).Should(Receive(Equal(signalEvent{p2s(p), "SIGKILL"})))
		exit, err := p.Wait()
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(exit.Signal).To(Equal("SIGKILL"))
		g.Eventually(c.ActiveSessions).Should(BeZero())
	})
}
