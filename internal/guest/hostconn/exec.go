package hostconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// killSignal is the signal that Process.Close and an abandoned Exec send
// to a process the host no longer follows.
const killSignal = "SIGKILL"

// Process is a process started in the guest by Conn.Exec.
type Process struct {
	// PID is the process's id in the guest.
	PID int
	// Stdin writes to the process's standard input (split into frames);
	// Close sends the end of input. Its writes fail with ErrNoStdin unless
	// the Exec asked for Stdin.
	Stdin io.WriteCloser
	// Stdout and Stderr read the process's output (with a tty, everything
	// comes on Stdout and Stderr is at EOF at once). They return io.EOF
	// after the output's last byte, an error wrapping ErrClosed when the
	// connection ended first, and ErrSessionClosed after Close. Each
	// buffers at most Options.StreamBuffer bytes; see "Back-pressure" in
	// the package documentation: read both, or Close the Process.
	Stdout, Stderr io.Reader

	c      *Conn
	stream uint32
	stdout *buffer
	stderr *buffer
	// started is closed when the guest answered the Exec (or the
	// connection ended first).
	started chan struct{}
	// exited is closed when the session ended: TypeExited, or the
	// connection's end.
	exited chan struct{}

	mu        sync.Mutex
	startErr  error         // the Exec's failure, once started is closed
	exit      protocol.Exit // valid when waitErr is nil or a *GuestError
	waitErr   error         // Wait's error
	abandoned bool          // Exec gave up waiting, or Close was called
	// lateErrs are the guest's errors after the start (ErrTimeout, an
	// unknown signal…), in order.
	lateErrs []*GuestError
}

// Exec starts a process in the guest. It returns when the guest reported
// it running (TypeExecStarted), with a *GuestError when the guest refused
// it (ErrNotFound, ErrPermissionDenied, ErrDraining…), or with ctx's error
// when ctx ended first (the process, should it start after all, is
// killed). ctx bounds the start only: once running, the process lives
// until it exits, Signal kills it or Close is called.
func (c *Conn) Exec(ctx context.Context, req protocol.Exec) (*Process, error) {
	p := &Process{
		c:       c,
		stdout:  newBuffer(c.opts.StreamBuffer),
		stderr:  newBuffer(c.opts.StreamBuffer),
		started: make(chan struct{}),
		exited:  make(chan struct{}),
	}
	p.Stdout, p.Stderr = p.stdout, p.stderr
	p.Stdin = &stdinWriter{p: p, open: req.Stdin}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("starting %q: %w", argv0(req.Argv), err)
	}
	id, err := c.open(p)
	if err != nil {
		return nil, fmt.Errorf("starting %q: %w", argv0(req.Argv), err)
	}
	if err := c.writeMsg(id, protocol.TypeExec, req); err != nil {
		c.forget(id)
		return nil, fmt.Errorf("starting %q: %w", argv0(req.Argv), err)
	}
	select {
	case <-p.started:
	case <-ctx.Done():
		p.mu.Lock()
		select {
		case <-p.started:
			// It answered meanwhile: the answer wins.
		default:
			p.abandoned = true
			p.mu.Unlock()
			return nil, fmt.Errorf("starting %q: %w", argv0(req.Argv), ctx.Err())
		}
		p.mu.Unlock()
	}
	p.mu.Lock()
	err = p.startErr
	p.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("starting %q: %w", argv0(req.Argv), err)
	}
	return p, nil
}

func argv0(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	return argv[0]
}

func (p *Process) bind(stream uint32) { p.stream = stream }

// receive handles a frame of the exec's stream, on the reader goroutine.
func (p *Process) receive(f protocol.Frame) bool {
	select {
	case <-p.started:
	default:
		return p.receiveAnswer(f)
	}
	switch f.Type {
	case protocol.TypeStdout, protocol.TypeStderr:
		b := p.stdout
		if f.Type == protocol.TypeStderr {
			b = p.stderr
		}
		b.put(f.Payload)
		if f.Flags&protocol.FlagEnd != 0 {
			b.end(io.EOF)
		}
	case protocol.TypeError:
		var e protocol.Error
		if err := protocol.Decode(f, &e); err != nil {
			e = protocol.Error{Kind: protocol.ErrInternal, Message: err.Error()}
		}
		p.mu.Lock()
		p.lateErrs = append(p.lateErrs, guestError(e))
		p.mu.Unlock()
	case protocol.TypeExited:
		var ex protocol.Exit
		err := protocol.Decode(f, &ex)
		p.stdout.end(io.EOF)
		p.stderr.end(io.EOF)
		p.mu.Lock()
		defer p.mu.Unlock()
		select {
		case <-p.exited: // the connection ended meanwhile
		default:
			p.exit = ex
			p.waitErr = err
			for _, e := range p.lateErrs {
				if e.Kind == protocol.ErrTimeout {
					p.waitErr = e
				}
			}
			close(p.exited)
		}
		return true
	}
	// Other types are newer than this host: ignored.
	return false
}

