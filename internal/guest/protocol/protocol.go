// Package protocol is the host↔guest wire protocol between the node agent
// and sandbox-init (PID 1 in the guest), carried over a virtio-serial port
// (or vsock where the host has it).
//
// A connection is a sequence of frames:
//
//	+----------------+----------------+--------+--------+-----------------+
//	| length  u32 BE | stream  u32 BE | type u8| flags u8| payload (length)|
//	+----------------+----------------+--------+--------+-----------------+
//
// length counts the payload only and is at most MaxPayload. stream
// multiplexes concurrent sessions (an exec, a file transfer) over the one
// port; stream 0 is the control stream. Control messages carry JSON
// payloads; data frames (stdout, stdin, file bytes) carry raw bytes.
//
// Versioning: the guest's first frame is Hello with its protocol version;
// the host answers HelloAck with the version both will speak
// (min(host, guest)).
//
// Reconnection: the node agent may restart while the VM runs. The guest
// then sees its port close (a read returns 0 bytes: no host) and, when the
// next host connects, says Hello again on the new connection with the state
// of its main process (Hello.Main), so that the new agent re-adopts the VM
// without restarting anything. A write made while no host is connected
// blocks until one is, so nothing the guest reports is lost. Message types are only ever added, each with the
// version that introduced it; a peer ignores a type it does not know unless
// the frame asks for an answer.
package protocol

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Version is the protocol version this package speaks.
const Version = 1

// MaxPayload bounds a frame's payload: large transfers are split into
// frames, so that one session cannot starve the others on the port.
const MaxPayload = 1 << 20

// headerSize is the fixed size of a frame header.
const headerSize = 10

// Type is a frame's message type.
type Type uint8

// Message types (version 1).
const (
	// TypeHello (guest → host, stream 0, JSON Hello): the guest agent is up.
	TypeHello Type = 1
	// TypeHelloAck (host → guest, stream 0, JSON HelloAck): the agreed version.
	TypeHelloAck Type = 2
	// TypeShutdown (host → guest, stream 0, JSON Shutdown): stop the sandbox.
	TypeShutdown Type = 3
	// TypeExit (guest → host, stream 0, JSON Exit): the main process ended.
	TypeExit Type = 4
	// TypeError (either way, any stream, JSON Error): a request failed.
	TypeError Type = 5
	// TypeStart (host → guest, stream 0, JSON Start; version 1): start the
	// sandbox's main process; the guest sends TypeExit when it ends.
	TypeStart Type = 6
	// TypeHeartbeat (guest → host, stream 0, JSON Heartbeat): sent every
	// HeartbeatInterval; the host's idle timeout reads it.
	TypeHeartbeat Type = 7
	// TypeExec (host → guest, new stream, JSON Exec): start a process.
	TypeExec Type = 16
	// TypeStdin (host → guest, raw): input for a process; FlagEnd closes it.
	TypeStdin Type = 17
	// TypeStdout (guest → host, raw): a process's standard output.
	TypeStdout Type = 18
	// TypeStderr (guest → host, raw): a process's standard error.
	TypeStderr Type = 19
	// TypeExited (guest → host, JSON Exit): a process ended; ends the stream.
	TypeExited Type = 20
	// TypeSignal (host → guest, JSON Signal): signal a process.
	TypeSignal Type = 21
	// TypeExecStarted (guest → host, JSON ExecStarted): the process of an
	// exec stream runs; output frames may follow.
	TypeExecStarted Type = 22
	// TypeResize (host → guest, JSON Resize): a tty exec's window changed.
	TypeResize Type = 23
	// TypeFile (host → guest, new stream, JSON FileRequest): a file
	// operation (see file.go).
	TypeFile Type = 32
	// TypeData (either way, raw): the bytes of a file stream, in order;
	// FlagEnd marks the last frame of its direction.
	TypeData Type = 33
	// TypeFileResult (guest → host, JSON FileResult): the end of a file
	// stream, success or failure.
	TypeFileResult Type = 34
)

