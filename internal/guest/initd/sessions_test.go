package initd

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	. "github.com/onsi/gomega/gstruct"
	"golang.org/x/sys/unix"

	"github.com/microvm-dev/sandbox-operator/internal/guest/guesttest"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// execResult is what a host saw of one exec stream.
type execResult struct {
	started        *protocol.ExecStarted
	stdout, stderr []byte
	errors         []protocol.Error
	exit           *protocol.Exit
}

// collectExec reads the frames of stream until it ends (TypeExited, or a
// TypeError before TypeExecStarted), skipping other streams' frames.
func collectExec(t *testing.T, g Gomega, host deadlineReader, stream uint32) execResult {
	t.Helper()
	var r execResult
	for {
		f := nextFrame(t, host, 20*time.Second)
		if f.Stream != stream {
			continue
		}
		switch f.Type {
		case protocol.TypeExecStarted:
			st := decodeAs[protocol.ExecStarted](g, f, f.Type)
			r.started = &st
		case protocol.TypeStdout:
			r.stdout = append(r.stdout, f.Payload...)
		case protocol.TypeStderr:
			r.stderr = append(r.stderr, f.Payload...)
		case protocol.TypeError:
			r.errors = append(r.errors, decodeAs[protocol.Error](g, f, f.Type))
			if r.started == nil {
				return r
			}
		case protocol.TypeExited:
			e := decodeAs[protocol.Exit](g, f, f.Type)
			r.exit = &e
			return r
		default:
			t.Fatalf("unexpected frame of type %d on stream %d: %s", f.Type, stream, f.Payload)
		}
	}
}

// waitStarted reads frames until stream's TypeExecStarted.
func waitStarted(t *testing.T, g Gomega, host deadlineReader, stream uint32) protocol.ExecStarted {
	t.Helper()
	for {
		f := nextFrame(t, host, 20*time.Second)
		if f.Stream == stream {
			return decodeAs[protocol.ExecStarted](g, f, protocol.TypeExecStarted)
		}
	}
}

// sendRaw sends a raw frame.
func sendRaw(t *testing.T, host io.Writer, f protocol.Frame) {
	t.Helper()
	if err := protocol.WriteFrame(host, f); err != nil {
		t.Fatal(err)
	}
}

// sendData sends data on stream as frames of type typ of at most
// MaxPayload, the last with FlagEnd.
func sendStream(t *testing.T, host io.Writer, stream uint32, typ protocol.Type, data []byte) {
	t.Helper()
	for {
		n := min(len(data), protocol.MaxPayload)
		f := protocol.Frame{Stream: stream, Type: typ, Payload: data[:n]}
		data = data[n:]
		if len(data) == 0 {
			f.Flags = protocol.FlagEnd
		}
		sendRaw(t, host, f)
		if len(data) == 0 {
			return
		}
	}
}

// fileOp runs one file operation: it sends req on stream, then data (when
// non-nil) and returns the streamed data and the result.
func fileOp(t *testing.T, g Gomega, host deadlineReaderWriter, stream uint32, req protocol.FileRequest, data []byte) ([]byte, protocol.FileResult) {
	t.Helper()
	send(t, host, stream, protocol.TypeFile, req)
	if data != nil {
		sendStream(t, host, stream, protocol.TypeData, data)
	}
	var out []byte
	ended := false
	for {
		f := nextFrame(t, host, 20*time.Second)
		if f.Stream != stream {
			continue
		}
		switch f.Type {
		case protocol.TypeData:
			g.Expect(ended).To(BeFalse(), "data after FlagEnd")
			out = append(out, f.Payload...)
			ended = f.Flags&protocol.FlagEnd != 0
		case protocol.TypeFileResult:
			res := decodeAs[protocol.FileResult](g, f, f.Type)
			if res.Error == nil && (req.Op == protocol.FileRead || req.Op == protocol.FileTar) {
				g.Expect(ended).To(BeTrue(), "a FlagEnd data frame before the result")
			}
			return out, res
		default:
			t.Fatalf("unexpected frame of type %d on stream %d: %s", f.Type, stream, f.Payload)
		}
	}
}

