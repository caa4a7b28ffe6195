package initd

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// AgentName is the name sandbox-init reports in its Hello.
const AgentName = "sandbox-init"

// ErrShutdown is returned by Serve when the host asked for a shutdown.
var ErrShutdown = errors.New("initd: shutdown requested")

// Session is one conversation with the node agent over the port.
type Session struct {
	// Port is the agent port (the virtio-serial device in the guest).
	Port io.ReadWriter
	// BootNanos is the guest's CLOCK_BOOTTIME when sandbox-init started.
	BootNanos int64
	// Logf logs to the console.
	Logf func(format string, args ...any)

	// Version is the protocol version agreed with the host (after Serve has
	// read the HelloAck).
	Version int
	// Shutdown is the host's shutdown request (after Serve returned
	// ErrShutdown).
	Shutdown protocol.Shutdown
	// RunMain starts the sandbox's main process (TypeStart) and returns a
	// function that waits for its end. nil refuses TypeStart.
	RunMain func(protocol.Start) (wait func() protocol.Exit, err error)

	wmu     sync.Mutex
	started bool
}

func (s *Session) send(stream uint32, t protocol.Type, msg any) error {
	f, err := protocol.Encode(stream, t, msg)
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return protocol.WriteFrame(s.Port, f)
}

// Serve says Hello, waits for the HelloAck and then answers requests until
// the host asks for a shutdown (ErrShutdown) or the port fails.
func (s *Session) Serve() error {
	if err := s.send(0, protocol.TypeHello, protocol.Hello{
		Version: protocol.Version, Agent: AgentName, BootNanos: s.BootNanos,
	}); err != nil {
		return fmt.Errorf("sending hello: %w", err)
	}
	for {
		f, err := protocol.ReadFrame(s.Port)
		if err != nil {
			return fmt.Errorf("reading from the port: %w", err)
		}
		if s.Version == 0 && f.Type != protocol.TypeHelloAck {
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
			s.Version = v
			s.Logf("host acknowledged protocol version %d", v)
		case protocol.TypeShutdown:
			if err := protocol.Decode(f, &s.Shutdown); err != nil {
				return err
			}
			return ErrShutdown
		case protocol.TypeStart:
			var st protocol.Start
			if err := protocol.Decode(f, &st); err != nil {
				return err
			}
			if s.started || s.RunMain == nil || len(st.Argv) == 0 {
				msg := "the main process is already started"
				if !s.started {
					msg = "this agent cannot start a main process"
					if len(st.Argv) == 0 {
						msg = "start: empty argv"
					}
				}
				if err := s.send(0, protocol.TypeError, protocol.Error{Message: msg}); err != nil {
					return fmt.Errorf("answering start: %w", err)
				}
				continue
			}
			s.started = true
			go s.runMain(st)
		case protocol.TypeExec:
			// Not yet: the workload root and process supervision come with the
			// node agent. Answer so that the host does not wait forever.
			if err := s.send(f.Stream, protocol.TypeError, protocol.Error{Message: "exec is not supported by this agent yet"}); err != nil {
				return fmt.Errorf("answering exec: %w", err)
			}
		default:
			// Types are only ever added: ignore one this version does not know.
			s.Logf("ignoring a frame of unknown type %d on stream %d", f.Type, f.Stream)
		}
	}
}

// startFailedCode is the exit code reported when the main process could not
// be started (as a shell reports a command it cannot run).
const startFailedCode = 127

// runMain starts the main process, waits for it and reports its end with
// TypeExit on stream 0 (after a TypeError when it could not start). The VM
// keeps running: the host decides what happens next.
func (s *Session) runMain(st protocol.Start) {
	wait, err := s.RunMain(st)
	var exit protocol.Exit
	if err != nil {
		s.Logf("starting the main process %q: %v", st.Argv[0], err)
		if err := s.send(0, protocol.TypeError, protocol.Error{Message: "starting the main process: " + err.Error()}); err != nil {
			s.Logf("reporting the start failure: %v", err)
		}
		exit = protocol.Exit{Code: startFailedCode}
	} else {
		exit = wait()
		s.Logf("the main process exited: code %d, signal %q", exit.Code, exit.Signal)
	}
	if err := s.send(0, protocol.TypeExit, exit); err != nil {
		s.Logf("reporting the main process's exit: %v", err)
	}
}
