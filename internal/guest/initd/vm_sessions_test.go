package initd_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"net"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// vmHost is the test's node agent side of exec sessions and file
// operations on one connection: one session at a time, frames of other
// streams (heartbeats, main output) set aside.
type vmHost struct {
	t    *testing.T
	g    Gomega
	conn net.Conn
	next uint32
	// heartbeats are the heartbeats read meanwhile.
	heartbeats []protocol.Heartbeat
	// mainOut is the main process's output read meanwhile.
	mainOut []byte
}

func newVMHost(t *testing.T, conn net.Conn) *vmHost {
	return &vmHost{t: t, g: NewWithT(t), conn: conn, next: protocol.FirstHostStream}
}

func (h *vmHost) stream() uint32 {
	s := h.next
	h.next++
	return s
}

func (h *vmHost) sendOn(stream uint32, typ protocol.Type, msg any) {
	h.t.Helper()
	f, err := protocol.Encode(stream, typ, msg)
	if err == nil {
		err = protocol.WriteFrame(h.conn, f)
	}
	if err != nil {
		h.t.Fatal(err)
	}
}

// sendStream sends data as frames of typ, FlagEnd on the last.
func (h *vmHost) sendStream(stream uint32, typ protocol.Type, data []byte) {
	h.t.Helper()
	for {
		n := min(len(data), protocol.MaxPayload)
		f := protocol.Frame{Stream: stream, Type: typ, Payload: data[:n]}
		data = data[n:]
		if len(data) == 0 {
			f.Flags = protocol.FlagEnd
		}
		if err := protocol.WriteFrame(h.conn, f); err != nil {
			h.t.Error(err)
			return
		}
		if len(data) == 0 {
			return
		}
	}
}

// frame reads the next frame of stream.
func (h *vmHost) frame(stream uint32) protocol.Frame {
	h.t.Helper()
	for {
		f := readFrame(h.t, h.conn, 60*time.Second)
		switch {
		case f.Stream == stream:
			return f
		case f.Type == protocol.TypeHeartbeat:
			var hb protocol.Heartbeat
			h.g.Expect(protocol.Decode(f, &hb)).To(Succeed())
			h.heartbeats = append(h.heartbeats, hb)
		case f.Stream == protocol.MainOutputStream:
			h.mainOut = append(h.mainOut, f.Payload...)
		}
	}
}

// vmExec is what the host saw of an exec stream.
type vmExec struct {
	pid    int
	out    []byte
	errOut []byte
	errors []protocol.Error
	exit   *protocol.Exit
}

// collect reads stream until it ends; until (when set) is called on each
// output frame, with what came so far.
func (h *vmHost) collect(stream uint32, r *vmExec, until func(out []byte) bool) {
	h.t.Helper()
	for {
		f := h.frame(stream)
		switch f.Type {
		case protocol.TypeExecStarted:
			var st protocol.ExecStarted
			h.g.Expect(protocol.Decode(f, &st)).To(Succeed())
			r.pid = st.PID
			if until != nil && until(nil) {
				return
			}
		case protocol.TypeStdout:
			r.out = append(r.out, f.Payload...)
			if until != nil && until(r.out) {
				return
			}
		case protocol.TypeStderr:
			r.errOut = append(r.errOut, f.Payload...)
		case protocol.TypeError:
			var e protocol.Error
			h.g.Expect(protocol.Decode(f, &e)).To(Succeed())
			r.errors = append(r.errors, e)
			if r.pid == 0 {
				return
			}
		case protocol.TypeExited:
			r.exit = &protocol.Exit{}
			h.g.Expect(protocol.Decode(f, r.exit)).To(Succeed())
			return
		default:
			h.t.Fatalf("unexpected frame of type %d on stream %d: %s", f.Type, stream, f.Payload)
		}
	}
}