// serveRoot serves a Session whose exec sessions and file operations run
// in a busybox root through the real helpers (root only).
func serveRoot(t *testing.T, start protocol.Start) (*virtioPortSim, *Session, string) {
	t.Helper()
	root := helperRoot(t, map[string]guesttest.File{
		"etc/noexec": {Content: "#!/bin/sh\n", Mode: 0o644},
		"etc/secret": {Content: "root only", Mode: 0o600},
		"work":       {Dir: true},
	})
	if err := os.Chmod(filepath.Join(root, "work"), 0o777); err != nil {
		t.Fatal(err)
	}
	port, s, _ := serveSim(t, nil)
	// No Start is sent: the test's start stands in for the accepted one.
	runExec, runFile := RunExecIn(root, t.Logf), RunFileIn(root, t.Logf)
	s.RunExec = func(_ protocol.Start, ex protocol.Exec) (*ExecProcess, error) { return runExec(start, ex) }
	s.RunFile = func(_ protocol.Start, req protocol.FileRequest) (*FileProcess, error) { return runFile(start, req) }
	return port, s, root
}

func sha(b []byte) [32]byte { return sha256.Sum256(b) }

func TestSessionExecSessionsThroughTheHelper(t *testing.T) {
	start := protocol.Start{Env: []string{"PATH=/bin"}, User: "app", Dir: "/home/app",
		Rlimits: []protocol.Rlimit{{Resource: "nofile", Soft: 77, Hard: 88}}}
	port, _, _ := serveRoot(t, start)
	host := port.Connect(t)
	g := NewWithT(t)
	handshake(t, g, host)
	stream := protocol.FirstHostStream
	next := func() uint32 { stream++; return stream }

	t.Run("the Start's user, dir, env and rlimits are the defaults; stdout and stderr are separate", func(t *testing.T) {
		g := NewWithT(t)
		id := next()
		send(t, host, id, protocol.TypeExec, protocol.Exec{Argv: []string{"sh", "-c", "id -u; pwd; ulimit -n; echo oops >&2"}})
		r := collectExec(t, g, host, id)
		g.Expect(r.started).NotTo(BeNil())
		g.Expect(r.started.PID).To(BeNumerically(">", 1))
		g.Expect(string(r.stdout)).To(Equal("1000\n/home/app\n77\n"))
		g.Expect(string(r.stderr)).To(Equal("oops\n"))
		g.Expect(*r.exit).To(Equal(protocol.Exit{Code: 0}))
	})
	t.Run("stdin round-trips through cat", func(t *testing.T) {
		g := NewWithT(t)
		data := make([]byte, 3<<20+12345)
		_, _ = rand.Read(data)
		id := next()
		send(t, host, id, protocol.TypeExec, protocol.Exec{Argv: []string{"cat"}, Stdin: true, User: "root"})
		sendStream(t, host, id, protocol.TypeStdin, data)
		r := collectExec(t, g, host, id)
		g.Expect(r.stdout).To(HaveLen(len(data)))
		g.Expect(sha(r.stdout)).To(Equal(sha(data)))
		g.Expect(*r.exit).To(Equal(protocol.Exit{Code: 0}))
	})
	t.Run("the exit code is reported", func(t *testing.T) {
		g := NewWithT(t)
		id := next()
		send(t, host, id, protocol.TypeExec, protocol.Exec{Argv: []string{"sh", "-c", "exit 7"}})
		g.Expect(*collectExec(t, g, host, id).exit).To(Equal(protocol.Exit{Code: 7}))
	})
	t.Run("a signal reaches the process", func(t *testing.T) {
		g := NewWithT(t)
		id := next()
		send(t, host, id, protocol.TypeExec, protocol.Exec{Argv: []string{"sleep", "30"}})
		waitStarted(t, g, host, id)
		send(t, host, id, protocol.TypeSignal, protocol.Signal{Signal: "SIGTERM"})
		r := collectExec(t, g, host, id)
		g.Expect(*r.exit).To(Equal(protocol.Exit{Code: -1, Signal: "SIGTERM"}))
	})
	t.Run("a timeout kills the process and says so before the exit", func(t *testing.T) {
		g := NewWithT(t)
		id := next()
		t0 := time.Now()
		send(t, host, id, protocol.TypeExec, protocol.Exec{Argv: []string{"sleep", "30"}, TimeoutMillis: 200})
		r := collectExec(t, g, host, id)
		g.Expect(time.Since(t0)).To(BeNumerically("<", 10*time.Second))
		g.Expect(r.errors).To(HaveLen(1))
		g.Expect(r.errors[0].Kind).To(Equal(protocol.ErrTimeout))
		g.Expect(*r.exit).To(Equal(protocol.Exit{Code: -1, Signal: "SIGKILL"}))
	})
	t.Run("a tty: its size, a resize, one merged output", func(t *testing.T) {
		g := NewWithT(t)
		id := next()
		send(t, host, id, protocol.TypeExec, protocol.Exec{Argv: []string{"sh", "-c", "stty size; echo err >&2; read x; stty size"},
			Tty: true, Rows: 30, Cols: 100, Stdin: true})
		waitStarted(t, g, host, id)
		// The first size is printed before the resize is sent.
		var first []byte
		for !bytes.Contains(first, []byte("err\r\n")) {
			f := nextFrame(t, host, 20*time.Second)
			if f.Stream == id {
				g.Expect(f.Type).To(Equal(protocol.TypeStdout))
				first = append(first, f.Payload...)
			}
		}
		send(t, host, id, protocol.TypeResize, protocol.Resize{Rows: 40, Cols: 120})
		sendRaw(t, host, protocol.Frame{Stream: id, Type: protocol.TypeStdin, Payload: []byte("go\n")})
		r := collectExec(t, g, host, id)
		g.Expect(r.stderr).To(BeEmpty())
		g.Expect(string(first) + string(r.stdout)).To(MatchRegexp(`^30 100\r\nerr\r\n(go\r\n)?40 120\r\n$`))
		g.Expect(*r.exit).To(Equal(protocol.Exit{Code: 0}))
	})
	t.Run("failures before the start carry a kind and end the stream", func(t *testing.T) {
		for _, tc := range []struct {
			ex   protocol.Exec
			kind protocol.ErrorKind
			msg  string
		}{
			{protocol.Exec{Argv: []string{"nope"}}, protocol.ErrNotFound, `"nope" not found`},
			{protocol.Exec{Argv: []string{"/bin/nope"}}, protocol.ErrNotFound, "exec /bin/nope: no such file or directory"},
			{protocol.Exec{Argv: []string{"/etc/noexec"}}, protocol.ErrPermissionDenied, "permission denied"},
			{protocol.Exec{Argv: []string{"true"}, User: "nobody"}, protocol.ErrInvalid, `no user "nobody"`},
			{protocol.Exec{Argv: []string{"true"}, Dir: "/missing"}, protocol.ErrInvalid, "working directory /missing"},
			{protocol.Exec{}, protocol.ErrInvalid, "empty argv"},
		} {
			id := next()
			send(t, host, id, protocol.TypeExec, tc.ex)
			r := collectExec(t, g, host, id)
			g.Expect(r.started).To(BeNil())
			g.Expect(r.errors).To(ConsistOf(protocol.Error{Kind: tc.kind, Message: r.errors[0].Message}))
			g.Expect(r.errors[0].Message).To(ContainSubstring(tc.msg))
		}
	})
	t.Run("a running session counts in the heartbeat", func(t *testing.T) {
		g := NewWithT(t)
		id := next()
		send(t, host, id, protocol.TypeExec, protocol.Exec{Argv: []string{"sleep", "30"}})
		waitStarted(t, g, host, id)
		g.Eventually(func() int {
			f := readAnyFrame(t, host, 5*time.Second)
			if f.Type != protocol.TypeHeartbeat {
				return -1
			}
			return decodeAs[protocol.Heartbeat](g, f, f.Type).ActiveSessions
		}).Should(Equal(1))
		send(t, host, id, protocol.TypeSignal, protocol.Signal{Signal: "KILL"})
		g.Expect(*collectExec(t, g, host, id).exit).To(Equal(protocol.Exit{Code: -1, Signal: "SIGKILL"}))
	})
}

