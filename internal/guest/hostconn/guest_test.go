package hostconn_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microvm-dev/sandbox-operator/internal/guest/hostconn"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// scriptedGuest is a scripted peer for this package's own tests: the
// guest's end of a connection, speaking just enough of the protocol to
// exercise the host library. It is not sandbox-init (see
// initd_integration_test.go for that); its behaviour is chosen by the
// request:
//
// Exec, by Argv[0]:
//   - "cat": echoes stdin to stdout; exits 0 at stdin's end.
//   - "emit N CHUNK [stderr]": writes N bytes of pattern(stream) to stdout
//     in CHUNK-byte frames (and "done\n" to stderr with "stderr"), then
//     exits 3.
//   - "sleep": runs until signalled; exits -1 with the signal (but for
//     "SIGBOGUS": an ErrInvalid error, and it runs on).
//   - "tty": reports each resize as "ROWSxCOLS\n" on stdout; exits on a
//     signal.
//   - "timeout": sends an ErrTimeout error, then exits -1 SIGKILL.
//   - "silent": never answers (the test answers with Send).
//   - anything else: ErrNotFound.
//
// File operations work on an in-memory filesystem; reading "/hang" never
// answers, and writing under "/ro/" fails with ErrReadOnly at once,
// without reading the data.
type scriptedGuest struct {
	t    *testing.T
	conn net.Conn
	wmu  sync.Mutex
	wg   sync.WaitGroup

	mu      sync.Mutex
	streams []uint32                       // each request's stream, in order
	inputs  map[uint32]chan protocol.Frame // frames for a session's goroutine
	files   map[string][]byte
	dirs    map[string]bool
	// signals receives every TypeSignal the host sent.
	signals chan signalEvent
	// cancels receives the streams on which the host sent a TypeError.
	cancels chan uint32
	// emitted counts the stdout bytes "emit" sessions wrote to the host.
	emitted atomic.Int64
	// echoed counts the bytes "cat" sessions echoed.
	echoed atomic.Int64
	// stalled is closed to stop reading (StopReading); quit ends the
	// stall at cleanup.
	stallOnce sync.Once
	stalled   chan struct{}
	quit      chan struct{}
}

type signalEvent struct {
	stream uint32
	signal string
}

// startGuest serves conn until it closes; the test's cleanup waits for
// every goroutine of it.
func startGuest(t *testing.T, conn net.Conn) *scriptedGuest {
	g := &scriptedGuest{
		t:       t,
		conn:    conn,
		inputs:  make(map[uint32]chan protocol.Frame),
		files:   make(map[string][]byte),
		dirs:    map[string]bool{"/": true},
		signals: make(chan signalEvent, 64),
		cancels: make(chan uint32, 64),
		stalled: make(chan struct{}),
		quit:    make(chan struct{}),
	}
	g.wg.Go(g.readLoop)
	t.Cleanup(func() {
		close(g.quit)
		_ = conn.Close()
		g.wg.Wait()
	})
	return g
}

// pattern is the deterministic content "emit" writes on stream.
func pattern(stream uint32, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + int(stream)*13 + i/251)
	}
	return b
}

// Send writes one frame to the host.
func (g *scriptedGuest) Send(f protocol.Frame) error {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	return protocol.WriteFrame(g.conn, f)
}

// SendMsg writes a JSON message to the host.
func (g *scriptedGuest) SendMsg(stream uint32, t protocol.Type, msg any) error {
	f, err := protocol.Encode(stream, t, msg)
	if err != nil {
		return err
	}
	return g.Send(f)
}

// Streams returns the streams of the requests received so far.
func (g *scriptedGuest) Streams() []uint32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]uint32(nil), g.streams...)
}

// HangUp closes the guest's end.
func (g *scriptedGuest) HangUp() { _ = g.conn.Close() }

// StopReading makes the guest stop reading after the frame it may be
// reading now, as a stuck guest would: the host's writes then block.
func (g *scriptedGuest) StopReading() { g.stallOnce.Do(func() { close(g.stalled) }) }