// Reserved streams. The host allocates the stream of each request it
// starts (an exec, a file operation) from FirstHostStream upwards and never
// reuses one within a connection.
const (
	// ControlStream carries the control messages (Hello, Start, Exit…).
	ControlStream uint32 = 0
	// MainOutputStream carries the main process's output, guest → host, as
	// TypeStdout and TypeStderr frames. The guest keeps up to
	// MainOutputBuffer bytes while no host reads and then drops the oldest
	// (with a TypeStderr note saying how much), so that a missing host never
	// blocks the workload.
	MainOutputStream uint32 = 1
	// FirstHostStream is the first stream the host may allocate.
	FirstHostStream uint32 = 2
)

// MainOutputBuffer bounds the main process's output the guest holds while
// no host reads it.
const MainOutputBuffer = 1 << 20

// Flags modify a frame.
type Flags uint8

const (
	// FlagEnd marks the last frame of its direction of a stream (EOF).
	FlagEnd Flags = 1 << 0
)

// Frame is one message on the wire.
type Frame struct {
	Stream  uint32
	Type    Type
	Flags   Flags
	Payload []byte
}

// ErrFrameTooLarge is returned for a frame whose payload exceeds MaxPayload.
var ErrFrameTooLarge = errors.New("protocol: frame payload exceeds MaxPayload")

// WriteFrame writes f to w in one Write call (so that concurrent writers
// serialised by a mutex never interleave a frame).
func WriteFrame(w io.Writer, f Frame) error {
	if len(f.Payload) > MaxPayload {
		return ErrFrameTooLarge
	}
	buf := make([]byte, headerSize+len(f.Payload))
	binary.BigEndian.PutUint32(buf[0:4], uint32(len(f.Payload)))
	binary.BigEndian.PutUint32(buf[4:8], f.Stream)
	buf[8] = byte(f.Type)
	buf[9] = byte(f.Flags)
	copy(buf[headerSize:], f.Payload)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame from r. It returns io.EOF only when r ends
// cleanly between frames, io.ErrUnexpectedEOF inside one, and
// ErrFrameTooLarge (without reading the payload) for an oversized length.
func ReadFrame(r io.Reader) (Frame, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[0:4])
	if n > MaxPayload {
		return Frame{}, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	f := Frame{Stream: binary.BigEndian.Uint32(hdr[4:8]), Type: Type(hdr[8]), Flags: Flags(hdr[9])}
	if n > 0 {
		f.Payload = make([]byte, n)
		if _, err := io.ReadFull(r, f.Payload); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, err
		}
	}
	return f, nil
}

// Hello is the guest's first message.
type Hello struct {
	// Version is the guest's protocol version.
	Version int `json:"version"`
	// Agent names the guest agent and its build.
	Agent string `json:"agent"`
	// BootNanos is the guest's CLOCK_BOOTTIME when the agent started.
	BootNanos int64 `json:"bootNanos"`
	// Main is the main process's state; nil until a Start was received (so
	// nil in the first Hello of a boot).
	Main *MainState `json:"main,omitempty"`
}

// MainState is what the guest knows of the sandbox's main process.
type MainState struct {
	// PID is its process id in the guest (0 when it failed to start).
	PID int `json:"pid,omitempty"`
	// Exit is set once it ended.
	Exit *Exit `json:"exit,omitempty"`
}

// HeartbeatInterval is how often the guest sends TypeHeartbeat.
const HeartbeatInterval = time.Second

// Heartbeat is the guest's periodic report of its activity.
type Heartbeat struct {
	// ActiveSessions counts exec sessions (and other host-driven sessions)
	// that are open now.
	ActiveSessions int `json:"activeSessions"`
	// ActivitySeq increases with every host-driven operation (an exec, a file
	// operation); the main process's own work does not count.
	ActivitySeq uint64 `json:"activitySeq"`
	// Metrics is the guest's resource usage now.
	Metrics *Metrics `json:"metrics,omitempty"`
}

// HelloAck is the host's answer to Hello.
type HelloAck struct {
	// Version is the version both peers speak from now on.
	Version int `json:"version"`
}

