package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// helloTimeout bounds the wait for the guest's Hello after QEMU started.
const helloTimeout = 2 * time.Minute

// consoleTailLines is how many console lines an unexpected exit reports.
const consoleTailLines = 10

// vmHandle is one VM this agent started, for one run of one Sandbox. It
// lives in memory only: after an agent restart the agent does not know its
// VMs (re-adoption is not implemented yet).
type vmHandle struct {
	key    types.NamespacedName
	run    int32
	vm     vmm.VM
	runDir string
	accel  sandboxv1alpha1.Accelerator
	pid    int32
	start  time.Time
	// main is the main process to start after the handshake (nil: none).
	main *protocol.Start
	// grace is the stop grace used when the main process ended.
	grace time.Duration

	mu        sync.Mutex
	conn      net.Conn
	bootedAt  time.Time // Hello arrival; zero until then
	exitedAt  time.Time // zero until QEMU exited
	exitCode  *int32
	stopAsked bool
	stopWhy   sandboxv1alpha1.TerminationReason
	failure   string         // why the guest never said Hello, if so
	mainExit  *protocol.Exit // the main process's end, once the guest reported it
	mainError string         // the guest's error about the main process, if any
}

// snapshot is what the reconciler reads from a handle.
type vmSnapshot struct {
	bootedAt, exitedAt time.Time
	exitCode           *int32
	stopAsked          bool
	stopWhy            sandboxv1alpha1.TerminationReason
	failure            string
	mainExit           *protocol.Exit
	mainError          string
}

func (h *vmHandle) snapshot() vmSnapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	return vmSnapshot{bootedAt: h.bootedAt, exitedAt: h.exitedAt, exitCode: h.exitCode,
		stopAsked: h.stopAsked, stopWhy: h.stopWhy, failure: h.failure, mainExit: h.mainExit, mainError: h.mainError}
}

// watch waits for the guest's Hello, the main process's exit and QEMU's
// exit, and asks for a reconcile of the Sandbox after each.
func (h *vmHandle) watch(ctx context.Context, notify chan<- event.GenericEvent) {
	trigger := func() {
		obj := &sandboxv1alpha1.Sandbox{}
		obj.Name, obj.Namespace = h.key.Name, h.key.Namespace
		select {
		case notify <- event.GenericEvent{Object: obj}:
		case <-ctx.Done():
		}
	}
	go func() {
		conn, err := h.awaitHello(ctx)
		if err != nil {
			h.mu.Lock()
			h.failure = err.Error()
			h.mu.Unlock()
			// A guest that never greets is killed: its exit reports it.
			_ = h.vm.Kill(context.Background())
			return
		}
		trigger()
		h.serveGuest(conn, trigger)
	}()
	select {
	case <-h.vm.Done():
	case <-ctx.Done():
		// The agent stops: VMs outlive it (they run in their own session),
		// but re-adoption is not implemented, so nothing else to do.
		return
	}
	h.mu.Lock()
	h.exitedAt = time.Now()
	var ee interface{ ExitCode() int }
	if err := h.vm.ExitErr(); err == nil {
		h.exitCode = ptrInt32(0)
	} else if errors.As(err, &ee) {
		h.exitCode = ptrInt32(int32(ee.ExitCode()))
	}
	if h.conn != nil {
		_ = h.conn.Close()
	}
	h.mu.Unlock()
	trigger()
}

func ptrInt32(v int32) *int32 { return &v }