// Sync returns once the host's reader has taken every frame the guest
// sent before (net.Pipe's writes return when the other end read them, and
// the host reads one frame at a time).
func (g *scriptedGuest) Sync() {
	if err := g.Send(protocol.Frame{Stream: protocol.MainOutputStream, Type: 99}); err != nil {
		g.t.Errorf("scriptedGuest: sync: %v", err)
	}
}

func (g *scriptedGuest) readLoop() {
	defer func() {
		g.mu.Lock()
		for id, ch := range g.inputs {
			close(ch)
			delete(g.inputs, id)
		}
		g.mu.Unlock()
	}()
	for {
		select {
		case <-g.stalled:
			<-g.quit
			return
		default:
		}
		f, err := protocol.ReadFrame(g.conn)
		if err != nil {
			return
		}
		switch f.Type {
		case protocol.TypeExec:
			var req protocol.Exec
			if protocol.Decode(f, &req) != nil {
				return
			}
			g.startSession(f.Stream, func(in <-chan protocol.Frame) { g.exec(f.Stream, req, in) })
		case protocol.TypeFile:
			var req protocol.FileRequest
			if protocol.Decode(f, &req) != nil {
				return
			}
			g.startSession(f.Stream, func(in <-chan protocol.Frame) { g.file(f.Stream, req, in) })
		default:
			if f.Type == protocol.TypeSignal {
				var s protocol.Signal
				_ = protocol.Decode(f, &s)
				g.signals <- signalEvent{f.Stream, s.Signal}
			}
			if f.Type == protocol.TypeError && f.Stream >= protocol.FirstHostStream {
				g.cancels <- f.Stream
			}
			g.mu.Lock()
			ch := g.inputs[f.Stream]
			g.mu.Unlock()
			if ch != nil {
				ch <- f
			}
		}
	}
}

// startSession runs a request's goroutine, fed with its stream's frames.
func (g *scriptedGuest) startSession(stream uint32, run func(in <-chan protocol.Frame)) {
	in := make(chan protocol.Frame, 1024)
	g.mu.Lock()
	g.streams = append(g.streams, stream)
	g.inputs[stream] = in
	g.mu.Unlock()
	g.wg.Go(func() {
		run(in)
		g.mu.Lock()
		if g.inputs[stream] == in {
			delete(g.inputs, stream)
		}
		g.mu.Unlock()
	})
}

// waitSignal waits for the input that ends a "sleep"-like session.
func waitSignal(in <-chan protocol.Frame, onResize func(protocol.Resize)) (string, bool) {
	for f := range in {
		switch f.Type {
		case protocol.TypeSignal:
			var s protocol.Signal
			_ = protocol.Decode(f, &s)
			return s.Signal, true
		case protocol.TypeResize:
			var r protocol.Resize
			_ = protocol.Decode(f, &r)
			if onResize != nil {
				onResize(r)
			}
		}
	}
	return "", false
}

func (g *scriptedGuest) exec(stream uint32, req protocol.Exec, in <-chan protocol.Frame) {
	started := func() bool {
		return g.SendMsg(stream, protocol.TypeExecStarted, protocol.ExecStarted{PID: 1000 + int(stream)}) == nil
	}
	exited := func(code int, sig string) {
		_ = g.SendMsg(stream, protocol.TypeExited, protocol.Exit{Code: code, Signal: sig})
	}
	out := func(t protocol.Type, p []byte) bool {
		return g.Send(protocol.Frame{Stream: stream, Type: t, Payload: p}) == nil
	}
	switch argv0 := req.Argv[0]; argv0 {
	case "cat":
		if !started() {
			return
		}
		for f := range in {
			switch f.Type {
			case protocol.TypeStdin:
				if len(f.Payload) > 0 {
					if !out(protocol.TypeStdout, f.Payload) {
						return
					}
					g.echoed.Add(int64(len(f.Payload)))
				}
				if f.Flags&protocol.FlagEnd != 0 {
					exited(0, "")
					return
				}
			case protocol.TypeSignal:
				var s protocol.Signal
				_ = protocol.Decode(f, &s)
				exited(-1, s.Signal)
				return
			}
		}
	case "emit":
		n, _ := strconv.Atoi(req.Argv[1])
		chunk, _ := strconv.Atoi(req.Argv[2])
		if !started() {
			return
		}
		data := pattern(stream, n)
		for len(data) > 0 {
			k := min(chunk, len(data))
			if !out(protocol.TypeStdout, data[:k]) {
				return
			}
			g.emitted.Add(int64(k))
			data = data[k:]
		}
		if len(req.Argv) > 3 && req.Argv[3] == "stderr" && !out(protocol.TypeStderr, []byte("done\n")) {
			return
		}
		exited(3, "")
	case "sleep", "tty":
		if !started() {
			return
		}
		for {
			sig, ok := waitSignal(in, func(r protocol.Resize) {
				out(protocol.TypeStdout, fmt.Appendf(nil, "%dx%d\n", r.Rows, r.Cols))
			})
			if !ok {
				return
			}
			if sig == "SIGBOGUS" { // as sandbox-init does: the session goes on
				_ = g.SendMsg(stream, protocol.TypeError, protocol.Error{Kind: protocol.ErrInvalid, Message: `unknown signal "SIGBOGUS"`})
				continue
			}
			exited(-1, sig)
			return
		}
	case "timeout":
		if !started() {
			return
		}
		_ = g.SendMsg(stream, protocol.TypeError, protocol.Error{Kind: protocol.ErrTimeout, Message: "timed out after 10ms"})
		exited(-1, "SIGKILL")
	case "silent":
	default:
		_ = g.SendMsg(stream, protocol.TypeError, protocol.Error{Kind: protocol.ErrNotFound, Message: argv0 + ": not found"})
	}
}

