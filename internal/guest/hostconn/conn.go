package hostconn

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// DefaultWriteTimeout bounds one frame's write when Options.WriteTimeout
// is 0: a guest that reads nothing for this long is considered stuck.
const DefaultWriteTimeout = 10 * time.Second

// DefaultStreamBuffer bounds each output of a session when
// Options.StreamBuffer is 0.
const DefaultStreamBuffer = 4 << 20

// chunkSize is the payload of the data frames the host sends (stdin, file
// uploads). Smaller than protocol.MaxPayload so that an upload delays an
// interactive session's keystrokes by at most one small frame.
const chunkSize = 64 << 10

// Options configure a Conn.
type Options struct {
	// OnControl receives every frame of protocol.ControlStream (Exit,
	// Error, Heartbeat…; the payload is still JSON). It runs on the reader
	// goroutine: it must return promptly, and while it runs no other frame
	// is read. nil drops them.
	OnControl func(f protocol.Frame)
	// OnMainOutput receives the main process's output
	// (protocol.MainOutputStream), stderr telling TypeStderr from
	// TypeStdout. It runs on the reader goroutine, like OnControl, and
	// owns data. nil drops it.
	OnMainOutput func(stderr bool, data []byte)
	// WriteTimeout bounds each frame's write (0: DefaultWriteTimeout). A
	// write that times out ends the connection.
	WriteTimeout time.Duration
	// StreamBuffer bounds the bytes buffered for each output of a session
	// (0: DefaultStreamBuffer); see "Back-pressure" in the package
	// documentation.
	StreamBuffer int
}

// Conn is the host's side of one guest connection, after the handshake.
// Its methods are safe for concurrent use.
type Conn struct {
	conn net.Conn
	opts Options

	// wmu serialises writes to conn.
	wmu sync.Mutex

	mu      sync.Mutex
	next    uint32              // the next stream id to allocate
	streams map[uint32]receiver // open sessions by stream
	err     error               // why the connection ended; nil while open
	// closed is closed when err is set.
	closed chan struct{}

	// done is closed when the reader goroutine and the goroutines it
	// started have returned.
	done chan struct{}
	bg   sync.WaitGroup // goroutines the reader started
}

// receiver is an open session, as the reader goroutine sees it.
type receiver interface {
	// receive takes one frame of the session's stream; it may block while
	// the session's buffers are full. It reports whether the frame ended
	// the stream.
	receive(f protocol.Frame) (end bool)
	// fail ends the session: the connection ended with err.
	fail(err error)
	// bind tells the session its stream, before any frame of it can
	// arrive.
	bind(stream uint32)
}

// New takes over conn, on which the handshake is done, and starts reading
// it. The Conn owns conn from now on: Close closes it.
func New(conn net.Conn, opts Options) *Conn {
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.StreamBuffer <= 0 {
		opts.StreamBuffer = DefaultStreamBuffer
	}
	c := &Conn{
		conn:    conn,
		opts:    opts,
		next:    protocol.FirstHostStream,
		streams: make(map[uint32]receiver),
		closed:  make(chan struct{}),
		done:    make(chan struct{}),
	}
	go c.readLoop()
	return c
}

// Done is closed when the connection has ended and its reader goroutine
// returned; every session has failed by then.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the connection ended (nil while it is open): ErrClosed after
// Close, the read's or write's error otherwise (io.EOF: the guest hung
// up).
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// ActiveSessions counts the sessions open on the host's side: execs not
// yet exited (or given up on but not yet exited), file operations not yet
// answered. Unlike the guest's Heartbeat.ActiveSessions it is current even
// while the reader waits for a slow consumer (heartbeats are not read
// then), so an idle timeout should count it as activity too.
func (c *Conn) ActiveSessions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams)
}

// Close closes the connection and fails every open session. It does not
// wait for the reader goroutine (so a callback may call it); Done does.
func (c *Conn) Close() error {
	c.shutdown(ErrClosed)
	return nil
}

// SendControl sends a control message (TypeShutdown, TypeDrain…) on
// protocol.ControlStream.
func (c *Conn) SendControl(t protocol.Type, msg any) error {
	f, err := protocol.Encode(protocol.ControlStream, t, msg)
	if err != nil {
		return err
	}
	return c.write(f)
}

// closedError is the error of a session or request cut by the end of the
// connection.
func closedError(cause error) error {
	if errors.Is(cause, ErrClosed) {
		return cause
	}
	return fmt.Errorf("%w: %w", ErrClosed, cause)
}

// shutdown ends the connection with cause (the first cause wins) and
// fails the open sessions.
func (c *Conn) shutdown(cause error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = cause
	close(c.closed)
	open := c.streams
	c.streams = nil
	c.mu.Unlock()
	_ = c.conn.Close()
	err := closedError(cause)
	for _, r := range open {
		r.fail(err)
	}
}

// readLoop demultiplexes the guest's frames until the connection ends.
func (c *Conn) readLoop() {
	defer close(c.done)
	defer c.bg.Wait()
	for {
		f, err := protocol.ReadFrame(c.conn)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("the guest hung up: %w", err)
			} else {
				err = fmt.Errorf("reading from the guest: %w", err)
			}
			c.shutdown(err)
			return
		}
		switch f.Stream {
		case protocol.ControlStream:
			if c.opts.OnControl != nil {
				c.opts.OnControl(f)
			}
		case protocol.MainOutputStream:
			if c.opts.OnMainOutput != nil && len(f.Payload) > 0 &&
				(f.Type == protocol.TypeStdout || f.Type == protocol.TypeStderr) {
				c.opts.OnMainOutput(f.Type == protocol.TypeStderr, f.Payload)
			}
		default:
			c.mu.Lock()
			r := c.streams[f.Stream]
			c.mu.Unlock()
			if r == nil {
				// A session the host gave up on, or one the guest should not
				// have sent: streams are never reused, so nothing to mix up.
				continue
			}
			if r.receive(f) {
				c.forget(f.Stream)
			}
		}
	}
}

// open allocates the next stream for r.
func (c *Conn) open(r receiver) (uint32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, closedError(c.err)
	}
	if c.next == 0 {
		return 0, ErrStreamsExhausted
	}
	id := c.next
	c.next++ // wraps to 0 after the last id: exhausted
	r.bind(id)
	c.streams[id] = r
	return id, nil
}

// forget removes a stream: later frames on it are dropped.
func (c *Conn) forget(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.streams, id)
}

// background runs fn on a goroutine that Done waits for; it is called on
// the reader goroutine only, so that it never races with bg.Wait.
func (c *Conn) background(fn func()) {
	c.bg.Go(fn)
}

// write writes one frame within the write timeout. A failed write ends the
// connection: part of the frame may be on the port.
func (c *Conn) write(f protocol.Frame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	select {
	case <-c.closed:
		return closedError(c.Err())
	default:
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.opts.WriteTimeout))
	if err := protocol.WriteFrame(c.conn, f); err != nil {
		if errors.Is(err, protocol.ErrFrameTooLarge) {
			return err // nothing was written
		}
		c.shutdown(fmt.Errorf("writing to the guest: %w", err))
		return closedError(c.Err())
	}
	return nil
}

// writeMsg encodes and writes a JSON message on stream.
func (c *Conn) writeMsg(stream uint32, t protocol.Type, msg any) error {
	f, err := protocol.Encode(stream, t, msg)
	if err != nil {
		return err
	}
	return c.write(f)
}
