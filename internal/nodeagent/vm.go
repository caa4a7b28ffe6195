package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/guest/hostconn"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/sandboxlog"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// helloTimeout bounds the wait for the guest's Hello after QEMU started.
const helloTimeout = 2 * time.Minute

// consoleTailLines is how many console lines an unexpected exit reports.
const consoleTailLines = 10

// vmHandle is one VM of one run of one Sandbox: one this agent started,
// or one an earlier agent process started and this one re-adopted from its
// journal (adopted).
type vmHandle struct {
	key     types.NamespacedName
	run     int32
	vm      vmm.VM
	runDir  string
	accel   sandboxv1alpha1.Accelerator
	pid     int32
	start   time.Time
	adopted bool
	// config is the guest's Start message, sent after the first Hello of a
	// boot (nil: none to send).
	config *protocol.Start
	// grace is the stop grace used when the main process ended.
	grace time.Duration
	// idleTimeout stops the VM after this long without activity (0: never).
	idleTimeout time.Duration

	// output receives the main process's output (nil: dropped).
	output func(stderr bool, data []byte)
	// log is the sandbox's output log (nil: none), closed when the VM exits.
	log *sandboxlog.Writer
	// net is the VM's network on the node (nil: no NIC).
	net *vmNet
	// violated is set when a secret whose onViolation is BlockAndTerminate
	// was sent to a host it is not allowed to: the VM is stopped.
	violated atomic.Bool
	// attachers are the clients attached to the main process's output.
	attachMu  sync.Mutex
	attachers map[*attacher]struct{}

	mu        sync.Mutex
	guest     *hostconn.Conn // the current connection to the guest agent, nil between connections
	bootedAt  time.Time      // first Hello; zero until then
	exitedAt  time.Time      // zero until QEMU exited
	exitCode  *int32
	stopAsked bool
	stopWhy   sandboxv1alpha1.TerminationReason
	failure   string         // why the guest never said Hello, if so
	mainExit  *protocol.Exit // the main process's end, once the guest reported it
	mainError string         // the guest's error about the main process, if any
	// metrics is the guest's latest report of its resources.
	metrics *protocol.Metrics
	// Activity, from the guest's heartbeats, for the idle timeout and drains.
	sessions     int
	activitySeq  uint64
	lastActivity time.Time
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
	lastActivity       time.Time
}

func (h *vmHandle) snapshot() vmSnapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	return vmSnapshot{bootedAt: h.bootedAt, exitedAt: h.exitedAt, exitCode: h.exitCode,
		stopAsked: h.stopAsked, stopWhy: h.stopWhy, failure: h.failure, mainExit: h.mainExit, mainError: h.mainError,
		lastActivity: h.lastActivity}
}

// redialPause is the pause before connecting to the guest again after a
// connection ended while the VM runs. The guest learns that its host went
// away only when its reader runs (virtio_console reports the host's state,
// not each connection): QEMU accepts a new connection within microseconds,
// so a redial faster than the guest reacts would look like the old
// connection to it (it reacted within 4-6 ms on an idle vCPU, measured).
const redialPause = 250 * time.Millisecond

// errNotHello is a connection whose first frame is not the guest's Hello:
// the guest has not noticed that the previous connection ended.
var errNotHello = errors.New("the guest's first frame is not Hello")

// requestReconcile asks for a reconcile of Sandbox key through notify (the
// reconciler's channel source), unless ctx ends first.
func requestReconcile(ctx context.Context, notify chan<- event.GenericEvent, key types.NamespacedName) {
	obj := &sandboxv1alpha1.Sandbox{}
	obj.Name, obj.Namespace = key.Name, key.Namespace
	select {
	case notify <- event.GenericEvent{Object: obj}:
	case <-ctx.Done():
	}
}