// result answers a file request.
func (g *scriptedGuest) result(stream uint32, res protocol.FileResult) {
	_ = g.SendMsg(stream, protocol.TypeFileResult, res)
}

func fileErr(kind protocol.ErrorKind, format string, args ...any) protocol.FileResult {
	return protocol.FileResult{Error: &protocol.Error{Kind: kind, Message: fmt.Sprintf(format, args...)}}
}

// receive collects a write's data until FlagEnd; false when the host
// canceled it or went away.
func receive(in <-chan protocol.Frame) ([]byte, bool) {
	var b []byte
	for f := range in {
		switch f.Type {
		case protocol.TypeData:
			b = append(b, f.Payload...)
			if f.Flags&protocol.FlagEnd != 0 {
				return b, true
			}
		case protocol.TypeError:
			return nil, false
		}
	}
	return nil, false
}

// sendData streams b as TypeData frames, FlagEnd on the last; it stops
// when the host cancels (a TypeError on in).
func (g *scriptedGuest) sendData(stream uint32, b []byte, in <-chan protocol.Frame) bool {
	const chunk = 256 << 10
	for {
		select {
		case f, ok := <-in:
			if !ok || f.Type == protocol.TypeError {
				return false
			}
		default:
		}
		k := min(chunk, len(b))
		var flags protocol.Flags
		if k == len(b) {
			flags = protocol.FlagEnd
		}
		if g.Send(protocol.Frame{Stream: stream, Type: protocol.TypeData, Flags: flags, Payload: b[:k]}) != nil {
			return false
		}
		b = b[k:]
		if flags != 0 {
			return true
		}
	}
}

