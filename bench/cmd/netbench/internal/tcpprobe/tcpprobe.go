// Package tcpprobe is the traffic of the network benchmark: a bulk sender
// and its sink, and a connect-and-echo prober and its echo server. The same
// code runs in the guest (the nettool binary) and on the host (netbench's
// servers, and nettool run as a host process for the baselines), so that
// both sides of every comparison do exactly the same work.
//
// A transfer ends with an acknowledgement: the sender half-closes, the sink
// reads to EOF and answers the byte count it received (8 bytes, big
// endian), so the sender's clock stops only once every byte has arrived.
package tcpprobe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// chunk is the size of the sender's writes.
const chunk = 256 << 10

// Transfer is one bulk transfer as one side saw it.
type Transfer struct {
	// Bytes is what was sent (sender) or received (sink).
	Bytes int64 `json:"bytes"`
	// Seconds is, for the sender, the dial's start to the sink's
	// acknowledgement; for the sink, the accept to the sender's EOF.
	Seconds float64 `json:"seconds"`
}

// MiBps is the transfer's throughput in MiB/s.
func (t Transfer) MiBps() float64 {
	if t.Seconds <= 0 {
		return 0
	}
	return float64(t.Bytes) / (1 << 20) / t.Seconds
}

// Send dials addr, writes n zero bytes, half-closes and waits for the
// sink's count, which must be n.
func Send(ctx context.Context, addr string, n int64) (Transfer, error) {
	buf := make([]byte, chunk)
	start := time.Now()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return Transfer{}, err
	}
	defer func() { _ = c.Close() }()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	for left := n; left > 0; {
		k := min(left, int64(len(buf)))
		if _, err := c.Write(buf[:k]); err != nil {
			return Transfer{}, fmt.Errorf("writing to %s: %w", addr, err)
		}
		left -= k
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return Transfer{}, err
	}
	var ack [8]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return Transfer{}, fmt.Errorf("reading the sink's count from %s: %w", addr, err)
	}
	elapsed := time.Since(start)
	if got := int64(binary.BigEndian.Uint64(ack[:])); got != n {
		return Transfer{}, fmt.Errorf("the sink at %s received %d bytes, not %d", addr, got, n)
	}
	return Transfer{Bytes: n, Seconds: elapsed.Seconds()}, nil
}

// Sink serves transfers on ln, one goroutine per connection, and calls
// each (concurrently) with each one's count and time. It returns when ln
// is closed.
func Sink(ln net.Listener, each func(Transfer)) error {
	return serve(ln, func(c net.Conn) {
		start := time.Now()
		n, err := io.Copy(io.Discard, c)
		elapsed := time.Since(start)
		if err != nil {
			return
		}
		var ack [8]byte
		binary.BigEndian.PutUint64(ack[:], uint64(n))
		if _, err := c.Write(ack[:]); err == nil && each != nil {
			each(Transfer{Bytes: n, Seconds: elapsed.Seconds()})
		}
	})
}

// Connect makes n connections to addr one after the other, each a dial, a
// one-byte write and the echoed byte read, and returns how long each took
// in milliseconds.
func Connect(ctx context.Context, addr string, n int) ([]float64, error) {
	var d net.Dialer
	out := make([]float64, 0, n)
	for range n {
		start := time.Now()
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return out, err
		}
		var b [1]byte
		b[0] = 'x'
		_, err = c.Write(b[:])
		if err == nil {
			_, err = io.ReadFull(c, b[:])
		}
		elapsed := time.Since(start)
		_ = c.Close()
		if err != nil {
			return out, fmt.Errorf("echo from %s: %w", addr, err)
		}
		out = append(out, float64(elapsed)/float64(time.Millisecond))
	}
	return out, nil
}

// Echo echoes every connection on ln back to its sender until ln is
// closed.
func Echo(ln net.Listener) error {
	return serve(ln, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// serve runs handle for each connection on ln, closing it after.
func serve(ln net.Listener, handle func(net.Conn)) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			defer func() { _ = c.Close() }()
			handle(c)
		}()
	}
}
