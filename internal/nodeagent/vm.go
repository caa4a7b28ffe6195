package nodeagent

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"time"

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

	mu        sync.Mutex
	conn      net.Conn
	bootedAt  time.Time // Hello arrival; zero until then
	exitedAt  time.Time // zero until QEMU exited
	exitCode  *int32
	stopAsked bool
	stopWhy   sandboxv1alpha1.TerminationReason
	failure   string // why the guest never said Hello, if so
}

// snapshot is what the reconciler reads from a handle.
type vmSnapshot struct {
	bootedAt, exitedAt time.Time
	exitCode           *int32
	stopAsked          bool
	stopWhy            sandboxv1alpha1.TerminationReason
	failure            string
}

func (h *vmHandle) snapshot() vmSnapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	return vmSnapshot{bootedAt: h.bootedAt, exitedAt: h.exitedAt, exitCode: h.exitCode,
		stopAsked: h.stopAsked, stopWhy: h.stopWhy, failure: h.failure}
}

// watch waits for the guest's Hello and for QEMU's exit, and asks for a
// reconcile of the Sandbox after each.
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
		if err := h.awaitHello(ctx); err != nil {
			h.mu.Lock()
			h.failure = err.Error()
			h.mu.Unlock()
			// A guest that never greets is killed: its exit reports it.
			_ = h.vm.Kill(context.Background())
			return
		}
		trigger()
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

// awaitHello accepts the guest agent's connection and reads its Hello.
func (h *vmHandle) awaitHello(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, helloTimeout)
	defer cancel()
	conn, err := h.vm.AcceptAgent(ctx)
	if err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(d)
	}
	f, err := protocol.ReadFrame(conn)
	if err != nil {
		_ = conn.Close()
		return err
	}
	var hello protocol.Hello
	if f.Type != protocol.TypeHello {
		_ = conn.Close()
		return errors.New("the guest's first frame is not Hello")
	}
	if err := protocol.Decode(f, &hello); err != nil {
		_ = conn.Close()
		return err
	}
	version, err := protocol.Negotiate(protocol.Version, hello.Version)
	if err != nil {
		_ = conn.Close()
		return err
	}
	ack, err := protocol.Encode(0, protocol.TypeHelloAck, protocol.HelloAck{Version: version})
	if err == nil {
		err = protocol.WriteFrame(conn, ack)
	}
	if err != nil {
		_ = conn.Close()
		return err
	}
	_ = conn.SetReadDeadline(time.Time{})
	h.mu.Lock()
	h.conn, h.bootedAt = conn, time.Now()
	h.mu.Unlock()
	// Drain what the guest sends until the connection ends, so that it
	// never blocks on a full port.
	go func() {
		for {
			if _, err := protocol.ReadFrame(conn); err != nil {
				return
			}
		}
	}()
	return nil
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