func (g *scriptedGuest) file(stream uint32, req protocol.FileRequest, in <-chan protocol.Frame) {
	g.mu.Lock()
	content, isFile := g.files[req.Path]
	isDir := g.dirs[req.Path]
	g.mu.Unlock()
	notFound := fileErr(protocol.ErrNotFound, "%s: no such file or directory", req.Path)
	switch req.Op {
	case protocol.FileRead:
		if req.Path == "/hang" {
			for range in {
			}
			return
		}
		if !isFile {
			g.result(stream, notFound)
			return
		}
		if g.sendData(stream, content, in) {
			g.result(stream, protocol.FileResult{Bytes: int64(len(content))})
		}
	case protocol.FileWrite:
		if strings.HasPrefix(req.Path, "/ro/") {
			g.result(stream, fileErr(protocol.ErrReadOnly, "%s: read-only file system", req.Path))
			return
		}
		b, ok := receive(in)
		if !ok {
			return
		}
		g.mu.Lock()
		g.files[req.Path] = b
		g.mu.Unlock()
		g.result(stream, protocol.FileResult{Bytes: int64(len(b))})
	case protocol.FileStat:
		switch {
		case isFile:
			g.result(stream, protocol.FileResult{Stat: &protocol.FileInfo{Name: req.Path, Kind: protocol.KindFile, Size: int64(len(content)), Mode: 0o644}})
		case isDir:
			g.result(stream, protocol.FileResult{Stat: &protocol.FileInfo{Name: req.Path, Kind: protocol.KindDir, Mode: 0o755}})
		default:
			g.result(stream, notFound)
		}
	case protocol.FileExists:
		g.result(stream, protocol.FileResult{Exists: isFile || isDir})
	case protocol.FileList:
		if !isDir {
			g.result(stream, notFound)
			return
		}
		var entries []protocol.FileInfo
		g.mu.Lock()
		for p, b := range g.files {
			if path.Dir(p) == req.Path {
				entries = append(entries, protocol.FileInfo{Name: path.Base(p), Kind: protocol.KindFile, Size: int64(len(b))})
			}
		}
		for p := range g.dirs {
			if p != "/" && path.Dir(p) == req.Path {
				entries = append(entries, protocol.FileInfo{Name: path.Base(p), Kind: protocol.KindDir})
			}
		}
		g.mu.Unlock()
		sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
		g.result(stream, protocol.FileResult{Entries: entries})
	case protocol.FileMkdir:
		if (isDir || isFile) && !req.Recursive {
			g.result(stream, fileErr(protocol.ErrExists, "%s: file exists", req.Path))
			return
		}
		g.mu.Lock()
		g.dirs[req.Path] = true
		g.mu.Unlock()
		g.result(stream, protocol.FileResult{})
	case protocol.FileRemove:
		if !isFile && !isDir {
			g.result(stream, notFound)
			return
		}
		g.mu.Lock()
		delete(g.files, req.Path)
		delete(g.dirs, req.Path)
		g.mu.Unlock()
		g.result(stream, protocol.FileResult{})
	case protocol.FileCopy, protocol.FileRename:
		if !isFile {
			g.result(stream, notFound)
			return
		}
		g.mu.Lock()
		g.files[req.Dest] = content
		if req.Op == protocol.FileRename {
			delete(g.files, req.Path)
		}
		g.mu.Unlock()
		g.result(stream, protocol.FileResult{})
	case protocol.FileTar:
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		g.mu.Lock()
		var names []string
		for p := range g.files {
			if strings.HasPrefix(p, req.Path+"/") {
				names = append(names, p)
			}
		}
		sort.Strings(names)
		for _, p := range names {
			_ = tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(strings.TrimPrefix(p, path.Dir(req.Path)), "/"), Mode: 0o644, Size: int64(len(g.files[p]))})
			_, _ = tw.Write(g.files[p])
		}
		g.mu.Unlock()
		_ = tw.Close()
		if g.sendData(stream, buf.Bytes(), in) {
			g.result(stream, protocol.FileResult{Bytes: int64(buf.Len())})
		}
	case protocol.FileUntar:
		b, ok := receive(in)
		if !ok {
			return
		}
		tr := tar.NewReader(bytes.NewReader(b))
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				g.result(stream, fileErr(protocol.ErrInvalid, "untar: %v", err))
				return
			}
			data, _ := io.ReadAll(tr)
			g.mu.Lock()
			g.files[path.Join(req.Path, h.Name)] = data
			g.dirs[req.Path] = true
			g.mu.Unlock()
		}
		g.result(stream, protocol.FileResult{Bytes: int64(len(b))})
	default:
		g.result(stream, fileErr(protocol.ErrInvalid, "unknown operation %q", req.Op))
	}
}

// newConn connects a Conn to a scripted guest over net.Pipe (synchronous:
// a guest's write blocks until the host reads it, which makes
// back-pressure visible). Cleanup closes both and waits for every
// goroutine.
func newConn(t *testing.T, opts hostconn.Options) (*hostconn.Conn, *scriptedGuest) {
	t.Helper()
	host, guest := net.Pipe()
	g := startGuest(t, guest)
	c := hostconn.New(host, opts)
	t.Cleanup(func() {
		_ = c.Close()
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Error("the reader goroutine did not return within 5 s of Close")
		}
	})
	return c, g
}

// mustJSON is the JSON of v.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
