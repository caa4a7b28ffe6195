package netstack

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// maxFrame bounds a frame's length on the wire (jumbo frames included).
const maxFrame = 65536

// linkBuffer is the socket buffering each way: frames are batched into one
// write while more are queued (measured: ~13 → ~22 MiB/s guest egress
// under TCG at MTU 1500).
const linkBuffer = 256 << 10

// Serve moves frames between conn (QEMU's stream netdev) and the stack
// until conn fails, the stack closes or ctx ends, and closes conn. After a
// reconnection, call it again with the new connection: the stack and its
// addresses stay.
func (n *Net) Serve(ctx context.Context, conn net.Conn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(n.ctx, cancel)
	defer stop()
	return pump(ctx, conn, n.ep)
}

// pump moves QEMU-framed Ethernet frames between conn and ep.
func pump(ctx context.Context, conn net.Conn, ep *channel.Endpoint) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- readFrames(conn, ep) }()
	go func() { errc <- writeFrames(ctx, conn, ep) }()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		err = ctx.Err()
	}
	cancel()
	_ = conn.Close()
	// The other direction ends with the connection; its error is a
	// consequence of the first.
	if other := <-errc; err == nil {
		err = other
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// readFrames injects the VM's frames into the stack.
func readFrames(conn net.Conn, ep *channel.Endpoint) error {
	var hdr [4]byte
	br := bufio.NewReaderSize(conn, linkBuffer)
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return err
		}
		size := binary.BigEndian.Uint32(hdr[:])
		if size < header.EthernetMinimumSize || size > maxFrame {
			return fmt.Errorf("netstack: a frame of %d bytes from the VM", size)
		}
		frame := make([]byte, size)
		if _, err := io.ReadFull(br, frame); err != nil {
			return err
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		ep.InjectInbound(0, pkt) // the ethernet endpoint reads the EtherType
		pkt.DecRef()
	}
}

// writeFrames sends the stack's frames to the VM.
func writeFrames(ctx context.Context, conn net.Conn, ep *channel.Endpoint) error {
	bw := bufio.NewWriterSize(conn, linkBuffer)
	var buf []byte
	for {
		pkt := ep.ReadContext(ctx)
		if pkt == nil {
			return ctx.Err()
		}
		buf = append(buf[:0], 0, 0, 0, 0)
		for _, s := range pkt.AsSlices() {
			buf = append(buf, s...)
		}
		pkt.DecRef()
		binary.BigEndian.PutUint32(buf, uint32(len(buf)-4))
		if _, err := bw.Write(buf); err != nil {
			return err
		}
		if ep.NumQueued() == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
	}
}
