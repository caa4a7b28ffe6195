package initd

import (
	"fmt"
	"io"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// The main process's output goes to the host on protocol.MainOutputStream
// (and to the console, by the caller's tee). The main process must never
// wait for the host: its output is appended to a buffer of at most
// protocol.MainOutputBuffer bytes, whose oldest chunks are dropped when it
// is full, and one goroutine sends the buffer to whichever host has
// acknowledged its Hello, one frame at a time. A frame lost to a
// disconnection is put back at the head, so the next host gets it (a host
// may so see a chunk twice after a reconnection, never a gap it is not
// told of).

// mainOutput is the buffered main output, guarded by Session.mu.
type mainOutput struct {
	chunks []mainChunk
	bytes  int
	// dropped counts bytes dropped since the last note sent.
	dropped int64
}

// mainChunk is one write of the main process.
type mainChunk struct {
	t    protocol.Type
	data []byte
}

// droppedNote is the TypeStderr text that tells the host of dropped
// output.
func droppedNote(n int64) []byte {
	return fmt.Appendf(nil, "[sandbox-init: %d bytes of output dropped]\n", n)
}

// MainOutput returns the writer of the main process's stdout
// (protocol.TypeStdout) or stderr (protocol.TypeStderr) for the host. Its
// writes never block on the host and never fail.
func (s *Session) MainOutput(t protocol.Type) io.Writer {
	return mainWriter{s: s, t: t}
}

type mainWriter struct {
	s *Session
	t protocol.Type
}

func (w mainWriter) Write(b []byte) (int, error) {
	w.s.appendMainOutput(w.t, b)
	return len(b), nil
}

// appendMainOutput buffers b, dropping the oldest output beyond
// protocol.MainOutputBuffer.
func (s *Session) appendMainOutput(t protocol.Type, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(b) > 0 {
		n := min(len(b), outputChunk)
		s.mainOut.chunks = append(s.mainOut.chunks, mainChunk{t: t, data: append([]byte(nil), b[:n]...)})
		s.mainOut.bytes += n
		b = b[n:]
	}
	for s.mainOut.bytes > protocol.MainOutputBuffer {
		c := &s.mainOut.chunks[0]
		excess := s.mainOut.bytes - protocol.MainOutputBuffer
		if excess < len(c.data) {
			// Drop only the oldest bytes of the oldest chunk.
			c.data = c.data[excess:]
			s.mainOut.bytes -= excess
			s.mainOut.dropped += int64(excess)
			break
		}
		s.mainOut.bytes -= len(c.data)
		s.mainOut.dropped += int64(len(c.data))
		s.mainOut.chunks = s.mainOut.chunks[1:]
	}
	if s.cond != nil {
		s.cond.Broadcast()
	}
}

// mainOutputLoop sends the buffered main output to the current host until
// Serve returns.
func (s *Session) mainOutputLoop() {
	for {
		s.mu.Lock()
		for !s.closed && (!s.acked || (len(s.mainOut.chunks) == 0 && s.mainOut.dropped == 0)) {
			s.cond.Wait()
		}
		if s.closed {
			s.mu.Unlock()
			return
		}
		var c mainChunk
		if s.mainOut.dropped > 0 {
			// The note precedes what is left, where the gap is.
			c = mainChunk{t: protocol.TypeStderr, data: droppedNote(s.mainOut.dropped)}
			s.mainOut.dropped = 0
		} else {
			c = s.mainOut.chunks[0]
			s.mainOut.chunks = s.mainOut.chunks[1:]
			s.mainOut.bytes -= len(c.data)
		}
		done := make(chan error, 1)
		s.enqueueLocked(outFrame{conn: s.conn, frame: protocol.Frame{Stream: protocol.MainOutputStream, Type: c.t, Payload: c.data}, done: done})
		s.mu.Unlock()
		if err := <-done; err != nil {
			s.mu.Lock()
			if !s.closed {
				s.mainOut.chunks = append([]mainChunk{c}, s.mainOut.chunks...)
				s.mainOut.bytes += len(c.data)
			}
			s.mu.Unlock()
		}
	}
}
