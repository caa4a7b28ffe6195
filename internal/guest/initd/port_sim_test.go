package initd

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// virtioPortSim simulates the guest's end of a virtio-serial port whose
// host end is QEMU's server socket, with the semantics of Linux's
// virtio_console as Go's os.File presents them:
//
//   - a read returns io.EOF (the driver's 0-byte read) while no host is
//     connected, at once, and a blocked read wakes with io.EOF when the host
//     disconnects; bytes a host sent and the guest did not read yet are
//     still read first (the driver's buffer outlives the connection);
//   - a write blocks while no host is connected and is delivered to the
//     next host that connects, unless a write deadline interrupts it
//     (os.ErrDeadlineExceeded), as it does for the poller-backed os.File.
//
// Hosts connect with Connect and go with simHost.Close. Connect waits
// until the guest's reader has seen the previous host go (an EOF), as the
// node agent's pause before it redials makes it in practice: a guest
// cannot tell a reconnection faster than its reader wakes from none at all.
// HoldReads lets a test pause the guest's reader, to widen the window
// between a host's disconnection and the guest noticing it.
type virtioPortSim struct {
	mu       sync.Mutex
	cond     *sync.Cond
	host     *simHost     // nil while no host is connected
	inbuf    bytes.Buffer // host → guest bytes not read yet
	deadline time.Time
	timer    *time.Timer
	held     bool // HoldReads
	stuck    bool // HoldWrites
	blocked  int  // guest writes waiting for a host
	// gone counts disconnections, seen the EOFs the guest read after one.
	gone, seen int
}

func newVirtioPortSim() *virtioPortSim {
	p := &virtioPortSim{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// simHost is one host connection: the node agent's end.
type simHost struct {
	port     *virtioPortSim
	toHost   bytes.Buffer
	closed   bool
	deadline time.Time
	timer    *time.Timer
}

// Connect connects a new host; one must not be connected already.
func (p *virtioPortSim) Connect(t *testing.T) *simHost {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.host != nil {
		t.Fatal("virtioPortSim: a host is already connected")
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.seen < p.gone {
		if time.Now().After(deadline) {
			t.Fatal("virtioPortSim: the guest did not notice the last host go within 5 s")
		}
		p.mu.Unlock()
		time.Sleep(time.Millisecond)
		p.mu.Lock()
	}
	p.host = &simHost{port: p}
	p.cond.Broadcast()
	return p.host
}

// HoldReads pauses (true) or resumes (false) the guest's reads.
func (p *virtioPortSim) HoldReads(hold bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held = hold
	p.cond.Broadcast()
}

// HoldWrites makes guest writes block (true) as they do when the host does
// not read and the virtqueue is full, or lets them go (false).
func (p *virtioPortSim) HoldWrites(hold bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stuck = hold
	p.cond.Broadcast()
}

// WaitBlockedWriter waits until a guest write is blocked for want of a
// host.
func (p *virtioPortSim) WaitBlockedWriter(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		n := p.blocked
		p.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no guest write blocked within 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// Read is the guest's read.
func (p *virtioPortSim) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		switch {
		case p.held:
		case p.inbuf.Len() > 0:
			return p.inbuf.Read(b)
		case p.host == nil:
			p.seen = p.gone
			return 0, io.EOF
		}
		p.cond.Wait()
	}
}

// Write is the guest's write.
func (p *virtioPortSim) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked++
	defer func() { p.blocked-- }()
	for {
		if !p.deadline.IsZero() && !time.Now().Before(p.deadline) {
			return 0, os.ErrDeadlineExceeded
		}
		if p.host != nil && !p.stuck {
			p.host.toHost.Write(b)
			p.cond.Broadcast()
			return len(b), nil
		}
		p.cond.Wait()
	}
}

// SetWriteDeadline interrupts blocked writes at t, as os.File's does.
func (p *virtioPortSim) SetWriteDeadline(t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deadline = t
	p.timer = rearm(p.timer, t, p.wake)
	p.cond.Broadcast()
	return nil
}

func (p *virtioPortSim) wake() {
	p.mu.Lock()
	p.cond.Broadcast()
	p.mu.Unlock()
}

// rearm replaces timer by one that calls wake at t (none for a zero t).
func rearm(timer *time.Timer, t time.Time, wake func()) *time.Timer {
	if timer != nil {
		timer.Stop()
	}
	if t.IsZero() {
		return nil
	}
	return time.AfterFunc(time.Until(t), wake)
}

// Read is the host's read; it returns io.EOF once the host closed and
// os.ErrDeadlineExceeded after its read deadline.
func (h *simHost) Read(b []byte) (int, error) {
	p := h.port
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if h.toHost.Len() > 0 {
			return h.toHost.Read(b)
		}
		if h.closed {
			return 0, io.EOF
		}
		if !h.deadline.IsZero() && !time.Now().Before(h.deadline) {
			return 0, os.ErrDeadlineExceeded
		}
		p.cond.Wait()
	}
}

// SetReadDeadline bounds the host's reads.
func (h *simHost) SetReadDeadline(t time.Time) error {
	p := h.port
	p.mu.Lock()
	defer p.mu.Unlock()
	h.deadline = t
	h.timer = rearm(h.timer, t, p.wake)
	return nil
}

// Write is the host's write.
func (h *simHost) Write(b []byte) (int, error) {
	p := h.port
	p.mu.Lock()
	defer p.mu.Unlock()
	if h.closed {
		return 0, io.ErrClosedPipe
	}
	p.inbuf.Write(b)
	p.cond.Broadcast()
	return len(b), nil
}

// Close disconnects the host.
func (h *simHost) Close() error {
	p := h.port
	p.mu.Lock()
	defer p.mu.Unlock()
	h.closed = true
	if p.host == h {
		p.host = nil
		p.gone++
	}
	p.cond.Broadcast()
	return nil
}

// deadlineReader is a host end whose reads can time out.
type deadlineReader interface {
	io.Reader
	SetReadDeadline(time.Time) error
}

// nextFrame reads the next frame that is not a heartbeat from r, failing
// the test after timeout.
func nextFrame(t *testing.T, r deadlineReader, timeout time.Duration) protocol.Frame {
	t.Helper()
	for {
		f := readAnyFrame(t, r, timeout)
		if f.Type != protocol.TypeHeartbeat {
			return f
		}
	}
}

// readAnyFrame reads the next frame from r, failing the test after timeout.
func readAnyFrame(t *testing.T, r deadlineReader, timeout time.Duration) protocol.Frame {
	t.Helper()
	if err := r.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	f, err := protocol.ReadFrame(r)
	if err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	return f
}

// expectNoFrame checks that nothing but heartbeats arrives on r for d.
func expectNoFrame(t *testing.T, r deadlineReader, d time.Duration) {
	t.Helper()
	if err := r.SetReadDeadline(time.Now().Add(d)); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := protocol.ReadFrame(r)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return
		}
		if err != nil {
			t.Fatalf("reading: %v", err)
		}
		if f.Type != protocol.TypeHeartbeat {
			t.Fatalf("unexpected frame of type %d: %s", f.Type, f.Payload)
		}
	}
}