// Shutdown asks the guest to stop the sandbox.
type Shutdown struct {
	// GraceMillis is how long processes get between SIGTERM and SIGKILL.
	GraceMillis int64 `json:"graceMillis"`
}

// Exit reports the end of a process.
type Exit struct {
	// Code is the exit code; -1 when the process was killed by a signal.
	Code int `json:"code"`
	// Signal is the signal that killed it, if any.
	Signal string `json:"signal,omitempty"`
}

// Exec starts a process in the guest.

// Start is the run configuration of the sandbox's main process.
type Start struct {
	// Argv is the command line; Argv[0] is resolved against the PATH in Env
	// inside the guest's root when it has no '/'.
	Argv []string `json:"argv"`
	// Env is the environment, KEY=VALUE.
	Env []string `json:"env,omitempty"`
	// Dir is the working directory inside the guest's root ("" is "/").
	Dir string `json:"dir,omitempty"`
	// User is USER[:GROUP] or UID[:GID], resolved in the guest root's
	// /etc/passwd and /etc/group ("" is root). HOME is set from passwd when
	// Env has none.
	User string `json:"user,omitempty"`
	// Hostname is the guest's host name (sethostname, /etc/hostname and a
	// line in /etc/hosts); "" leaves it unchanged.
	Hostname string `json:"hostname,omitempty"`
	// Rlimits apply to the main process (and every process the guest starts
	// for the sandbox later).
	Rlimits []Rlimit `json:"rlimits,omitempty"`
	// Shell is the interpreter of scripts without a #! line ("" is /bin/sh).
	Shell string `json:"shell,omitempty"`
	// Scripts are written to ScriptsDir in the guest's root, mode 0755, by
	// file name (the host puts ScriptsDir first on PATH).
	Scripts map[string]string `json:"scripts,omitempty"`
	// Mounts are mounted in the guest's root, in order, before the patches.
	Mounts []Mount `json:"mounts,omitempty"`
	// Patches edit the guest's root, in order, before the main process
	// starts.
	Patches []Patch `json:"patches,omitempty"`
	// Init, when set, runs instead of Argv as PID 1 of a new PID namespace
	// (the init hand-off); it is then the main process.
	Init *Init `json:"init,omitempty"`
	// Network configures the guest's NIC before the main process starts;
	// nil: the VM has none (only lo, which is always up). Added within
	// version 1: a guest older than the field ignores it, so a host must
	// not send it to a guest it did not ship (the node agent boots its own
	// sandbox-init).
	Network *Network `json:"network,omitempty"`
}

// ScriptsDir is where Start.Scripts are written inside the guest's root.
const ScriptsDir = "/.sandbox/scripts"

// Rlimit is one resource limit; a negative value means unlimited.
type Rlimit struct {
	// Resource is the limit's name without RLIMIT_, lower case (nofile).
	Resource string `json:"resource"`
	Soft     int64  `json:"soft"`
	Hard     int64  `json:"hard"`
}

// Mount is one volume in the guest. Exactly one of Tmpfs, Disk or Files is
// set.
type Mount struct {
	// Path is the absolute directory in the guest's root (created if needed).
	Path string `json:"path"`
	// ReadOnly mounts it read-only (Files mounts always are).
	ReadOnly bool `json:"readOnly,omitempty"`
	// TmpfsMiB, when > 0, mounts a tmpfs of that size.
	TmpfsMiB int `json:"tmpfsMiB,omitempty"`
	// Disk is the serial of a virtio-blk disk holding an ext4 filesystem
	// (made by the host); the guest finds it in /sys/block/*/serial.
	Disk string `json:"disk,omitempty"`
	// Files, when non-nil, mounts a tmpfs holding these files (a ConfigMap or
	// Secret projection), then remounts it read-only.
	Files []File `json:"files,omitempty"`
}

// File is one file of a Files mount.
type File struct {
	// Name is the file's path relative to the mount, without "..".
	Name string `json:"name"`
	// Content is the file's bytes.
	Content []byte `json:"content"`
	// Mode is the permission bits (0 means 0644).
	Mode uint32 `json:"mode,omitempty"`
}