// exec runs ex to its end, feeding it stdin (when non-nil) concurrently.
func (h *vmHost) exec(ex protocol.Exec, stdin []byte) vmExec {
	h.t.Helper()
	s := h.stream()
	ex.Stdin = ex.Stdin || stdin != nil
	h.sendOn(s, protocol.TypeExec, ex)
	done := make(chan struct{})
	if stdin != nil {
		go func() {
			defer close(done)
			h.sendStream(s, protocol.TypeStdin, stdin)
		}()
	} else {
		close(done)
	}
	var r vmExec
	h.collect(s, &r, nil)
	<-done
	return r
}

// file runs one file operation.
func (h *vmHost) file(req protocol.FileRequest, data []byte) ([]byte, protocol.FileResult) {
	h.t.Helper()
	s := h.stream()
	h.sendOn(s, protocol.TypeFile, req)
	done := make(chan struct{})
	if data != nil {
		go func() {
			defer close(done)
			h.sendStream(s, protocol.TypeData, data)
		}()
	} else {
		close(done)
	}
	defer func() { <-done }()
	var out []byte
	for {
		f := h.frame(s)
		switch f.Type {
		case protocol.TypeData:
			out = append(out, f.Payload...)
		case protocol.TypeFileResult:
			var res protocol.FileResult
			h.g.Expect(protocol.Decode(f, &res)).To(Succeed())
			return out, res
		default:
			h.t.Fatalf("unexpected frame of type %d on stream %d: %s", f.Type, s, f.Payload)
		}
	}
}

// ok runs a file operation that must succeed.
func (h *vmHost) ok(req protocol.FileRequest, data []byte) ([]byte, protocol.FileResult) {
	h.t.Helper()
	out, res := h.file(req, data)
	if res.Error != nil {
		h.t.Fatalf("%s %s: %+v", req.Op, req.Path, *res.Error)
	}
	return out, res
}

// fail runs a file operation that must fail, and returns its error.
func (h *vmHost) fail(req protocol.FileRequest, data []byte) protocol.Error {
	h.t.Helper()
	_, res := h.file(req, data)
	if res.Error == nil {
		h.t.Fatalf("%s %s succeeded", req.Op, req.Path)
	}
	return *res.Error
}