// watch talks to the guest and waits for QEMU's exit, and asks for a
// reconcile of the Sandbox after each change. When the agent stops (ctx
// ends) it lets go of the VM, which keeps running: the next agent process
// re-adopts it.
func (h *vmHandle) watch(ctx context.Context, notify chan<- event.GenericEvent) {
	trigger := func() { requestReconcile(ctx, notify, h.key) }
	talkDone := make(chan struct{})
	go func() {
		defer close(talkDone)
		h.talk(ctx, trigger)
	}()
	select {
	case <-h.vm.Done():
	case <-ctx.Done():
		h.closeGuest()
		<-talkDone
		if h.net != nil {
			h.net.close() // the next agent process makes a new one
		}
		_ = h.vm.Close()
		return
	}
	if h.net != nil {
		h.net.close()
	}
	h.mu.Lock()
	h.exitedAt = time.Now()
	var ee interface{ ExitCode() int }
	if err := h.vm.ExitErr(); err == nil {
		h.exitCode = ptrInt32(0)
	} else if errors.As(err, &ee) {
		h.exitCode = ptrInt32(int32(ee.ExitCode()))
	}
	h.mu.Unlock()
	h.closeGuest()
	<-talkDone
	_ = h.vm.Close()
	if h.log != nil {
		_ = h.log.Write(sandboxlog.SourceSystem, 0, []byte(fmt.Sprintf("run %d: VM exited\n", h.run)))
		_ = h.log.Close()
	}
	trigger()
}

func ptrInt32(v int32) *int32 { return &v }

// talk connects to the guest agent, handshakes and serves what it sends,
// again after every connection loss while the VM runs. A guest that never
// greets (or an adopted one that stopped answering) is killed: its exit
// reports it.
func (h *vmHandle) talk(ctx context.Context, trigger func()) {
	for {
		conn, hello, err := h.handshake(ctx)
		for deadline := time.Now().Add(helloTimeout); errors.Is(err, errNotHello) && time.Now().Before(deadline); {
			// Hang up and call again later: the guest then sees the host
			// go away and greets the next connection.
			select {
			case <-h.vm.Done():
			case <-ctx.Done():
			case <-time.After(redialPause):
			}
			conn, hello, err = h.handshake(ctx)
		}
		if err != nil {
			select {
			case <-h.vm.Done():
				return
			case <-ctx.Done():
				return
			default:
			}
			h.mu.Lock()
			h.failure = err.Error()
			h.mu.Unlock()
			_ = h.vm.Kill(context.Background())
			return
		}
		h.mu.Lock()
		first := h.bootedAt.IsZero()
		if first {
			h.bootedAt = time.Now()
			h.lastActivity = h.bootedAt
		}
		h.mu.Unlock()
		if first {
			trigger()
		}
		if hello.Main != nil && hello.Main.Exit != nil {
			// It ended while no agent was connected.
			h.mainExited(*hello.Main.Exit, trigger)
		}
		gc := hostconn.New(conn, hostconn.Options{
			OnControl:    func(f protocol.Frame) { h.onControl(f, trigger) },
			OnMainOutput: h.onMainOutput,
		})
		h.mu.Lock()
		h.guest = gc
		h.mu.Unlock()
		// The agent stopping (ctx) ends the connection even if it raced
		// with watch's closeGuest before h.guest was set.
		stop := context.AfterFunc(ctx, func() { _ = gc.Close() })
		<-gc.Done()
		stop()
		h.mu.Lock()
		if h.guest == gc {
			h.guest = nil
		}
		h.mu.Unlock()
		select {
		case <-h.vm.Done():
			return
		case <-ctx.Done():
			return
		case <-time.After(redialPause):
		}
	}
}

