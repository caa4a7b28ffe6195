package initd

import (
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// Host-driven sessions: exec streams and file streams (see protocol's
// exec.go and file.go). Each runs in its own goroutines; the port's reader
// hands it the frames of its stream through an inbox, and everything it
// sends goes through the one writer like any other frame.
//
// Flow control: the protocol has none. Output is read from a process only
// as fast as the writer puts it on the port (each data frame waits for its
// write), so a host that stops reading stalls the process, not the
// guest's memory. Input the other way is queued in a bounded inbox; a
// process that stops reading its stdin while the host keeps sending stalls
// the port's reader once the inbox is full (inboxFrames frames), which is
// what a pipe does too.

// ExecProcess is a started exec session's process.
type ExecProcess struct {
	// PID is its process id in the guest.
	PID int
	// Stdin is its standard input; nil when the Exec did not ask for one.
	Stdin io.WriteCloser
	// Stdout and Stderr are its output; Stderr is nil with a tty (merged).
	// Both end (EOF, or an error such as a pty's EIO) when the process and
	// whatever inherited them are gone.
	Stdout, Stderr io.Reader
	// Tty is set for a process on a pseudo-terminal: FlagEnd on its stdin
	// sends the terminal's EOF character instead of closing it.
	Tty bool
	// Resize sets a tty's window size; nil without a tty.
	Resize func(rows, cols uint16) error
	// Signal signals the process (its process group, or a tty's foreground
	// process group).
	Signal func(unix.Signal) error
	// Kill kills the process and its process group.
	Kill func()
	// Wait waits for the process's end once its output was read, and
	// releases what the session held for it.
	Wait func() protocol.Exit
}

// FileProcess is a started file operation.
type FileProcess struct {
	// Input receives the streamed bytes of write and untar; nil otherwise.
	Input io.WriteCloser
	// Output is the bytes that read and tar stream; nil otherwise.
	Output io.Reader
	// Result waits for the operation's end (after Output's EOF and Input's
	// close) and returns its result.
	Result func() protocol.FileResult
	// Kill abandons the operation.
	Kill func()
}

// inboxFrames bounds the frames queued for one session.
const inboxFrames = 16

// outputChunk is how much of a process's output one read takes (and so
// the largest data frame the guest sends, well under MaxPayload).
const outputChunk = 64 << 10

// hostStream is one open session.
type hostStream struct {
	conn  uint64
	inbox chan protocol.Frame
	done  chan struct{}
	// kill ends the session's process (the host that opened it went);
	// nil until the process started.
	kill func()
	// killed is set when kill was wanted, for a process still starting.
	killed bool
}

// openStream registers a session on stream for the current host, or
// refuses it with a TypeError (or a FileResult for file requests).
func (s *Session) openStream(f protocol.Frame) (*hostStream, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.activity++
	if f.Stream < protocol.FirstHostStream {
		return nil, 0, &kindError{Kind: protocol.ErrInvalid, Msg: fmt.Sprintf("stream %d is reserved", f.Stream)}
	}
	if _, ok := s.streams[f.Stream]; ok {
		return nil, 0, &kindError{Kind: protocol.ErrInvalid, Msg: fmt.Sprintf("stream %d is in use", f.Stream)}
	}
	st := &hostStream{conn: s.conn, inbox: make(chan protocol.Frame, inboxFrames), done: make(chan struct{})}
	if s.streams == nil {
		s.streams = map[uint32]*hostStream{}
	}
	s.streams[f.Stream] = st
	return st, s.conn, nil
}

// closeStream ends a session: it queues its last frame (for its host) and
// forgets it, in one critical section.
func (s *Session) closeStream(stream uint32, st *hostStream, t protocol.Type, msg any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sendConnLocked(st.conn, stream, t, msg)
	if s.streams[stream] == st {
		delete(s.streams, stream)
	}
	close(st.done)
}

// setKill records how to kill a session's process; it kills at once when
// its host already went.
func (s *Session) setKill(st *hostStream, kill func()) {
	s.mu.Lock()
	st.kill = kill
	killed := st.killed
	s.mu.Unlock()
	if killed {
		kill()
	}
}

// killStreamsLocked kills the sessions of connection conn (its host
// went); s.mu is held.
func (s *Session) killStreamsLocked(conn uint64) {
	for id, st := range s.streams {
		if st.conn != conn {
			continue
		}
		s.Logf("the host of stream %d went; ending its session", id)
		st.killed = true
		if st.kill != nil {
			go st.kill()
		}
	}
}

// route hands a session's frame to it; frames of unknown streams (a
// session that ended) are dropped.
func (s *Session) route(f protocol.Frame) {
	s.mu.Lock()
	st := s.streams[f.Stream]
	s.mu.Unlock()
	if st == nil {
		return
	}
	select {
	case st.inbox <- f:
	case <-st.done:
	}
}

// sendConnLocked queues a control message for connection conn; s.mu is
// held.
func (s *Session) sendConnLocked(conn uint64, stream uint32, t protocol.Type, msg any) {
	f, err := protocol.Encode(stream, t, msg)
	if err != nil {
		s.Logf("encoding a frame of type %d: %v", t, err)
		return
	}
	s.enqueueLocked(outFrame{conn: conn, frame: f})
}

// sendData queues a raw frame for connection conn and waits for its write.
func (s *Session) sendData(conn uint64, f protocol.Frame) error {
	done := make(chan error, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errStale
	}
	s.enqueueLocked(outFrame{conn: conn, frame: f, done: done})
	s.mu.Unlock()
	return <-done
}

// pumpOutput sends r's bytes as frames of type t on stream until r ends.
// After a failed write (the host went) it keeps reading, and discards, so
// that the process is not blocked on a full pipe while it is killed.
func (s *Session) pumpOutput(conn uint64, stream uint32, t protocol.Type, r io.Reader) int64 {
	buf := make([]byte, outputChunk)
	var total int64
	failed := false
	for {
		n, err := r.Read(buf)
		if n > 0 {
			total += int64(n)
			if !failed {
				p := append([]byte(nil), buf[:n]...)
				failed = s.sendData(conn, protocol.Frame{Stream: stream, Type: t, Payload: p}) != nil
			}
		}
		if err != nil {
			return total
		}
	}
}

// handleExec starts an exec session (TypeExec).
func (s *Session) handleExec(f protocol.Frame) {
	var ex protocol.Exec
	decErr := protocol.Decode(f, &ex)
	st, conn, err := s.openStream(f)
	if err != nil {
		s.mu.Lock()
		s.sendLocked(f.Stream, protocol.TypeError, protoError(err))
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	start, draining := s.start, s.draining
	s.mu.Unlock()
	switch {
	case decErr != nil:
		err = &kindError{Kind: protocol.ErrInvalid, Msg: decErr.Error()}
	case draining:
		err = &kindError{Kind: protocol.ErrDraining, Msg: "the sandbox is draining: no new exec sessions"}
	case len(ex.Argv) == 0:
		err = &kindError{Kind: protocol.ErrInvalid, Msg: "exec: empty argv"}
	case s.RunExec == nil:
		err = &kindError{Kind: protocol.ErrInternal, Msg: "this agent cannot run exec sessions"}
	}
	if err != nil {
		s.closeStream(f.Stream, st, protocol.TypeError, protoError(err))
		return
	}
	go s.runExec(f.Stream, conn, st, start, ex)
}

// runExec runs an exec session to its end.
func (s *Session) runExec(stream uint32, conn uint64, st *hostStream, start protocol.Start, ex protocol.Exec) {
	proc, err := s.RunExec(start, ex)
	if err != nil {
		s.closeStream(stream, st, protocol.TypeError, protoError(err))
		return
	}
	s.mu.Lock()
	s.sendConnLocked(conn, stream, protocol.TypeExecStarted, protocol.ExecStarted{PID: proc.PID})
	s.mu.Unlock()
	s.setKill(st, proc.Kill)

	var timedOut chan struct{}
	if ex.TimeoutMillis > 0 {
		timedOut = make(chan struct{})
		timer := time.AfterFunc(time.Duration(ex.TimeoutMillis)*time.Millisecond, func() {
			close(timedOut)
			proc.Kill()
		})
		defer timer.Stop()
	}
	go s.execInput(stream, st, proc)

	outputs := make(chan struct{}, 2)
	n := 0
	for t, r := range map[protocol.Type]io.Reader{protocol.TypeStdout: proc.Stdout, protocol.TypeStderr: proc.Stderr} {
		if r == nil {
			continue
		}
		n++
		go func() {
			s.pumpOutput(conn, stream, t, r)
			outputs <- struct{}{}
		}()
	}
	for range n {
		<-outputs
	}
	exit := proc.Wait()
	if timedOut != nil && exit.Signal == "SIGKILL" {
		// Only when the timer's SIGKILL ended it: a timer that fired as
		// the process was exiting on its own changes nothing.
		select {
		case <-timedOut:
			s.mu.Lock()
			s.sendConnLocked(conn, stream, protocol.TypeError, protocol.Error{Kind: protocol.ErrTimeout,
				Message: fmt.Sprintf("the process ran longer than %d ms and was killed", ex.TimeoutMillis)})
			s.mu.Unlock()
		default:
		}
	}
	s.closeStream(stream, st, protocol.TypeExited, exit)
}

// eofChar is what FlagEnd on a tty's stdin writes: the terminal's VEOF
// (^D), which ends a read at the start of a line as a typed ^D does. A
// pty has no other EOF: closing the master would hang the terminal up.
const eofChar = 0x04

// execInput applies the host's stdin, signal and resize frames to a
// session's process until the session ends.
func (s *Session) execInput(stream uint32, st *hostStream, proc *ExecProcess) {
	stdin := proc.Stdin
	for {
		var f protocol.Frame
		select {
		case f = <-st.inbox:
		case <-st.done:
			if stdin != nil && !proc.Tty {
				_ = stdin.Close()
			}
			return
		}
		switch f.Type {
		case protocol.TypeStdin:
			if stdin == nil {
				continue
			}
			if len(f.Payload) > 0 {
				if _, err := stdin.Write(f.Payload); err != nil && !errors.Is(err, syscall.EPIPE) {
					s.Logf("stream %d: writing stdin: %v", stream, err)
				}
			}
			if f.Flags&protocol.FlagEnd != 0 {
				if proc.Tty {
					_, _ = stdin.Write([]byte{eofChar})
					continue
				}
				_ = stdin.Close()
				stdin = nil
			}
		case protocol.TypeSignal:
			var sig protocol.Signal
			if err := protocol.Decode(f, &sig); err != nil {
				s.Logf("stream %d: %v", stream, err)
				continue
			}
			n := unix.SignalNum(sig.Signal)
			if n == 0 {
				n = unix.SignalNum("SIG" + sig.Signal)
			}
			if n == 0 {
				// Not fatal to the session: the host learns of it, the
				// process runs on.
				s.mu.Lock()
				s.sendConnLocked(st.conn, stream, protocol.TypeError, protocol.Error{Kind: protocol.ErrInvalid,
					Message: fmt.Sprintf("unknown signal %q", sig.Signal)})
				s.mu.Unlock()
				continue
			}
			if err := proc.Signal(n); err != nil {
				s.Logf("stream %d: sending %s: %v", stream, sig.Signal, err)
			}
		case protocol.TypeError:
			// The host gave up on the session: its process goes.
			proc.Kill()
		case protocol.TypeResize:
			var rs protocol.Resize
			if err := protocol.Decode(f, &rs); err != nil || proc.Resize == nil {
				continue
			}
			if err := proc.Resize(rs.Rows, rs.Cols); err != nil {
				s.Logf("stream %d: resizing the tty: %v", stream, err)
			}
		}
	}
}

// writingOps are the file operations a draining sandbox refuses.
var writingOps = map[protocol.FileOp]bool{
	protocol.FileWrite: true, protocol.FileMkdir: true, protocol.FileRemove: true,
	protocol.FileCopy: true, protocol.FileRename: true, protocol.FileUntar: true,
}

// knownOps are the file operations of protocol version 1.
var knownOps = map[protocol.FileOp]bool{
	protocol.FileRead: true, protocol.FileWrite: true, protocol.FileList: true, protocol.FileStat: true,
	protocol.FileMkdir: true, protocol.FileRemove: true, protocol.FileCopy: true, protocol.FileRename: true,
	protocol.FileExists: true, protocol.FileTar: true, protocol.FileUntar: true,
}

// handleFile starts a file operation (TypeFile).
func (s *Session) handleFile(f protocol.Frame) {
	var req protocol.FileRequest
	decErr := protocol.Decode(f, &req)
	st, conn, err := s.openStream(f)
	if err != nil {
		s.mu.Lock()
		s.sendLocked(f.Stream, protocol.TypeFileResult, protocol.FileResult{Error: protoError(err)})
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	start, draining := s.start, s.draining
	s.mu.Unlock()
	switch {
	case decErr != nil:
		err = &kindError{Kind: protocol.ErrInvalid, Msg: decErr.Error()}
	case !knownOps[req.Op]:
		err = &kindError{Kind: protocol.ErrInvalid, Msg: fmt.Sprintf("unknown file operation %q", req.Op)}
	case draining && writingOps[req.Op]:
		err = &kindError{Kind: protocol.ErrDraining, Msg: fmt.Sprintf("the sandbox is draining: no %s", req.Op)}
	case s.RunFile == nil:
		err = &kindError{Kind: protocol.ErrInternal, Msg: "this agent cannot run file operations"}
	}
	if err != nil {
		s.closeStream(f.Stream, st, protocol.TypeFileResult, protocol.FileResult{Error: protoError(err)})
		return
	}
	go s.runFile(f.Stream, conn, st, start, req)
}

// runFile runs a file operation to its end.
func (s *Session) runFile(stream uint32, conn uint64, st *hostStream, start protocol.Start, req protocol.FileRequest) {
	proc, err := s.RunFile(start, req)
	if err != nil {
		s.closeStream(stream, st, protocol.TypeFileResult, protocol.FileResult{Error: protoError(err)})
		return
	}
	s.setKill(st, proc.Kill)
	go s.fileInbox(st, proc)
	if proc.Output != nil {
		s.pumpOutput(conn, stream, protocol.TypeData, proc.Output)
		_ = s.sendData(conn, protocol.Frame{Stream: stream, Type: protocol.TypeData, Flags: protocol.FlagEnd})
	}
	res := proc.Result()
	s.closeStream(stream, st, protocol.TypeFileResult, res)
}

// fileInbox handles the host's frames of a file stream until it ends.
// TypeData frames go to the operation's input, closed at FlagEnd; after a
// failed write (the operation ended early) the rest is dropped, the result
// tells the host why. A TypeError from the host (it gave up: its context
// ended) kills the operation, so that a write cut short never reads as
// complete (its FileResult reports the kill) and a read stops.
func (s *Session) fileInbox(st *hostStream, proc *FileProcess) {
	in := proc.Input
	failed := in == nil
	for {
		var f protocol.Frame
		select {
		case f = <-st.inbox:
		case <-st.done:
			if in != nil {
				_ = in.Close()
			}
			return
		}
		if f.Type == protocol.TypeError {
			proc.Kill()
			continue
		}
		if f.Type != protocol.TypeData || failed {
			continue
		}
		if len(f.Payload) > 0 {
			if _, err := in.Write(f.Payload); err != nil {
				failed = true
				_ = in.Close()
			}
		}
		if f.Flags&protocol.FlagEnd != 0 && !failed {
			_ = in.Close()
			failed = true // nothing more to write
		}
	}
}