// checkSessions drives exec sessions, file operations, metrics and the
// drain through a booted sandbox (whose Start's user is app, in
// /home/app/work, with PATH holding /bin and a nofile limit of 123; its
// image has a /etc/secret of mode 0600 holding "root only\n").
func checkSessions(t *testing.T, conn net.Conn) {
	h := newVMHost(t, conn)
	g := h.g
	t0 := time.Now()

	// Exec: stdin through cat, checked by sha256.
	data := make([]byte, 3<<20+123)
	_, _ = rand.Read(data)
	r := h.exec(protocol.Exec{Argv: []string{"cat"}}, data)
	g.Expect(r.exit).To(Equal(&protocol.Exit{Code: 0}))
	g.Expect(r.out).To(HaveLen(len(data)))
	g.Expect(sha256.Sum256(r.out)).To(Equal(sha256.Sum256(data)))
	t.Logf("exec: %d bytes round-tripped through cat in %v", len(data), time.Since(t0).Round(time.Millisecond))

	r = h.exec(protocol.Exec{Argv: []string{"sh", "-c", "id -un; pwd; ulimit -n; echo err >&2; exit 7"}}, nil)
	g.Expect(string(r.out)).To(Equal("app\n/home/app/work\n123\n"), "the Start's user, directory and rlimits")
	g.Expect(string(r.errOut)).To(Equal("err\n"))
	g.Expect(r.exit).To(Equal(&protocol.Exit{Code: 7}))

	// A tty: its size and name, then a resize.
	s := h.stream()
	h.sendOn(s, protocol.TypeExec, protocol.Exec{Argv: []string{"sh", "-c", "stty size; tty; read x; stty size"}, Tty: true, Rows: 30, Cols: 100, Stdin: true})
	var tty vmExec
	h.collect(s, &tty, func(out []byte) bool {
		return bytes.Contains(out, []byte("/dev/pts/")) && bytes.HasSuffix(out, []byte("\n"))
	})
	h.sendOn(s, protocol.TypeResize, protocol.Resize{Rows: 40, Cols: 120})
	if err := protocol.WriteFrame(conn, protocol.Frame{Stream: s, Type: protocol.TypeStdin, Payload: []byte("\n")}); err != nil {
		t.Fatal(err)
	}
	h.collect(s, &tty, nil)
	g.Expect(string(tty.out)).To(MatchRegexp(`^30 100\r\n/dev/pts/\d+\r\n(\r\n)?40 120\r\n$`))
	g.Expect(tty.exit).To(Equal(&protocol.Exit{Code: 0}))

	// A signal, a timeout.
	s = h.stream()
	h.sendOn(s, protocol.TypeExec, protocol.Exec{Argv: []string{"sleep", "30"}})
	var sig vmExec
	h.collect(s, &sig, func(out []byte) bool { return true }) // ExecStarted
	g.Expect(sig.pid).To(BeNumerically(">", 1))
	h.sendOn(s, protocol.TypeSignal, protocol.Signal{Signal: "SIGINT"})
	h.collect(s, &sig, nil)
	g.Expect(sig.exit).To(Equal(&protocol.Exit{Code: -1, Signal: "SIGINT"}))
	r = h.exec(protocol.Exec{Argv: []string{"sleep", "30"}, TimeoutMillis: 300}, nil)
	g.Expect(r.errors).To(HaveLen(1))
	g.Expect(r.errors[0].Kind).To(Equal(protocol.ErrTimeout))
	g.Expect(r.exit).To(Equal(&protocol.Exit{Code: -1, Signal: "SIGKILL"}))
	r = h.exec(protocol.Exec{Argv: []string{"nope"}}, nil)
	g.Expect(r.errors).To(HaveLen(1))
	g.Expect(r.errors[0].Kind).To(Equal(protocol.ErrNotFound))
	t.Logf("exec sessions done in %v", time.Since(t0).Round(time.Millisecond))

	// Files: 10 MiB written and read back, in app's home.
	t1 := time.Now()
	h.ok(protocol.FileRequest{Op: protocol.FileMkdir, Path: "/home/app/t"}, nil)
	big := make([]byte, 10<<20)
	_, _ = rand.Read(big)
	_, res := h.ok(protocol.FileRequest{Op: protocol.FileWrite, Path: "/home/app/t/big"}, big)
	g.Expect(res.Bytes).To(Equal(int64(len(big))))
	out, _ := h.ok(protocol.FileRequest{Op: protocol.FileRead, Path: "/home/app/t/big"}, nil)
	g.Expect(sha256.Sum256(out)).To(Equal(sha256.Sum256(big)))
	t.Logf("files: 10 MiB written and read back in %v", time.Since(t1).Round(time.Millisecond))
	_, res = h.ok(protocol.FileRequest{Op: protocol.FileStat, Path: "/home/app/t/big"}, nil)
	g.Expect(res.Stat.Size).To(Equal(int64(len(big))))
	g.Expect(res.Stat.UID).To(Equal(uint32(1000)))
	h.ok(protocol.FileRequest{Op: protocol.FileRemove, Path: "/home/app/t/big"}, nil)
	h.ok(protocol.FileRequest{Op: protocol.FileMkdir, Path: "/home/app/t/d/e", Recursive: true}, nil)
	h.ok(protocol.FileRequest{Op: protocol.FileWrite, Path: "/home/app/t/d/e/f.txt", Mode: 0o600}, []byte("hello"))
	h.ok(protocol.FileRequest{Op: protocol.FileRename, Path: "/home/app/t/d/e/f.txt", Dest: "/home/app/t/d/g.txt"}, nil)
	_, res = h.ok(protocol.FileRequest{Op: protocol.FileList, Path: "/home/app/t/d"}, nil)
	g.Expect(res.Entries).To(HaveLen(2))
	g.Expect([]string{res.Entries[0].Name, res.Entries[1].Name}).To(Equal([]string{"e", "g.txt"}))
	h.ok(protocol.FileRequest{Op: protocol.FileCopy, Path: "/home/app/t/d", Dest: "/home/app/t/d2", Recursive: true}, nil)
	archive, _ := h.ok(protocol.FileRequest{Op: protocol.FileTar, Path: "/home/app/t/d2"}, nil)
	h.ok(protocol.FileRequest{Op: protocol.FileUntar, Path: "/home/app/t/restored"}, archive)
	out, _ = h.ok(protocol.FileRequest{Op: protocol.FileRead, Path: "/home/app/t/restored/d2/g.txt"}, nil)
	g.Expect(string(out)).To(Equal("hello"))
	h.ok(protocol.FileRequest{Op: protocol.FileRemove, Path: "/home/app/t/d", Recursive: true}, nil)
	_, res = h.ok(protocol.FileRequest{Op: protocol.FileExists, Path: "/home/app/t/d"}, nil)
	g.Expect(res.Exists).To(BeFalse())
	_, res = h.ok(protocol.FileRequest{Op: protocol.FileExists, Path: "/home/app/t/d2/e"}, nil)
	g.Expect(res.Exists).To(BeTrue())
	g.Expect(h.fail(protocol.FileRequest{Op: protocol.FileStat, Path: "/missing"}, nil)).To(Equal(
		protocol.Error{Kind: protocol.ErrNotFound, Message: "lstat /missing: no such file or directory"}))
	g.Expect(h.fail(protocol.FileRequest{Op: protocol.FileRead, Path: "/etc/secret"}, nil)).To(Equal(
		protocol.Error{Kind: protocol.ErrPermissionDenied, Message: "open /etc/secret: permission denied"}))
	out, _ = h.ok(protocol.FileRequest{Op: protocol.FileRead, Path: "/etc/secret", User: "root"}, nil)
	g.Expect(string(out)).To(Equal("root only\n"))
	t.Logf("file operations done in %v", time.Since(t1).Round(time.Millisecond))

	// Metrics: the heartbeats read meanwhile carry them.
	for len(h.heartbeats) == 0 {
		if f := readFrame(t, conn, 10*time.Second); f.Type == protocol.TypeHeartbeat {
			var hb protocol.Heartbeat
			g.Expect(protocol.Decode(f, &hb)).To(Succeed())
			h.heartbeats = append(h.heartbeats, hb)
		}
	}
	m := h.heartbeats[len(h.heartbeats)-1].Metrics
	g.Expect(m).NotTo(BeNil())
	t.Logf("metrics: %+v", *m)
	g.Expect(m.CPUNanos).To(BeNumerically(">", 0))
	g.Expect(m.MemoryTotalBytes).To(BeNumerically(">", m.MemoryAvailableBytes))
	g.Expect(m.MemoryAvailableBytes).To(BeNumerically(">", 0))
	g.Expect(m.DiskReadBytes).To(BeNumerically(">", 0))
	g.Expect(m.DiskWriteBytes).To(BeNumerically(">", 0))
	g.Expect(m.UpperUsedBytes).To(BeNumerically(">", 0))
	g.Expect(m.UpperFreeBytes).To(BeNumerically(">", 0))
	g.Expect(m.UptimeNanos).To(BeNumerically(">", 0))
	g.Expect(h.heartbeats[len(h.heartbeats)-1].ActivitySeq).To(BeNumerically(">=", 20))

	// The drain: no new exec, no writes; reads go on.
	h.sendOn(0, protocol.TypeDrain, protocol.Drain{})
	r = h.exec(protocol.Exec{Argv: []string{"true"}}, nil)
	g.Expect(r.errors).To(HaveLen(1))
	g.Expect(r.errors[0].Kind).To(Equal(protocol.ErrDraining))
	g.Expect(h.fail(protocol.FileRequest{Op: protocol.FileWrite, Path: "/home/app/t/x"}, []byte("x")).Kind).To(Equal(protocol.ErrDraining))
	out, _ = h.ok(protocol.FileRequest{Op: protocol.FileRead, Path: "/home/app/t/restored/d2/g.txt"}, nil)
	g.Expect(string(out)).To(Equal("hello"))
}
