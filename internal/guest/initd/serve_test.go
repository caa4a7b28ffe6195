package initd

import (
	"errors"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// fakeMain is a main process the test ends at will.
type fakeMain struct {
	started chan protocol.Start
	exit    chan protocol.Exit
}

func newFakeMain() *fakeMain {
	return &fakeMain{started: make(chan protocol.Start, 1), exit: make(chan protocol.Exit, 1)}
}

func (m *fakeMain) run(st protocol.Start) (MainProcess, error) {
	m.started <- st
	return MainProcess{PID: 42, Wait: func() protocol.Exit { return <-m.exit }}, nil
}

// serveSim serves a Session on a simulated virtio port until the test ends.
func serveSim(t *testing.T, runMain func(protocol.Start) (MainProcess, error)) (*virtioPortSim, *Session, chan error) {
	t.Helper()
	port := newVirtioPortSim()
	s := &Session{Port: port, BootNanos: 1234, Logf: t.Logf, RunMain: runMain, HeartbeatInterval: 10 * time.Millisecond}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		// Shut the session down through whatever host is (or gets) connected.
		port.mu.Lock()
		h := port.host
		port.mu.Unlock()
		if h == nil {
			h = port.Connect(t)
		}
		send(t, h, 0, protocol.TypeHelloAck, protocol.HelloAck{Version: 1})
		send(t, h, 0, protocol.TypeShutdown, protocol.Shutdown{})
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, ErrShutdown) {
				t.Errorf("the session ended with %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("the session did not end")
		}
	})
	return port, s, done
}

func TestSessionWaitsForAHostBeforeItsHello(t *testing.T) {
	g := NewWithT(t)
	port, _, done := serveSim(t, nil)
	// No host: the guest's reads see EOF and its Hello waits in the write.
	port.WaitBlockedWriter(t)
	g.Consistently(done).WithTimeout(50 * time.Millisecond).ShouldNot(Receive())
	host := port.Connect(t)
	hello := handshake(t, g, host)
	g.Expect(hello.Main).To(BeNil(), "no Start yet")
}

func TestSessionSaysHelloAgainToEachNewHost(t *testing.T) {
	g := NewWithT(t)
	main := newFakeMain()
	port, s, _ := serveSim(t, main.run)

	host1 := port.Connect(t)
	g.Expect(handshake(t, g, host1).Main).To(BeNil())
	send(t, host1, 0, protocol.TypeStart, protocol.Start{Argv: []string{"/bin/app"}})
	g.Eventually(main.started).Should(Receive())
	// The PID is recorded once RunMain returned: wait for it to show.
	g.Eventually(func() *protocol.MainState { return mainState(s) }).Should(Equal(&protocol.MainState{PID: 42}))

	// The agent restarts: its connection goes, a new one comes.
	g.Expect(host1.Close()).To(Succeed())
	waitConn(t, s, 1)
	host2 := port.Connect(t)
	hello := handshake(t, g, host2)
	g.Expect(hello.Main).To(Equal(&protocol.MainState{PID: 42}), "the new host learns the main process runs")

	// A Start from a host that ignored Hello.Main is refused.
	send(t, host2, 0, protocol.TypeStart, protocol.Start{Argv: []string{"/bin/app"}})
	e := decodeAs[protocol.Error](g, nextFrame(t, host2, 5*time.Second), protocol.TypeError)
	g.Expect(e.Message).To(ContainSubstring("already started"))

	// The exit goes to the host connected then, and every later Hello
	// carries it.
	main.exit <- protocol.Exit{Code: 3}
	g.Expect(decodeAs[protocol.Exit](g, nextFrame(t, host2, 5*time.Second), protocol.TypeExit)).To(Equal(protocol.Exit{Code: 3}))
	g.Expect(host2.Close()).To(Succeed())
	waitConn(t, s, 2)
	host3 := port.Connect(t)
	hello = handshake(t, g, host3)
	g.Expect(hello.Main).To(Equal(&protocol.MainState{PID: 42, Exit: &protocol.Exit{Code: 3}}))
	expectNoFrame(t, host3, 50*time.Millisecond)
}