// awaitHello accepts the guest agent's connection, reads its Hello,
// answers HelloAck and sends the main process's Start, if any.
func (h *vmHandle) awaitHello(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, helloTimeout)
	defer cancel()
	conn, err := h.vm.DialAgent(ctx)
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(d)
	}
	f, err := protocol.ReadFrame(conn)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	var hello protocol.Hello
	if f.Type != protocol.TypeHello {
		_ = conn.Close()
		return nil, errors.New("the guest's first frame is not Hello")
	}
	if err := protocol.Decode(f, &hello); err != nil {
		_ = conn.Close()
		return nil, err
	}
	version, err := protocol.Negotiate(protocol.Version, hello.Version)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	ack, err := protocol.Encode(0, protocol.TypeHelloAck, protocol.HelloAck{Version: version})
	if err == nil {
		err = protocol.WriteFrame(conn, ack)
	}
	if err == nil && h.main != nil {
		// Sent before h.conn is set: stop cannot write concurrently.
		var start protocol.Frame
		if start, err = protocol.Encode(0, protocol.TypeStart, *h.main); err == nil {
			err = protocol.WriteFrame(conn, start)
		}
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	_ = conn.SetReadDeadline(time.Time{})
	h.mu.Lock()
	h.conn, h.bootedAt = conn, time.Now()
	h.mu.Unlock()
	return conn, nil
}

// serveGuest reads what the guest sends until the connection ends (so that
// it never blocks on a full port). When the main process ends it records
// its exit, asks for a reconcile and stops the VM: the run is over.
func (h *vmHandle) serveGuest(conn net.Conn, trigger func()) {
	for {
		f, err := protocol.ReadFrame(conn)
		if err != nil {
			return
		}
		if f.Stream != 0 {
			continue
		}
		switch f.Type {
		case protocol.TypeError:
			var e protocol.Error
			if protocol.Decode(f, &e) == nil {
				h.mu.Lock()
				h.mainError = e.Message
				h.mu.Unlock()
			}
		case protocol.TypeExit:
			var ex protocol.Exit
			if protocol.Decode(f, &ex) != nil {
				continue
			}
			h.mu.Lock()
			if h.mainExit != nil {
				h.mu.Unlock()
				continue
			}
			h.mainExit = &ex
			stopping := h.stopAsked
			if !stopping {
				h.stopAsked = true
				h.stopWhy = sandboxv1alpha1.TerminationCompleted
				if ex.Code != 0 || ex.Signal != "" {
					h.stopWhy = sandboxv1alpha1.TerminationFailed
				}
			}
			h.mu.Unlock()
			trigger()
			if !stopping {
				go h.stop(sandboxv1alpha1.StopGraceful, h.grace)
			}
		}
	}
}

// exitCode is the status's exit code of a main process's end: its code, or
// 128 + the signal's number when a signal killed it (as shells report it).
func mainExitCode(ex protocol.Exit) int32 {
	if ex.Signal != "" {
		if n := unix.SignalNum(ex.Signal); n != 0 {
			return 128 + int32(n)
		}
	}
	return int32(ex.Code)
}

// mainExitMessage describes a main process's end for the status.
func mainExitMessage(ex protocol.Exit, guestErr string) string {
	msg := fmt.Sprintf("The main process exited with code %d", ex.Code)
	if ex.Signal != "" {
		msg = "The main process was killed by " + ex.Signal
	}
	if guestErr != "" {
		msg += ": " + guestErr
	}
	return msg
}

// stop asks the guest to shut down (mode Kill: kills at once) and kills the
// VMM when it is still running after grace + killMargin. It runs once per VM, in
// its own goroutine.
func (h *vmHandle) stop(mode sandboxv1alpha1.StopMode, grace time.Duration) {
	h.mu.Lock()
	conn := h.conn
	h.mu.Unlock()
	if mode != sandboxv1alpha1.StopKill && conn != nil {
		f, err := protocol.Encode(0, protocol.TypeShutdown, protocol.Shutdown{GraceMillis: grace.Milliseconds()})
		if err == nil {
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			err = protocol.WriteFrame(conn, f)
		}
		if err == nil {
			select {
			case <-h.vm.Done():
				return
			case <-time.After(grace + killMargin):
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = h.vm.Kill(ctx)
}

// consoleTail returns the last n lines of the VM's console log.
func consoleTail(p vmm.Paths, n int) string {
	b, err := os.ReadFile(p.Console)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	s := strings.Join(lines[max(0, len(lines)-n):], "\n")
	if len(s) > 3000 {
		s = s[len(s)-3000:]
	}
	return s
}

func metaTime(t time.Time) metav1.Time { return metav1.NewTime(t.Truncate(time.Second)) }