// Patch types (the API's PatchType values).
const (
	PatchText    = "Text"
	PatchFile    = "File"
	PatchSymlink = "Symlink"
	PatchMkdir   = "Mkdir"
	PatchRemove  = "Remove"
	PatchAppend  = "Append"
)

// Patch is one edit of the guest's root (the API's Patch with its content
// resolved by the host).
type Patch struct {
	// Type is one of the Patch* constants.
	Type string `json:"type"`
	// Path is the absolute path in the guest's root.
	Path string `json:"path"`
	// Content is the bytes of Text, File and Append patches.
	Content []byte `json:"content,omitempty"`
	// Target is where a Symlink points.
	Target string `json:"target,omitempty"`
	// Mode is the permission bits of a created file or directory (0 means
	// 0644 for files, 0755 for directories).
	Mode uint32 `json:"mode,omitempty"`
	// Replace lets Text, File and Symlink patches overwrite a path that
	// exists in the image. Without it such a path fails the start. Only the
	// image (the read-only lower layer) is checked, so a persistent writable
	// layer does not fail the next start.
	Replace bool `json:"replace,omitempty"`
}

// Init is the init hand-off: an init system run as PID 1 of its own PID
// namespace.
type Init struct {
	// Argv is the command line; Argv[0] is an absolute path or "auto"
	// (/sbin/init, /lib/systemd/systemd, /usr/lib/systemd/systemd).
	Argv []string `json:"argv"`
	// Env is the init's environment, KEY=VALUE.
	Env []string `json:"env,omitempty"`
}

// Network configures the guest's NIC; nil: the VM has none (only lo).
// The guest loads its network modules, waits for the NIC with MAC,
// gives it MTU and Address, brings it up, routes by default via Gateway
// and writes /etc/resolv.conf in the sandbox's root. A failure fails the
// Start.
type Network struct {
	// MAC is the NIC to configure, e.g. 52:54:00:12:34:56.
	MAC string `json:"mac"`
	// Address is the NIC's address with its prefix length (CIDR), e.g.
	// 10.0.2.15/24.
	Address string `json:"address"`
	// Gateway is the default route's next hop, e.g. 10.0.2.2; "": no
	// default route.
	Gateway string `json:"gateway"`
	// Nameservers are IP addresses written to /etc/resolv.conf, which
	// replaces the image's (its other settings are not kept).
	Nameservers []string `json:"nameservers,omitempty"`
	// Search are the search domains of /etc/resolv.conf.
	Search []string `json:"search,omitempty"`
	// MTU is the NIC's MTU; 0: 1500.
	MTU int `json:"mtu,omitempty"`
}

// Signal signals a process.
type Signal struct {
	Signal string `json:"signal"`
}

// Error reports a failed request.
type Error struct {
	Message string `json:"message"`
	// Kind classifies the failure for the host (one of the ErrorKind
	// constants; "" when none applies).
	Kind ErrorKind `json:"kind,omitempty"`
}

// Encode marshals a control message into a frame.
func Encode(stream uint32, t Type, msg any) (Frame, error) {
	b, err := json.Marshal(msg)
	if err != nil {
		return Frame{}, fmt.Errorf("protocol: encoding type %d: %w", t, err)
	}
	return Frame{Stream: stream, Type: t, Payload: b}, nil
}

// Decode unmarshals a control message's payload; the error names the
// frame's type and stream.
func Decode(f Frame, msg any) error {
	if err := json.Unmarshal(f.Payload, msg); err != nil {
		return fmt.Errorf("protocol: decoding type %d on stream %d: %w", f.Type, f.Stream, err)
	}
	return nil
}

// Negotiate returns the version two peers speak, or an error when they
// share none (a guest older than version 1 does not exist).
func Negotiate(host, guest int) (int, error) {
	if guest < 1 {
		return 0, fmt.Errorf("protocol: guest speaks version %d, host needs at least 1", guest)
	}
	return min(host, guest), nil
}
