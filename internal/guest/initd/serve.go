package initd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// AgentName is the name sandbox-init reports in its Hello.
const AgentName = "sandbox-init"

// ErrShutdown is returned by Serve when the host asked for a shutdown.
var ErrShutdown = errors.New("initd: shutdown requested")

// errHostGone ends one connection: the host side of the port closed.
var errHostGone = errors.New("initd: the host disconnected")

// errStale is a frame dropped because it was meant for an earlier
// connection.
var errStale = errors.New("initd: frame for an earlier connection dropped")

// MainProcess is a started main process.
type MainProcess struct {
	// PID is its process id in the guest.
	PID int
	// Wait waits for its end and reports it; nil when the Start had no
	// program (the sandbox was only configured).
	Wait func() protocol.Exit
}

// MainRunning reports whether a main process was started and has not
// ended yet.
func (s *Session) MainRunning() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.main != nil && s.main.PID != 0 && s.main.Exit == nil
}

// Session is sandbox-init's side of the conversation with the node agent
// over the port, across reconnections of the agent.
//
// The port behaves as Linux's virtio_console does when QEMU's end is a
// server socket that the node agent dials: a read returns EOF while no host
// is connected (and a blocked read wakes with EOF when the host goes), and
// a write blocks while no host is connected. So the guest speaks first on
// every connection: on EOF, Serve queues a fresh Hello (with the main
// process's state) and waits until it is written, which is when the next
// host has connected; then it reads again. No polling is needed, and no
// Hello is lost to a host that connects between two polls.
//
// Every frame is written by one writer goroutine, tagged with the
// connection it belongs to. On EOF the connection number advances in the
// same critical section that queues the Hello, so nothing meant for the new
// connection can precede its Hello, and frames meant for the old one are
// dropped. A write that was already blocked for the old connection is
// interrupted with a write deadline (the port's os.File is in Go's poller,
// so it supports one), lest it reach the next host before the Hello.
//
// The guest learns of a disconnection only when its reader runs while no
// host is connected. A host that reconnects before that (QEMU handles a
// close and the next accept in microseconds) is indistinguishable from
// the old one: the driver reports the port as connected all along, and
// the new host reads heartbeats instead of a Hello. So the host must leave
// the port unconnected for a moment before it dials again (the guest
// noticed within 4-6 ms in the VM test, on an idle TCG vCPU), and should
// treat a first frame that is not a Hello as this case: close, pause
// longer, dial again.
type Session struct {
	// Port is the agent port (the virtio-serial device in the guest). When
	// it has SetWriteDeadline, a write blocked at a disconnection is
	// interrupted (see above).
	Port io.ReadWriter
	// BootNanos is the guest's CLOCK_BOOTTIME when sandbox-init started.
	BootNanos int64
	// Logf logs to the console.
	Logf func(format string, args ...any)
	// RunMain starts the sandbox's main process (TypeStart). nil refuses
	// TypeStart.
	RunMain func(protocol.Start) (MainProcess, error)
	// RunExec starts an exec session's process (TypeExec) for the
	// accepted Start (zero before one), which gives the Exec its defaults
	// and rlimits. nil refuses exec sessions.
	RunExec func(protocol.Start, protocol.Exec) (*ExecProcess, error)
	// RunFile starts a file operation (TypeFile) for the accepted Start.
	// nil refuses file operations.
	RunFile func(protocol.Start, protocol.FileRequest) (*FileProcess, error)
	// Metrics reads the guest's resource usage for each heartbeat; nil
	// sends none.
	Metrics func() *protocol.Metrics
	// HeartbeatInterval is how often TypeHeartbeat is sent while a host is
	// connected and has acknowledged the Hello; 0 means
	// protocol.HeartbeatInterval.
	HeartbeatInterval time.Duration

	// Version is the protocol version agreed with the current host (0
	// until its HelloAck). Read it after Serve returned.
	Version int
	// Shutdown is the host's shutdown request (after Serve returned
	// ErrShutdown).
	Shutdown protocol.Shutdown

	// wmu is held by the writer around each write to Port, so that a
	// disconnection can wait for an interrupted write to return.
	wmu sync.Mutex

	mu     sync.Mutex
	cond   *sync.Cond // on mu: out changed, or closed
	out    []outFrame // frames for the writer, in order
	closed bool       // Serve returned: the writer stops
	conn   uint64     // the current connection, counted from 0
	acked  bool       // the current host sent its HelloAck
	// kicking is set while hostGone interrupts a blocked write.
	kicking bool
	// main is the main process's state once a Start was accepted.
	main *protocol.MainState
	// activity counts host-driven operations (Heartbeat.ActivitySeq).
	activity uint64
	// start is the accepted Start (exec and file defaults).
	start protocol.Start
	// draining is set by TypeDrain: new sessions that change anything are
	// refused.
	draining bool
	// streams are the open host-driven sessions, by stream.
	streams map[uint32]*hostStream
	// mainOut holds the main process's output for the host (mainout.go).
	mainOut mainOutput
	// heartbeatQueued is set while a heartbeat waits for the writer: a host
	// that stops reading gets one stale heartbeat, not a growing queue.
	heartbeatQueued bool
}