func TestSessionDropsAPartialFrameWhenTheHostGoes(t *testing.T) {
	g := NewWithT(t)
	main := newFakeMain()
	port, s, done := serveSim(t, main.run)
	host1 := port.Connect(t)
	handshake(t, g, host1)
	// Half a Start, then the host dies: the guest reads the bytes, then EOF
	// inside the frame.
	f, err := protocol.Encode(0, protocol.TypeStart, protocol.Start{Argv: []string{"/bin/app"}})
	g.Expect(err).NotTo(HaveOccurred())
	var buf recorder
	g.Expect(protocol.WriteFrame(&buf, f)).To(Succeed())
	_, err = host1.Write(buf.b[:len(buf.b)/2])
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(host1.Close()).To(Succeed())
	waitConn(t, s, 1)

	host2 := port.Connect(t)
	g.Expect(handshake(t, g, host2).Main).To(BeNil(), "the half Start was not taken")
	g.Consistently(main.started).WithTimeout(20 * time.Millisecond).ShouldNot(Receive())
	g.Expect(done).NotTo(Receive())
	// The new connection parses from a frame boundary.
	send(t, host2, 0, protocol.TypeStart, protocol.Start{Argv: []string{"/bin/app"}})
	g.Eventually(main.started).Should(Receive())
	main.exit <- protocol.Exit{}
	decodeAs[protocol.Exit](g, nextFrame(t, host2, 5*time.Second), protocol.TypeExit)
}

// recorder collects writes.
type recorder struct{ b []byte }

func (r *recorder) Write(p []byte) (int, error) { r.b = append(r.b, p...); return len(p), nil }

func TestSessionDeliversAnExitThatHappensWhileNoHostIsConnected(t *testing.T) {
	g := NewWithT(t)
	main := newFakeMain()
	port, s, _ := serveSim(t, main.run)
	host1 := port.Connect(t)
	handshake(t, g, host1)
	send(t, host1, 0, protocol.TypeStart, protocol.Start{Argv: []string{"/bin/app"}})
	g.Eventually(main.started).Should(Receive())
	g.Eventually(func() *protocol.MainState { return mainState(s) }).Should(Equal(&protocol.MainState{PID: 42}))

	g.Expect(host1.Close()).To(Succeed())
	// The guest noticed: its next Hello waits for a host. Then the main
	// process ends.
	waitConn(t, s, 1)
	main.exit <- protocol.Exit{Code: -1, Signal: "SIGKILL"}

	host2 := port.Connect(t)
	hello := handshake(t, g, host2)
	exit := protocol.Exit{Code: -1, Signal: "SIGKILL"}
	// The Hello was queued before the exit: the TypeExit follows it.
	g.Expect(hello.Main).To(Equal(&protocol.MainState{PID: 42}))
	g.Expect(decodeAs[protocol.Exit](g, nextFrame(t, host2, 5*time.Second), protocol.TypeExit)).To(Equal(exit))
	expectNoFrame(t, host2, 50*time.Millisecond)
}

func TestSessionSendsNothingBeforeItsHelloOnANewConnection(t *testing.T) {
	g := NewWithT(t)
	main := newFakeMain()
	port, s, _ := serveSim(t, main.run)
	host1 := port.Connect(t)
	handshake(t, g, host1)
	send(t, host1, 0, protocol.TypeStart, protocol.Start{Argv: []string{"/bin/app"}})
	g.Eventually(main.started).Should(Receive())
	g.Eventually(func() *protocol.MainState { return mainState(s) }).Should(Equal(&protocol.MainState{PID: 42}))

	// The host goes, and before the guest's reader notices, the main
	// process ends: the TypeExit write blocks for the old connection.
	port.HoldReads(true)
	g.Expect(host1.Close()).To(Succeed())
	main.exit <- protocol.Exit{Code: 9}
	g.Eventually(func() *protocol.MainState { return mainState(s) }).Should(Equal(&protocol.MainState{PID: 42, Exit: &protocol.Exit{Code: 9}}))
	port.WaitBlockedWriter(t)
	port.HoldReads(false)
	waitConn(t, s, 1)

	// The reader sees EOF and interrupts that write: the new host reads a
	// Hello first, which carries the exit, and no stale TypeExit after it.
	host2 := port.Connect(t)
	first := readAnyFrame(t, host2, 5*time.Second)
	hello := decodeAs[protocol.Hello](g, first, protocol.TypeHello)
	g.Expect(hello.Main).To(Equal(&protocol.MainState{PID: 42, Exit: &protocol.Exit{Code: 9}}))
	send(t, host2, 0, protocol.TypeHelloAck, protocol.HelloAck{Version: 1})
	expectNoFrame(t, host2, 100*time.Millisecond)
}