// receiveAnswer handles the guest's answer to the Exec.
func (p *Process) receiveAnswer(f protocol.Frame) bool {
	var startErr error
	switch f.Type {
	case protocol.TypeExecStarted:
		var st protocol.ExecStarted
		if err := protocol.Decode(f, &st); err != nil {
			// A process runs, and nothing identifies it: kill it.
			startErr = err
			p.c.background(func() { _ = p.signal(killSignal) })
			break
		}
		p.PID = st.PID
	case protocol.TypeError:
		var e protocol.Error
		if err := protocol.Decode(f, &e); err != nil {
			startErr = err
		} else {
			startErr = guestError(e)
		}
	default:
		return false
	}
	p.mu.Lock()
	p.startErr = startErr
	abandoned := p.abandoned
	close(p.started)
	p.mu.Unlock()
	if startErr != nil {
		p.end(startErr)
		return true
	}
	if abandoned {
		// Exec gave up on it: kill it and drop its output until it exits.
		p.stdout.discard()
		p.stderr.discard()
		p.c.background(func() { _ = p.signal(killSignal) })
	}
	return false
}

// fail ends the session: the connection ended.
func (p *Process) fail(err error) {
	p.mu.Lock()
	select {
	case <-p.started:
	default:
		p.startErr = err
		close(p.started)
	}
	p.mu.Unlock()
	p.end(err)
}

// end ends a session that did not exit: its outputs and Wait fail with
// err.
func (p *Process) end(err error) {
	p.stdout.end(err)
	p.stderr.end(err)
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.exited:
		return
	default:
	}
	p.waitErr = err
	close(p.exited)
}

// Wait waits until the process exited and returns its exit. Its output
// precedes the exit on the wire, so once Wait returned all of it is in
// Stdout and Stderr (it can still be read; Wait does not wait for that).
// The error wraps ErrClosed when the connection ended before the exit
// (the exit is then unknown), and is the guest's *GuestError of kind
// protocol.ErrTimeout (with a valid exit) when the guest killed the
// process for its Exec.TimeoutMillis.
func (p *Process) Wait() (protocol.Exit, error) {
	<-p.exited
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit, p.waitErr
}

// Errors returns the errors the guest reported on the session after the
// start, which did not end it: ErrTimeout (also Wait's error), or
// ErrInvalid for a Signal the guest does not know (the protocol does not
// answer Signal and Resize otherwise, so their failures only show here).
func (p *Process) Errors() []*GuestError {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*GuestError(nil), p.lateErrs...)
}

// Exited is closed when Wait would return without blocking.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Resize tells the guest that a tty exec's window changed.
func (p *Process) Resize(rows, cols uint16) error {
	return p.send(protocol.TypeResize, protocol.Resize{Rows: rows, Cols: cols})
}

// Signal sends a signal, by name ("SIGTERM"), to the process.
func (p *Process) Signal(name string) error {
	return p.send(protocol.TypeSignal, protocol.Signal{Signal: name})
}

// signal sends a signal even to an abandoned process.
func (p *Process) signal(name string) error {
	return p.c.writeMsg(p.stream, protocol.TypeSignal, protocol.Signal{Signal: name})
}

// send sends a message on the session's stream unless it ended.
func (p *Process) send(t protocol.Type, msg any) error {
	if err := p.usable(); err != nil {
		return err
	}
	return p.c.writeMsg(p.stream, t, msg)
}

// usable is nil while the host may still send on the session.
func (p *Process) usable() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.abandoned {
		return ErrSessionClosed
	}
	select {
	case <-p.exited:
		if p.waitErr != nil && errors.Is(p.waitErr, ErrClosed) {
			return p.waitErr
		}
		return errExited
	default:
		return nil
	}
}

// errExited is returned for input and signals sent after the exit.
var errExited = errors.New("the process has exited")

// Close ends the host's interest in the process: it kills it (SIGKILL)
// unless it exited already, and discards its output, buffered and to come,
// so that it can never stall the connection. Reads then fail with
// ErrSessionClosed; Wait still reports the exit.
func (p *Process) Close() error {
	p.mu.Lock()
	if p.abandoned {
		p.mu.Unlock()
		return nil
	}
	p.abandoned = true
	p.mu.Unlock()
	p.stdout.discard()
	p.stderr.discard()
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := p.signal(killSignal); err != nil && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("killing process %d: %w", p.PID, err)
	}
	return nil
}

// stdinWriter is Process.Stdin.
type stdinWriter struct {
	p    *Process
	open bool // the Exec asked for stdin

	mu     sync.Mutex // serialises writes, so that chunks never interleave
	closed bool
}

func (w *stdinWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.open {
		return 0, ErrNoStdin
	}
	if w.closed {
		return 0, io.ErrClosedPipe
	}
	n := 0
	for n < len(b) {
		if err := w.p.usable(); err != nil {
			return n, err
		}
		k := min(len(b)-n, chunkSize)
		if err := w.p.c.write(protocol.Frame{Stream: w.p.stream, Type: protocol.TypeStdin, Payload: b[n : n+k]}); err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}

// Close sends the end of input (an empty TypeStdin frame with FlagEnd).
func (w *stdinWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.open || w.closed {
		return nil
	}
	w.closed = true
	if err := w.p.usable(); err != nil {
		if errors.Is(err, errExited) {
			return nil
		}
		return err
	}
	return w.p.c.write(protocol.Frame{Stream: w.p.stream, Type: protocol.TypeStdin, Flags: protocol.FlagEnd})
}
