// Package hostconn is the host's side of one connection to a guest's
// sandbox-init, after the handshake (Hello, HelloAck, Start): it
// multiplexes the concurrent sessions that share the port (exec processes
// and file operations) over the framed protocol of package protocol.
//
// One reader goroutine demultiplexes the guest's frames by stream:
//
//   - protocol.ControlStream (0) frames go to Options.OnControl (Exit,
//     Error, Heartbeat: the node agent handles them);
//   - protocol.MainOutputStream (1) TypeStdout and TypeStderr frames go to
//     Options.OnMainOutput;
//   - streams from protocol.FirstHostStream up belong to the sessions this
//     package opened (Conn.Exec, Conn.File). The host allocates them in
//     increasing order and never reuses one within a connection, so a late
//     frame for a session the host gave up on is recognised and dropped.
//
// Writes are serialised (one frame per Write, under one mutex) and bounded
// by a write deadline. A write that fails or times out may have left part
// of a frame on the port, so it ends the whole connection: the guest is
// then expected to have stopped reading, and every session fails.
//
// # Back-pressure
//
// The protocol has no window updates, so the only flow control the host
// has is to stop reading the port. Each session buffers at most
// Options.StreamBuffer bytes per output (stdout, stderr, file data); when a
// consumer does not read and its buffer is full, the reader goroutine
// blocks until it does (or the session is closed). Memory stays bounded, and
// no data is ever dropped, at a price: while the reader waits, every other
// session of the connection, the control stream (heartbeats, the main
// process's exit) and the main output stall too. A consumer that cannot
// keep up must close its session (Process.Close, cancelling File's ctx),
// which discards the session's output and unblocks the reader. Readers
// that forward to a network peer (kubectl) should therefore read promptly
// into their own bounded queue and close the session when that queue stays
// full.
//
// Input has the mirror image of this: sandbox-init queues a few frames per
// session and then stops reading the port until the process reads its
// stdin, and a write blocked for Options.WriteTimeout ends the connection.
// So a process that does not read its stdin while the host keeps sending
// to it can end the whole connection after WriteTimeout. Only a window in
// the protocol (none in version 1) would remove both limits.
//
// A reader that waits for a consumer reads no heartbeat either: a host
// that measures idleness from heartbeats should also count
// Conn.ActiveSessions.
//
// When the connection ends (the guest hung up, a write failed, Close was
// called) every open session fails at once with an error that wraps
// ErrClosed and the cause; output already buffered can still be read first.
package hostconn