// waitConn waits until the session has started its connection n (counted
// from 0) and interrupted what was blocked for the one before. A real
// agent's pause before it redials gives the guest that time; a test must
// wait for it, or a host may connect in the microseconds before the guest
// interrupts a write meant for its predecessor (see Session).
func waitConn(t *testing.T, s *Session, n uint64) {
	t.Helper()
	NewWithT(t).Eventually(func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.conn == n && !s.kicking
	}).WithTimeout(5 * time.Second).Should(BeTrue())
}

// mainState is the main process's state a Hello would carry now.
func mainState(s *Session) *protocol.MainState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.main == nil {
		return nil
	}
	m := *s.main
	return &m
}

func TestSessionHeartbeats(t *testing.T) {
	g := NewWithT(t)
	port, _, _ := serveSim(t, nil)
	host := port.Connect(t)
	// None before the HelloAck.
	decodeAs[protocol.Hello](g, readAnyFrame(t, host, 5*time.Second), protocol.TypeHello)
	g.Expect(host.SetReadDeadline(time.Now().Add(50 * time.Millisecond))).To(Succeed())
	_, err := protocol.ReadFrame(host)
	g.Expect(err).To(HaveOccurred(), "no heartbeat before the HelloAck")
	send(t, host, 0, protocol.TypeHelloAck, protocol.HelloAck{Version: 1})

	hb := decodeAs[protocol.Heartbeat](g, readAnyFrame(t, host, 5*time.Second), protocol.TypeHeartbeat)
	g.Expect(hb).To(Equal(protocol.Heartbeat{}))
	// A host-driven request counts as activity; heartbeats do not.
	send(t, host, 5, protocol.TypeExec, protocol.Exec{Argv: []string{"true"}})
	send(t, host, 5, protocol.TypeSignal, protocol.Signal{Signal: "SIGTERM"})
	g.Eventually(func() uint64 {
		f := readAnyFrame(t, host, 5*time.Second)
		if f.Type != protocol.TypeHeartbeat {
			return 0
		}
		return decodeAs[protocol.Heartbeat](g, f, protocol.TypeHeartbeat).ActivitySeq
	}).Should(Equal(uint64(2)))
	for range 3 {
		hb := decodeAs[protocol.Heartbeat](g, readAnyFrame(t, host, 5*time.Second), protocol.TypeHeartbeat)
		g.Expect(hb.ActivitySeq).To(Equal(uint64(2)))
	}
}

func TestSessionQueuesOneHeartbeatAtMostForAHostThatDoesNotRead(t *testing.T) {
	g := NewWithT(t)
	port, s, _ := serveSim(t, nil)
	host := port.Connect(t)
	handshake(t, g, host)
	decodeAs[protocol.Heartbeat](g, readAnyFrame(t, host, 5*time.Second), protocol.TypeHeartbeat)
	// The agent hangs: the port fills, the writer blocks on a heartbeat, and
	// ten intervals later one more waits, not ten.
	port.HoldWrites(true)
	port.WaitBlockedWriter(t)
	g.Consistently(func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.out)
	}).WithTimeout(100 * time.Millisecond).WithPolling(5 * time.Millisecond).Should(BeNumerically("<=", 1))
	port.HoldWrites(false)
	decodeAs[protocol.Heartbeat](g, readAnyFrame(t, host, 5*time.Second), protocol.TypeHeartbeat)
}