// outFrame is a frame queued for the writer.
type outFrame struct {
	conn  uint64
	frame protocol.Frame
	// done, when set, receives the write's result.
	done chan error
}

// writeDeadliner is a port whose blocked writes can be interrupted.
type writeDeadliner interface {
	SetWriteDeadline(time.Time) error
}

// Serve says Hello, waits for the HelloAck and answers requests, saying
// Hello again each time the host goes and another comes, until the host
// asks for a shutdown (ErrShutdown) or the port fails.
func (s *Session) Serve() error {
	s.mu.Lock()
	s.cond = sync.NewCond(&s.mu)
	hello := s.helloLocked()
	s.mu.Unlock()
	go s.writeLoop()
	stop := make(chan struct{})
	go s.heartbeats(stop)
	go s.mainOutputLoop()
	defer func() {
		close(stop)
		s.mu.Lock()
		s.closed = true
		s.cond.Broadcast()
		s.mu.Unlock()
	}()
	for {
		// The write blocks until a host is connected.
		if err := <-hello; err != nil {
			return fmt.Errorf("sending hello: %w", err)
		}
		err := s.serveConn()
		if !errors.Is(err, errHostGone) {
			return err
		}
		s.Logf("the host disconnected; saying hello to the next one")
		hello = s.hostGone()
	}
}

// helloLocked queues a Hello for the current connection, reporting the
// main process's state, and returns the channel that receives its write's
// result. s.mu is held.
func (s *Session) helloLocked() chan error {
	h := protocol.Hello{Version: protocol.Version, Agent: AgentName, BootNanos: s.BootNanos}
	if s.main != nil {
		m := *s.main
		h.Main = &m
	}
	done := make(chan error, 1)
	f, err := protocol.Encode(0, protocol.TypeHello, h)
	if err != nil {
		done <- err
		return done
	}
	s.enqueueLocked(outFrame{conn: s.conn, frame: f, done: done})
	return done
}

// hostGone starts the next connection: it queues its Hello and interrupts
// a write still blocked for the old one.
func (s *Session) hostGone() chan error {
	d, canInterrupt := s.Port.(writeDeadliner)
	s.mu.Lock()
	// Their output has nowhere to go (protocol's exec.go).
	s.killStreamsLocked(s.conn)
	s.conn++
	s.acked = false
	s.Version = 0
	// The writer waits while kicking: the deadline below must not hit the
	// new Hello.
	s.kicking = canInterrupt
	hello := s.helloLocked()
	s.mu.Unlock()
	if !canInterrupt {
		return hello
	}
	if err := d.SetWriteDeadline(time.Unix(1, 0)); err != nil {
		s.Logf("cannot interrupt a blocked write: %v", err)
	} else {
		// Once the writer lets go of the port, its write has returned.
		s.wmu.Lock()
		err := d.SetWriteDeadline(time.Time{})
		s.wmu.Unlock()
		if err != nil {
			s.Logf("clearing the port's write deadline: %v", err)
		}
	}
	s.mu.Lock()
	s.kicking = false
	s.cond.Broadcast()
	s.mu.Unlock()
	return hello
}

