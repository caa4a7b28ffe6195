//go:build linux

package hostconn_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"golang.org/x/sys/unix"

	"github.com/microvm-dev/sandbox-operator/internal/guest/hostconn"
	"github.com/microvm-dev/sandbox-operator/internal/guest/initd"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// TestWithSandboxInitSession drives sandbox-init's own Session (its
// framing, stream bookkeeping, ordering, errors, drain, heartbeats and main
// output) through this package over net.Pipe, after the handshake the node
// agent does. The processes and file operations behind it are in-process
// stand-ins plugged into the Session's hooks (RunExec, RunFile): initd
// exports no constructor for the real helpers, which also need root and a
// busybox root.
func TestWithSandboxInitSession(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	env := newInitdEnv(t)
	c := env.conn

	t.Run("concurrent sessions: a 10 MiB cat, output on both streams, a missing program, file transfers", func(t *testing.T) {
		// Failures reported from the sessions' goroutines, not FailNow.
		g := NewGomega(func(message string, _ ...int) { t.Error(message) })
		var wg sync.WaitGroup
		wg.Go(func() {
			data := make([]byte, 10<<20)
			_, _ = rand.Read(data)
			p, err := c.Exec(ctx, protocol.Exec{Argv: []string{"cat"}, Stdin: true})
			g.Expect(err).NotTo(HaveOccurred())
			sum := make(chan [32]byte, 1)
			go func() {
				h := sha256.New()
				_, _ = io.Copy(h, p.Stdout)
				sum <- [32]byte(h.Sum(nil))
			}()
			_, err = p.Stdin.Write(data)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(p.Stdin.Close()).To(Succeed())
			exit, err := p.Wait()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(exit).To(Equal(protocol.Exit{}))
			g.Expect(<-sum).To(Equal(sha256.Sum256(data)))
		})
		wg.Go(func() {
			p, err := c.Exec(ctx, protocol.Exec{Argv: []string{"echo", "hello", "world"}})
			g.Expect(err).NotTo(HaveOccurred())
			stdout, stderr := readAll(p.Stdout), readAll(p.Stderr)
			exit, err := p.Wait()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(exit).To(Equal(protocol.Exit{Code: 7}))
			g.Expect(string(<-stdout)).To(Equal("hello world\n"))
			g.Expect(string(<-stderr)).To(Equal("to stderr\n"))
		})
		wg.Go(func() {
			_, err := c.Exec(ctx, protocol.Exec{Argv: []string{"nope"}})
			g.Expect(hostconn.IsKind(err, protocol.ErrNotFound)).To(BeTrue(), "error %v", err)
		})
		wg.Go(func() {
			data := make([]byte, 3<<20+5)
			_, _ = rand.Read(data)
			g.Expect(c.WriteFile(ctx, "/data", data, 0)).To(Succeed())
			got, err := c.ReadFile(ctx, "/data")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(sha256.Sum256(got)).To(Equal(sha256.Sum256(data)))
			_, err = c.ReadFile(ctx, "/missing")
			g.Expect(hostconn.IsKind(err, protocol.ErrNotFound)).To(BeTrue(), "error %v", err)
			ok, err := c.Exists(ctx, "/data")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(ok).To(BeTrue())
		})
		wg.Wait()
	})

	t.Run("signals: an unknown one is an error of the session, a known one ends it", func(t *testing.T) {
		g := NewWithT(t)
		p, err := c.Exec(ctx, protocol.Exec{Argv: []string{"sleep"}})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(p.Signal("SIGBOGUS")).To(Succeed())
		g.Eventually(p.Errors).Should(HaveLen(1))
		g.Expect(p.Errors()[0].Kind).To(Equal(protocol.ErrInvalid))
		g.Expect(p.Signal("SIGTERM")).To(Succeed())
		exit, err := p.Wait()
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(exit).To(Equal(protocol.Exit{Code: -1, Signal: "SIGTERM"}))
	})

	t.Run("heartbeats count the open sessions; the main output arrives", func(t *testing.T) {
		g := NewWithT(t)
		p, err := c.Exec(ctx, protocol.Exec{Argv: []string{"sleep"}})
		g.Expect(err).NotTo(HaveOccurred())
		g.Eventually(env.lastHeartbeat).Should(HaveField("ActiveSessions", 1))
		g.Expect(p.Close()).To(Succeed())
		_, err = p.Wait()
		g.Expect(err).NotTo(HaveOccurred())
		g.Eventually(env.lastHeartbeat).Should(HaveField("ActiveSessions", 0))

		_, _ = env.session.MainOutput(protocol.TypeStderr).Write([]byte("main says hi\n"))
		g.Eventually(env.mainOutput).Should(Equal("err:main says hi\n"))
	})

	// It outlives the drain, and is cut by the close below.
	running, err := c.Exec(ctx, protocol.Exec{Argv: []string{"sleep"}})
	g.Expect(err).NotTo(HaveOccurred())

	t.Run("after a drain new sessions are refused with ErrDraining", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(c.SendControl(protocol.TypeDrain, protocol.Drain{})).To(Succeed())
		g.Eventually(func() error {
			_, err := c.Exec(ctx, protocol.Exec{Argv: []string{"echo"}})
			return err
		}).Should(Satisfy(func(err error) bool { return hostconn.IsKind(err, protocol.ErrDraining) }))
		g.Expect(hostconn.IsKind(c.WriteFile(ctx, "/x", nil, 0), protocol.ErrDraining)).To(BeTrue())
	})

	// The host's close fails the running session at once, and sandbox-init
	// kills its process.
	g.Expect(c.Err()).NotTo(HaveOccurred())
	g.Expect(env.kills.Load()).To(BeZero())
	g.Expect(c.Close()).To(Succeed())
	_, err = running.Wait()
	g.Expect(err).To(MatchError(hostconn.ErrClosed))
	g.Eventually(env.kills.Load).Should(BeEquivalentTo(1))
}