func TestSessionKillsTheSessionsOfAHostThatWent(t *testing.T) {
	g := NewWithT(t)
	port, s, _ := serveRoot(t, protocol.Start{Env: []string{"PATH=/bin"}})
	host := port.Connect(t)
	handshake(t, g, host)
	send(t, host, 2, protocol.TypeExec, protocol.Exec{Argv: []string{"sleep", "30"}})
	pid := waitStarted(t, g, host, 2).PID
	g.Expect(host.Close()).To(Succeed())
	g.Eventually(func() error { return unix.Kill(pid, 0) }).WithTimeout(5 * time.Second).Should(MatchError(unix.ESRCH))
	g.Eventually(func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.streams)
	}).Should(BeZero())
	// The next host gets nothing of it.
	host = port.Connect(t)
	handshake(t, g, host)
	expectNoFrame(t, host, 100*time.Millisecond)
}

func TestSessionFileOperationsThroughTheHelper(t *testing.T) {
	port, _, root := serveRoot(t, protocol.Start{Env: []string{"PATH=/bin"}, User: "app"})
	host := port.Connect(t)
	g := NewWithT(t)
	handshake(t, g, host)
	stream := protocol.FirstHostStream
	op := func(req protocol.FileRequest, data []byte) ([]byte, protocol.FileResult) {
		stream++
		return fileOp(t, g, host, stream, req, data)
	}
	ok := func(req protocol.FileRequest, data []byte) ([]byte, protocol.FileResult) {
		out, res := op(req, data)
		g.ExpectWithOffset(1, res.Error).To(BeNil(), "%s %s", req.Op, req.Path)
		return out, res
	}

	big := make([]byte, 5<<20+7)
	_, _ = rand.Read(big)
	_, res := ok(protocol.FileRequest{Op: protocol.FileWrite, Path: "/work/big", Mode: 0o640}, big)
	g.Expect(res.Bytes).To(Equal(int64(len(big))))
	fi, err := os.Stat(filepath.Join(root, "work/big"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(fi.Mode().Perm()).To(Equal(os.FileMode(0o640)))
	g.Expect(fi.Sys().(*syscall.Stat_t).Uid).To(Equal(uint32(1000)), "written as the Start's user")
	out, res := ok(protocol.FileRequest{Op: protocol.FileRead, Path: "/work/big"}, nil)
	g.Expect(sha(out)).To(Equal(sha(big)))
	g.Expect(res.Bytes).To(Equal(int64(len(big))))
	out, _ = ok(protocol.FileRequest{Op: protocol.FileRead, Path: "/work/big", Offset: 10, Length: 5}, nil)
	g.Expect(out).To(Equal(big[10:15]))
	_, _ = ok(protocol.FileRequest{Op: protocol.FileWrite, Path: "/work/big", Append: true}, []byte("tail"))
	_, res = ok(protocol.FileRequest{Op: protocol.FileStat, Path: "/work/big"}, nil)
	g.Expect(*res.Stat).To(MatchFields(IgnoreExtras, Fields{"Name": Equal("/work/big"), "Kind": Equal(protocol.KindFile),
		"Size": Equal(int64(len(big) + 4)), "Mode": Equal(uint32(0o640)), "UID": Equal(uint32(1000))}))
	_, res = op(protocol.FileRequest{Op: protocol.FileWrite, Path: "/work/big", CreateOnly: true}, []byte("x"))
	g.Expect(res.Error).To(PointTo(MatchFields(IgnoreExtras, Fields{"Kind": Equal(protocol.ErrExists)})))

	_, _ = ok(protocol.FileRequest{Op: protocol.FileMkdir, Path: "/work/a/b/c", Recursive: true}, nil)
	_, _ = ok(protocol.FileRequest{Op: protocol.FileMkdir, Path: "/work/a/b/c", Recursive: true}, nil)
	_, res = op(protocol.FileRequest{Op: protocol.FileMkdir, Path: "/work/a"}, nil)
	g.Expect(res.Error.Kind).To(Equal(protocol.ErrExists))
	_, _ = ok(protocol.FileRequest{Op: protocol.FileWrite, Path: "/work/a/b/c/f.txt", Mode: 0o600}, []byte("hello"))
	_, _ = ok(protocol.FileRequest{Op: protocol.FileRename, Path: "/work/a/b/c/f.txt", Dest: "/work/a/b/g.txt"}, nil)
	_, res = ok(protocol.FileRequest{Op: protocol.FileList, Path: "/work/a/b"}, nil)
	g.Expect(res.Entries).To(HaveLen(2))
	g.Expect(res.Entries[0].Name).To(Equal("c"))
	g.Expect(res.Entries[0].Kind).To(Equal(protocol.KindDir))
	g.Expect(res.Entries[1].Name).To(Equal("g.txt"))
	g.Expect(res.Entries[1].Size).To(Equal(int64(5)))
	_, res = op(protocol.FileRequest{Op: protocol.FileCopy, Path: "/work/a", Dest: "/work/copy"}, nil)
	g.Expect(res.Error.Kind).To(Equal(protocol.ErrIsDirectory), "a tree needs Recursive")
	_, _ = ok(protocol.FileRequest{Op: protocol.FileCopy, Path: "/work/a", Dest: "/work/copy", Recursive: true}, nil)
	out, _ = ok(protocol.FileRequest{Op: protocol.FileRead, Path: "/work/copy/b/g.txt"}, nil)
	g.Expect(string(out)).To(Equal("hello"))
	_, res = op(protocol.FileRequest{Op: protocol.FileRemove, Path: "/work/a"}, nil)
	g.Expect(res.Error.Kind).To(Equal(protocol.ErrNotEmpty))
	_, _ = ok(protocol.FileRequest{Op: protocol.FileRemove, Path: "/work/a", Recursive: true}, nil)
	_, res = ok(protocol.FileRequest{Op: protocol.FileExists, Path: "/work/a"}, nil)
	g.Expect(res.Exists).To(BeFalse())
	_, res = ok(protocol.FileRequest{Op: protocol.FileExists, Path: "/work/copy/b/g.txt"}, nil)
	g.Expect(res.Exists).To(BeTrue())

	// tar, then untar elsewhere.
	archive, _ := ok(protocol.FileRequest{Op: protocol.FileTar, Path: "/work/copy"}, nil)
	names := tarNames(t, archive)
	g.Expect(names).To(ConsistOf("copy/", "copy/b/", "copy/b/c/", "copy/b/g.txt"))
	_, _ = ok(protocol.FileRequest{Op: protocol.FileUntar, Path: "/work/restored"}, archive)
	out, _ = ok(protocol.FileRequest{Op: protocol.FileRead, Path: "/work/restored/copy/b/g.txt"}, nil)
	g.Expect(string(out)).To(Equal("hello"))
	_, res = ok(protocol.FileRequest{Op: protocol.FileStat, Path: "/work/restored/copy/b/g.txt"}, nil)
	g.Expect(res.Stat.Mode).To(Equal(uint32(0o600)), "modes are applied")

	// Errors.
	_, res = op(protocol.FileRequest{Op: protocol.FileStat, Path: "/x"}, nil)
	g.Expect(*res.Error).To(Equal(protocol.Error{Kind: protocol.ErrNotFound, Message: "lstat /x: no such file or directory"}))
	_, res = op(protocol.FileRequest{Op: protocol.FileRead, Path: "/etc/secret"}, nil)
	g.Expect(*res.Error).To(Equal(protocol.Error{Kind: protocol.ErrPermissionDenied, Message: "open /etc/secret: permission denied"}))
	out, _ = ok(protocol.FileRequest{Op: protocol.FileRead, Path: "/etc/secret", User: "root"}, nil)
	g.Expect(string(out)).To(Equal("root only"))
	_, res = op(protocol.FileRequest{Op: protocol.FileWrite, Path: "/etc/new"}, []byte("x"))
	g.Expect(res.Error.Kind).To(Equal(protocol.ErrPermissionDenied))
	_, res = op(protocol.FileRequest{Op: protocol.FileRead, Path: "relative"}, nil)
	g.Expect(res.Error.Kind).To(Equal(protocol.ErrInvalid))
	_, res = op(protocol.FileRequest{Op: protocol.FileRead, Path: "/work/../etc/passwd"}, nil)
	g.Expect(res.Error.Kind).To(Equal(protocol.ErrInvalid))
	_, res = op(protocol.FileRequest{Op: "chmod", Path: "/work"}, nil)
	g.Expect(res.Error.Kind).To(Equal(protocol.ErrInvalid))
	_, res = op(protocol.FileRequest{Op: protocol.FileRead, Path: "/work"}, nil)
	g.Expect(res.Error.Kind).To(Equal(protocol.ErrIsDirectory))
	_, res = op(protocol.FileRequest{Op: protocol.FileList, Path: "/work/big"}, nil)
	g.Expect(res.Error.Kind).To(Equal(protocol.ErrNotDirectory))
	_, res = op(protocol.FileRequest{Op: protocol.FileUntar, Path: "/work/evil"}, tarOf(t, tarEntry{name: "../escaped", body: "x"}))
	g.Expect(res.Error.Kind).To(Equal(protocol.ErrInvalid))
	g.Expect(filepath.Join(root, "work/escaped")).NotTo(BeAnExistingFile())
	// A host that gives up (a TypeError on the stream) kills a write cut
	// short: it does not read as a success.
	stream++
	send(t, host, stream, protocol.TypeFile, protocol.FileRequest{Op: protocol.FileWrite, Path: "/work/partial"})
	sendRaw(t, host, protocol.Frame{Stream: stream, Type: protocol.TypeData, Payload: []byte("half")})
	send(t, host, stream, protocol.TypeError, protocol.Error{Message: "canceled by the host"})
	for {
		f := nextFrame(t, host, 10*time.Second)
		if f.Stream == stream {
			res := decodeAs[protocol.FileResult](g, f, protocol.TypeFileResult)
			g.Expect(res.Error).NotTo(BeNil())
			g.Expect(res.Error.Message).To(ContainSubstring("SIGKILL"))
			break
		}
	}
	// Symlinks resolve inside the root: /etc/link -> / reads the root's
	// passwd, not this machine's.
	g.Expect(os.Symlink("/", filepath.Join(root, "work/rootlink"))).To(Succeed())
	out, _ = ok(protocol.FileRequest{Op: protocol.FileRead, Path: "/work/rootlink/etc/passwd"}, nil)
	g.Expect(string(out)).To(Equal(guesttest.Passwd))
}

func TestSessionDrainRefusesNewSessionsThatChangeAnything(t *testing.T) {
	g := NewWithT(t)
	port, s, _ := serveSim(t, nil)
	var execs, files []string
	s.RunExec = func(_ protocol.Start, ex protocol.Exec) (*ExecProcess, error) {
		execs = append(execs, ex.Argv[0])
		return nil, &kindError{Kind: protocol.ErrNotFound, Msg: "fake"}
	}
	s.RunFile = func(_ protocol.Start, req protocol.FileRequest) (*FileProcess, error) {
		files = append(files, string(req.Op))
		return &FileProcess{Result: func() protocol.FileResult { return protocol.FileResult{Exists: true} }, Kill: func() {}}, nil
	}
	host := port.Connect(t)
	handshake(t, g, host)
	send(t, host, 0, protocol.TypeDrain, protocol.Drain{})
	send(t, host, 2, protocol.TypeExec, protocol.Exec{Argv: []string{"true"}})
	r := collectExec(t, g, host, 2)
	g.Expect(r.errors).To(HaveLen(1))
	g.Expect(r.errors[0].Kind).To(Equal(protocol.ErrDraining))
	stream := uint32(3)
	for _, op := range []protocol.FileOp{protocol.FileWrite, protocol.FileMkdir, protocol.FileRemove, protocol.FileCopy, protocol.FileRename, protocol.FileUntar} {
		_, res := fileOp(t, g, host, stream, protocol.FileRequest{Op: op, Path: "/x", Dest: "/y"}, nil)
		g.Expect(res.Error).NotTo(BeNil(), string(op))
		g.Expect(res.Error.Kind).To(Equal(protocol.ErrDraining), string(op))
		stream++
	}
	_, res := fileOp(t, g, host, stream, protocol.FileRequest{Op: protocol.FileExists, Path: "/x"}, nil)
	g.Expect(res).To(Equal(protocol.FileResult{Exists: true}), "reads go on")
	g.Expect(execs).To(BeEmpty())
	g.Expect(files).To(Equal([]string{"exists"}))
}

func TestSessionRefusesAReservedOrBusyStream(t *testing.T) {
	g := NewWithT(t)
	port, s, _ := serveSim(t, nil)
	release := make(chan struct{})
	s.RunFile = func(_ protocol.Start, req protocol.FileRequest) (*FileProcess, error) {
		return &FileProcess{Result: func() protocol.FileResult { <-release; return protocol.FileResult{} }, Kill: func() {}}, nil
	}
	host := port.Connect(t)
	handshake(t, g, host)
	_, res := fileOp(t, g, host, 1, protocol.FileRequest{Op: protocol.FileExists, Path: "/x"}, nil)
	g.Expect(res.Error.Kind).To(Equal(protocol.ErrInvalid))
	send(t, host, 5, protocol.TypeFile, protocol.FileRequest{Op: protocol.FileExists, Path: "/x"})
	_, res = fileOp(t, g, host, 5, protocol.FileRequest{Op: protocol.FileExists, Path: "/x"}, nil)
	g.Expect(res.Error.Message).To(ContainSubstring("in use"))
	close(release)
}

func TestSessionMainOutputIsBufferedAndDropsTheOldest(t *testing.T) {
	g := NewWithT(t)
	port, s, _ := serveSim(t, nil)
	// No host yet: nothing blocks the main process.
	w := s.MainOutput(protocol.TypeStdout)
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	var all []byte
	for i := range 24 {
		b := append([]byte{byte('A' + i)}, chunk[1:]...)
		all = append(all, b...)
		n, err := w.Write(b)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(n).To(Equal(len(b)))
	}
	_, _ = s.MainOutput(protocol.TypeStderr).Write([]byte("last words\n"))
	all = append(all, "last words\n"...)
	host := port.Connect(t)
	handshake(t, g, host)
	var got []byte
	var note string
	for len(got) < protocol.MainOutputBuffer {
		f := nextFrame(t, host, 5*time.Second)
		g.Expect(f.Stream).To(Equal(protocol.MainOutputStream))
		if note == "" {
			g.Expect(f.Type).To(Equal(protocol.TypeStderr), "the note comes first")
			note = string(f.Payload)
			continue
		}
		got = append(got, f.Payload...)
	}
	dropped := len(all) - protocol.MainOutputBuffer
	g.Expect(note).To(Equal("[sandbox-init: " + itoa(dropped) + " bytes of output dropped]\n"))
	g.Expect(got).To(Equal(all[dropped:]))
	// Later output flows at once.
	_, _ = w.Write([]byte("more\n"))
	f := nextFrame(t, host, 5*time.Second)
	g.Expect(f).To(Equal(protocol.Frame{Stream: protocol.MainOutputStream, Type: protocol.TypeStdout, Payload: []byte("more\n")}))
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestReadProcMetrics(t *testing.T) {
	g := NewWithT(t)
	var m protocol.Metrics
	readProcMetrics("testdata/proc", &m)
	g.Expect(m).To(Equal(protocol.Metrics{
		// user+nice+system+irq+softirq+steal = 100+5+50+3+2+1 jiffies.
		CPUNanos:             161 * 10_000_000,
		MemoryTotalBytes:     193740 * 1024,
		MemoryAvailableBytes: 160000 * 1024,
		// vda and vdb, not vda1 nor loop0.
		DiskReadBytes:  (2000 + 80) * 512,
		DiskWriteBytes: 400 * 512,
		NetRxBytes:     1210,
		NetTxBytes:     346,
	}))
	live := readMetrics("/proc", t.TempDir())
	g.Expect(live.CPUNanos).To(BeNumerically(">", 0))
	g.Expect(live.MemoryTotalBytes).To(BeNumerically(">", 0))
	g.Expect(live.UptimeNanos).To(BeNumerically(">", 0))
	g.Expect(live.UpperFreeBytes).To(BeNumerically(">", 0))
}

// tarEntry is one entry of a test archive.
type tarEntry struct {
	name, body, link string
	dir              bool
}

func tarOf(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg}
		switch {
		case e.dir:
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		case e.link != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.link, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func tarNames(t *testing.T, archive []byte) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
}

func TestUntarKeepsEveryEntryInsideItsDirectory(t *testing.T) {
	outside := t.TempDir()
	for _, tc := range []struct {
		name    string
		entries []tarEntry
		wantErr string
	}{
		{name: "a .. entry", entries: []tarEntry{{name: "a/../../x", body: "x"}}, wantErr: `climbs with ".."`},
		{name: "an absolute entry", entries: []tarEntry{{name: "/x", body: "x"}}, wantErr: "is absolute"},
		{name: "an entry through a symlink of the archive", entries: []tarEntry{{name: "l", link: outside}, {name: "l/x", body: "x"}},
			wantErr: "goes through the symlink"},
		{name: "a hard link to outside", entries: []tarEntry{{name: "h", link: "../../etc/passwd"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			dir := filepath.Join(t.TempDir(), "d")
			entries := tc.entries
			archive := tarOf(t, entries...)
			if tc.wantErr == "" {
				// Rewrite the last entry as a hard link.
				var buf bytes.Buffer
				tw := tar.NewWriter(&buf)
				g.Expect(tw.WriteHeader(&tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"})).To(Succeed())
				g.Expect(tw.Close()).To(Succeed())
				archive = buf.Bytes()
				tc.wantErr = `climbs with ".."`
			}
			_, err := untar(dir, bytes.NewReader(archive))
			g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
			g.Expect(errorKind(err)).To(Equal(protocol.ErrInvalid))
			g.Expect(filepath.Join(outside, "x")).NotTo(BeAnExistingFile())
		})
	}
}

func TestErrorKind(t *testing.T) {
	g := NewWithT(t)
	for errno, kind := range map[unix.Errno]protocol.ErrorKind{
		unix.ENOENT: protocol.ErrNotFound, unix.EACCES: protocol.ErrPermissionDenied, unix.EPERM: protocol.ErrPermissionDenied,
		unix.EEXIST: protocol.ErrExists, unix.ENOTDIR: protocol.ErrNotDirectory, unix.EISDIR: protocol.ErrIsDirectory,
		unix.ENOTEMPTY: protocol.ErrNotEmpty, unix.EROFS: protocol.ErrReadOnly, unix.EIO: protocol.ErrInternal,
	} {
		g.Expect(errorKind(&os.PathError{Op: "stat", Path: "/x", Err: errno})).To(Equal(kind), errno.Error())
	}
	g.Expect(errorKind(errors.New("plain"))).To(Equal(protocol.ErrInternal))
}