// serveConn reads and answers frames until the host goes (errHostGone),
// asks for a shutdown (ErrShutdown) or the port fails.
func (s *Session) serveConn() error {
	acked := false
	for {
		f, err := protocol.ReadFrame(s.Port)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			// A partial frame dies with its connection.
			return errHostGone
		}
		if err != nil {
			return fmt.Errorf("reading from the port: %w", err)
		}
		if !acked && f.Type != protocol.TypeHelloAck {
			// Nothing but the HelloAck is valid before the handshake ends.
			s.Logf("ignoring a frame of type %d before the HelloAck", f.Type)
			continue
		}
		switch f.Type {
		case protocol.TypeHelloAck:
			var ack protocol.HelloAck
			if err := protocol.Decode(f, &ack); err != nil {
				return err
			}
			v, err := protocol.Negotiate(protocol.Version, ack.Version)
			if err != nil || ack.Version > protocol.Version {
				return fmt.Errorf("host acknowledged protocol version %d, this agent speaks %d", ack.Version, protocol.Version)
			}
			acked = true
			s.mu.Lock()
			s.Version, s.acked = v, true
			s.mu.Unlock()
			s.Logf("host acknowledged protocol version %d", v)
		case protocol.TypeShutdown:
			if err := protocol.Decode(f, &s.Shutdown); err != nil {
				return err
			}
			return ErrShutdown
		case protocol.TypeStart:
			s.handleStart(f)
		case protocol.TypeExec:
			s.handleExec(f)
		case protocol.TypeFile:
			s.handleFile(f)
		case protocol.TypeDrain:
			s.mu.Lock()
			s.draining = true
			s.mu.Unlock()
			s.Logf("draining: refusing new exec sessions and file writes")
		case protocol.TypeStdin, protocol.TypeSignal, protocol.TypeResize, protocol.TypeData:
			s.countActivity()
			s.route(f)
		case protocol.TypeError:
			// On a session's stream, the host abandons it (streams.go).
			s.route(f)
		default:
			if f.Type >= protocol.TypeExec {
				// Traffic of a session (stdin, a signal) is the host's doing.
				s.countActivity()
			}
			// Types are only ever added: ignore one this version does not know.
			s.Logf("ignoring a frame of type %d on stream %d", f.Type, f.Stream)
		}
	}
}

// countActivity records a host-driven operation for the heartbeat.
func (s *Session) countActivity() {
	s.mu.Lock()
	s.activity++
	s.mu.Unlock()
}

// reply queues a TypeError for the current host on stream.
func (s *Session) reply(stream uint32, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sendLocked(stream, protocol.TypeError, protocol.Error{Message: msg})
}

// sendLocked queues a control message for the current connection; s.mu is
// held, so that the connection cannot change between the two.
func (s *Session) sendLocked(stream uint32, t protocol.Type, msg any) {
	f, err := protocol.Encode(stream, t, msg)
	if err != nil {
		s.Logf("encoding a frame of type %d: %v", t, err)
		return
	}
	s.enqueueLocked(outFrame{conn: s.conn, frame: f})
}

func (s *Session) enqueueLocked(o outFrame) {
	s.out = append(s.out, o)
	s.cond.Broadcast()
}