// handshake connects to the guest agent, reads its Hello, answers HelloAck
// and sends the guest's configuration when the guest has none yet.
func (h *vmHandle) handshake(ctx context.Context) (net.Conn, protocol.Hello, error) {
	var hello protocol.Hello
	ctx, cancel := context.WithTimeout(ctx, helloTimeout)
	defer cancel()
	conn, err := h.vm.DialAgent(ctx)
	if err != nil {
		return nil, hello, err
	}
	// The connection must not outlive the agent's shutdown or the timeout
	// while it waits for a Hello.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	fail := func(err error) (net.Conn, protocol.Hello, error) {
		_ = conn.Close()
		return nil, hello, err
	}
	f, err := protocol.ReadFrame(conn)
	if !stop() {
		return fail(fmt.Errorf("no Hello from the guest agent: %w", ctx.Err()))
	}
	if err != nil {
		return fail(fmt.Errorf("reading the guest's Hello: %w", err))
	}
	if f.Type != protocol.TypeHello {
		return fail(fmt.Errorf("%w (type %d)", errNotHello, f.Type))
	}
	if err := protocol.Decode(f, &hello); err != nil {
		return fail(err)
	}
	version, err := protocol.Negotiate(protocol.Version, hello.Version)
	if err != nil {
		return fail(err)
	}
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	ack, err := protocol.Encode(0, protocol.TypeHelloAck, protocol.HelloAck{Version: version})
	if err == nil {
		err = protocol.WriteFrame(conn, ack)
	}
	if err == nil && hello.Main == nil && h.config != nil {
		// Written before the connection is shared: nothing else writes yet.
		var start protocol.Frame
		if start, err = protocol.Encode(0, protocol.TypeStart, *h.config); err == nil {
			err = protocol.WriteFrame(conn, start)
		}
	}
	if err != nil {
		return fail(err)
	}
	_ = conn.SetWriteDeadline(time.Time{})
	return conn, hello, nil
}

// Guest returns the current connection to the guest agent, or nil while
// there is none (booting, reconnecting, exited).
func (h *vmHandle) Guest() *hostconn.Conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.guest
}

func (h *vmHandle) closeGuest() {
	if gc := h.Guest(); gc != nil {
		_ = gc.Close()
	}
}

// onControl handles the guest's control messages: the main process's
// errors and exit, and heartbeats. It runs on the connection's reader.
func (h *vmHandle) onControl(f protocol.Frame, trigger func()) {
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
		if protocol.Decode(f, &ex) == nil {
			// Not on the reader: mainExited triggers a reconcile and may
			// wait for it to be taken.
			go h.mainExited(ex, trigger)
		}
	case protocol.TypeHeartbeat:
		var hb protocol.Heartbeat
		if protocol.Decode(f, &hb) == nil {
			h.mu.Lock()
			h.sessions = hb.ActiveSessions
			if hb.ActivitySeq != h.activitySeq || hb.ActiveSessions > 0 {
				h.activitySeq, h.lastActivity = hb.ActivitySeq, time.Now()
			}
			if hb.Metrics != nil {
				h.metrics = hb.Metrics
			}
			h.mu.Unlock()
		}
	}
}

// mainExited records the main process's end (once), asks for a reconcile
// and stops the VM: the run is over.
func (h *vmHandle) mainExited(ex protocol.Exit, trigger func()) {
	h.mu.Lock()
	if h.mainExit != nil {
		h.mu.Unlock()
		return
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
// VMM when it is still running after grace + killMargin. It runs once per
// VM, in its own goroutine.
func (h *vmHandle) stop(mode sandboxv1alpha1.StopMode, grace time.Duration) {
	gc := h.Guest()
	if mode == sandboxv1alpha1.StopDrain && gc != nil {
		// New sessions are refused from now on; the running ones may finish
		// within the grace period, then the guest shuts down.
		deadline := time.Now().Add(grace)
		if gc.SendControl(protocol.TypeDrain, protocol.Drain{}) == nil {
			for time.Now().Before(deadline) && h.activeSessions() > 0 {
				select {
				case <-h.vm.Done():
					return
				case <-time.After(drainPoll):
				}
			}
		}
		grace = max(time.Until(deadline), 0)
	}
	if mode != sandboxv1alpha1.StopKill && gc != nil {
		err := gc.SendControl(protocol.TypeShutdown, protocol.Shutdown{GraceMillis: grace.Milliseconds()})
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

// drainPoll is how often a drain checks for running sessions (the guest
// reports them every protocol.HeartbeatInterval).
const drainPoll = 100 * time.Millisecond

func (h *vmHandle) activeSessions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessions
}

// consoleSuffix is "; console:" and the console's last lines, or "".
func consoleSuffix(p vmm.Paths) string {
	if tail := consoleTail(p, consoleTailLines); tail != "" {
		return "; console:\n" + tail
	}
	return ""
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