// initdEnv is a sandbox-init Session served over net.Pipe, connected to a
// Conn.
type initdEnv struct {
	session *initd.Session
	conn    *hostconn.Conn

	// kills counts the processes sandbox-init killed (ExecProcess.Kill).
	kills atomic.Int32

	mu        sync.Mutex
	heartbeat protocol.Heartbeat
	output    strings.Builder
}

func (e *initdEnv) lastHeartbeat() protocol.Heartbeat {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.heartbeat
}

func (e *initdEnv) mainOutput() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.output.String()
}

func newInitdEnv(t *testing.T) *initdEnv {
	t.Helper()
	g := NewWithT(t)
	host, guest := net.Pipe()
	var logMu sync.Mutex
	logging := true
	t.Cleanup(func() { logMu.Lock(); logging = false; logMu.Unlock() })
	fs := &memFS{files: map[string][]byte{}}
	e := &initdEnv{}
	s := &initd.Session{
		Port:      guest,
		BootNanos: 1,
		Logf: func(format string, args ...any) {
			logMu.Lock()
			defer logMu.Unlock()
			if logging {
				t.Logf("sandbox-init: "+format, args...)
			}
		},
		HeartbeatInterval: 20 * time.Millisecond,
		RunExec: func(st protocol.Start, ex protocol.Exec) (*initd.ExecProcess, error) {
			return fakeExec(st, ex, &e.kills)
		},
		RunFile: fs.run,
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()

	// The node agent's handshake (vm.go).
	f, err := protocol.ReadFrame(host)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(f.Type).To(Equal(protocol.TypeHello))
	ack, err := protocol.Encode(0, protocol.TypeHelloAck, protocol.HelloAck{Version: protocol.Version})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(protocol.WriteFrame(host, ack)).To(Succeed())

	e.session = s
	e.conn = hostconn.New(host, hostconn.Options{
		OnControl: func(f protocol.Frame) {
			var hb protocol.Heartbeat
			if f.Type == protocol.TypeHeartbeat && json.Unmarshal(f.Payload, &hb) == nil {
				e.mu.Lock()
				e.heartbeat = hb
				e.mu.Unlock()
			}
		},
		OnMainOutput: func(stderr bool, data []byte) {
			e.mu.Lock()
			defer e.mu.Unlock()
			if stderr {
				e.output.WriteString("err:")
			}
			e.output.Write(data)
		},
	})
	t.Cleanup(func() {
		_ = e.conn.Close()
		<-e.conn.Done()
		select {
		case err := <-served: // the port failed: nothing to say Hello to
			t.Logf("sandbox-init's Serve returned: %v", err)
		case <-time.After(5 * time.Second):
			t.Error("sandbox-init's Serve did not return within 5 s of the host's close")
		}
	})
	return e
}

// fakeExec stands in for sandbox-init's exec helper: "cat" copies stdin
// to stdout; "echo" prints its arguments (and "to stderr" on stderr) and
// exits 7; "sleep" runs until signalled; anything else is not found.
func fakeExec(_ protocol.Start, ex protocol.Exec, kills *atomic.Int32) (*initd.ExecProcess, error) {
	var run func(stdin io.Reader, stdout, stderr io.Writer, signals <-chan unix.Signal) protocol.Exit
	switch ex.Argv[0] {
	case "cat":
		run = func(stdin io.Reader, stdout, _ io.Writer, _ <-chan unix.Signal) protocol.Exit {
			if _, err := io.Copy(stdout, stdin); err != nil {
				return protocol.Exit{Code: -1, Signal: "killed"}
			}
			return protocol.Exit{}
		}
	case "echo":
		run = func(_ io.Reader, stdout, stderr io.Writer, _ <-chan unix.Signal) protocol.Exit {
			_, _ = fmt.Fprintln(stdout, strings.Join(ex.Argv[1:], " "))
			_, _ = fmt.Fprintln(stderr, "to stderr")
			return protocol.Exit{Code: 7}
		}
	case "sleep":
		run = func(_ io.Reader, _, _ io.Writer, signals <-chan unix.Signal) protocol.Exit {
			return protocol.Exit{Code: -1, Signal: unix.SignalName(<-signals)}
		}
	default:
		return nil, fmt.Errorf("%q: %w", ex.Argv[0], syscall.ENOENT)
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	signals := make(chan unix.Signal, 8)
	done := make(chan protocol.Exit, 1)
	go func() {
		exit := run(inR, outW, errW, signals)
		_ = outW.Close()
		_ = errW.Close()
		_ = inR.Close()
		done <- exit
	}()
	proc := &initd.ExecProcess{
		PID:    4242,
		Stdout: outR,
		Stderr: errR,
		Signal: func(sig unix.Signal) error {
			if sig == unix.SIGKILL {
				_ = inR.CloseWithError(errors.New("killed"))
			}
			select {
			case signals <- sig:
			default:
			}
			return nil
		},
		Wait: func() protocol.Exit { return <-done },
	}
	proc.Kill = func() {
		kills.Add(1)
		_ = proc.Signal(unix.SIGKILL)
	}
	if ex.Stdin {
		proc.Stdin = inW
	} else {
		_ = inW.Close()
	}
	return proc, nil
}

// memFS stands in for sandbox-init's file helper: read, write and exists
// on an in-memory map.
type memFS struct {
	mu    sync.Mutex
	files map[string][]byte
}

func (m *memFS) run(_ protocol.Start, req protocol.FileRequest) (*initd.FileProcess, error) {
	m.mu.Lock()
	content, ok := m.files[req.Path]
	m.mu.Unlock()
	switch req.Op {
	case protocol.FileRead:
		if !ok {
			return nil, fmt.Errorf("%s: %w", req.Path, syscall.ENOENT)
		}
		return &initd.FileProcess{
			Output: bytes.NewReader(content),
			Result: func() protocol.FileResult { return protocol.FileResult{Bytes: int64(len(content))} },
			Kill:   func() {},
		}, nil
	case protocol.FileWrite:
		r, w := io.Pipe()
		res := make(chan protocol.FileResult, 1)
		go func() {
			b, err := io.ReadAll(r)
			if err != nil {
				res <- protocol.FileResult{Error: &protocol.Error{Kind: protocol.ErrInternal, Message: err.Error()}}
				return
			}
			m.mu.Lock()
			m.files[req.Path] = b
			m.mu.Unlock()
			res <- protocol.FileResult{Bytes: int64(len(b))}
		}()
		return &initd.FileProcess{
			Input:  w,
			Result: func() protocol.FileResult { return <-res },
			Kill:   func() { _ = r.CloseWithError(errors.New("abandoned")) },
		}, nil
	case protocol.FileExists:
		return &initd.FileProcess{
			Result: func() protocol.FileResult { return protocol.FileResult{Exists: ok} },
			Kill:   func() {},
		}, nil
	}
	return nil, fmt.Errorf("%s: %w", req.Op, syscall.EINVAL)
}