// handleStart starts the main process once per boot: a Start after a
// reconnection (the host should have read Hello.Main) is refused.
func (s *Session) handleStart(f protocol.Frame) {
	var st protocol.Start
	if err := protocol.Decode(f, &st); err != nil {
		s.reply(f.Stream, "start: "+err.Error())
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var refusal string
	switch {
	case s.main != nil:
		refusal = "the main process is already started"
	case s.RunMain == nil:
		refusal = "this agent cannot start a main process"
	}
	if refusal != "" {
		s.sendLocked(f.Stream, protocol.TypeError, protocol.Error{Message: refusal})
		return
	}
	s.main = &protocol.MainState{}
	s.start = st
	go s.runMain(st)
}

// startFailedCode is the exit code reported when the main process could not
// be started (as a shell reports a command it cannot run).
const startFailedCode = 127

// runMain starts the main process, waits for it and reports its end with
// TypeExit on stream 0 (after a TypeError when it could not start). The VM
// keeps running: the host decides what happens next.
//
// The end is recorded in the main process's state and queued for the
// current host in one critical section: either that host gets the
// TypeExit, or (it went away) every later Hello carries it in Main.Exit.
// A host may so see an exit twice, never zero times; it deduplicates.
func (s *Session) runMain(st protocol.Start) {
	name := "the init"
	if st.Init == nil && len(st.Argv) > 0 {
		name = fmt.Sprintf("the main process %q", st.Argv[0])
	}
	proc, err := s.RunMain(st)
	if err == nil && proc.Wait == nil {
		// A Start without a program configures the sandbox only: the VM
		// idles (serving exec sessions) until the host stops it.
		s.Logf("configured the sandbox; no main process to run")
		return
	}
	var exit protocol.Exit
	var failure string
	if err != nil {
		s.Logf("starting %s: %v", name, err)
		failure = "starting the main process: " + err.Error()
		exit = protocol.Exit{Code: startFailedCode}
	} else {
		s.mu.Lock()
		s.main.PID = proc.PID
		s.mu.Unlock()
		exit = proc.Wait()
		s.Logf("%s exited: code %d, signal %q", name, exit.Code, exit.Signal)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.main.Exit = &exit
	if failure != "" {
		s.sendLocked(0, protocol.TypeError, protocol.Error{Message: failure})
	}
	s.sendLocked(0, protocol.TypeExit, exit)
}

// writeLoop writes queued frames, in order, until Serve returns.
func (s *Session) writeLoop() {
	for {
		s.mu.Lock()
		for len(s.out) == 0 && !s.closed {
			s.cond.Wait()
		}
		if s.closed {
			// Nobody writes any more: release whoever waits for a write.
			for _, o := range s.out {
				if o.done != nil {
					o.done <- errStale
				}
			}
			s.out = nil
			s.mu.Unlock()
			return
		}
		o := s.out[0]
		s.out = s.out[1:]
		if o.frame.Type == protocol.TypeHeartbeat {
			s.heartbeatQueued = false
		}
		s.mu.Unlock()
		err := s.write(o)
		switch {
		case o.done != nil:
			o.done <- err
		case err != nil && !errors.Is(err, errStale):
			s.Logf("writing a frame of type %d on stream %d: %v", o.frame.Type, o.frame.Stream, err)
		}
	}
}

// write writes o unless its connection is gone. It holds wmu across the
// check and the write, so that hostGone, which advances the connection
// before it interrupts the write, cannot miss one; and it does not start a
// write while hostGone interrupts, which would interrupt the new Hello.
func (s *Session) write(o outFrame) error {
	for {
		s.wmu.Lock()
		s.mu.Lock()
		if s.kicking {
			s.mu.Unlock()
			s.wmu.Unlock()
			s.mu.Lock()
			for s.kicking && !s.closed {
				s.cond.Wait()
			}
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return errStale
			}
			continue
		}
		cur := s.conn
		s.mu.Unlock()
		err := errStale
		if o.conn == cur {
			err = protocol.WriteFrame(s.Port, o.frame)
		}
		s.wmu.Unlock()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// Interrupted by hostGone: the frame was for the old host.
			return errStale
		}
		return err
	}
}

// heartbeats queues a TypeHeartbeat every interval while a host that has
// acknowledged the Hello is connected, unless the last one is still
// queued, until stop is closed.
func (s *Session) heartbeats(stop <-chan struct{}) {
	every := s.HeartbeatInterval
	if every <= 0 {
		every = protocol.HeartbeatInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		due := s.acked && !s.heartbeatQueued
		s.mu.Unlock()
		if !due {
			continue
		}
		// Read outside the lock: it reads /proc and statfs.
		var m *protocol.Metrics
		if s.Metrics != nil {
			m = s.Metrics()
		}
		s.mu.Lock()
		if s.acked && !s.heartbeatQueued {
			s.sendLocked(0, protocol.TypeHeartbeat, protocol.Heartbeat{ActiveSessions: len(s.streams), ActivitySeq: s.activity, Metrics: m})
			s.heartbeatQueued = true
		}
		s.mu.Unlock()
	}
}
