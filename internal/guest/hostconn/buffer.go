package hostconn

import (
	"io"
	"sync"
)

// buffer is one output of a session (a process's stdout or stderr, a file
// stream's data): the reader goroutine puts the guest's frames in, a
// consumer reads them out. It holds at most limit bytes; put blocks while
// it is full (see "Back-pressure" in the package documentation).
type buffer struct {
	mu     sync.Mutex
	cond   *sync.Cond
	chunks [][]byte // unread data, in order; chunks[0][off:] comes next
	off    int
	size   int // unread bytes
	limit  int
	// err is returned by Read once the data is read: io.EOF at the end of
	// the output, the connection's error when it ended first. nil: more
	// may come.
	err error
	// discarded is set when the consumer gave up: puts are dropped, reads
	// fail.
	discarded bool
}

func newBuffer(limit int) *buffer {
	b := &buffer{limit: limit}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// put appends p (which the buffer then owns), waiting while the buffer is
// full. An empty buffer takes any frame, so that a limit below
// protocol.MaxPayload cannot block forever. It drops p when the output
// ended or was discarded while it waited.
func (b *buffer) put(p []byte) {
	if len(p) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.size > 0 && b.size+len(p) > b.limit && b.err == nil && !b.discarded {
		b.cond.Wait()
	}
	if b.err != nil || b.discarded {
		return
	}
	b.chunks = append(b.chunks, p)
	b.size += len(p)
	b.cond.Broadcast()
}

// end ends the output: Read returns err (io.EOF for a complete output)
// once the buffered data is read. Only the first end counts.
func (b *buffer) end(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
	b.cond.Broadcast()
}

// discard drops the buffered data and everything put later, and wakes a
// put waiting for room.
func (b *buffer) discard() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.discarded = true
	b.chunks, b.off, b.size = nil, 0, 0
	b.cond.Broadcast()
}

// Read reads buffered data, waiting for some while the output goes on.
func (b *buffer) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.size == 0 && b.err == nil && !b.discarded {
		b.cond.Wait()
	}
	if b.discarded {
		return 0, ErrSessionClosed
	}
	if b.size == 0 {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	n := 0
	for n < len(p) && len(b.chunks) > 0 {
		c := copy(p[n:], b.chunks[0][b.off:])
		n += c
		b.off += c
		if b.off == len(b.chunks[0]) {
			b.chunks[0] = nil
			b.chunks = b.chunks[1:]
			b.off = 0
		}
	}
	b.size -= n
	b.cond.Broadcast()
	return n, nil
}

// WriteTo lets io.Copy hand the buffered chunks to w without another copy.
func (b *buffer) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		b.mu.Lock()
		for b.size == 0 && b.err == nil && !b.discarded {
			b.cond.Wait()
		}
		if b.discarded {
			b.mu.Unlock()
			return total, ErrSessionClosed
		}
		if b.size == 0 {
			err := b.err
			b.mu.Unlock()
			if err == io.EOF {
				err = nil
			}
			return total, err
		}
		chunk := b.chunks[0][b.off:]
		b.chunks[0] = nil
		b.chunks = b.chunks[1:]
		b.off = 0
		b.size -= len(chunk)
		b.cond.Broadcast()
		b.mu.Unlock()
		n, err := w.Write(chunk)
		total += int64(n)
		if err != nil {
			return total, err
		}
		if n < len(chunk) {
			return total, io.ErrShortWrite
		}
	}
}
