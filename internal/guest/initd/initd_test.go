package initd

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		name, cmdline string
		want          map[string]string
	}{
		{
			name:    "key=value pairs and bare words, with the newline /proc/cmdline ends in",
			cmdline: "console=ttyS0 quiet panic=-1 agent.port=agent0 tsc_early_khz=2095900\n",
			want:    map[string]string{"console": "ttyS0", "quiet": "", "panic": "-1", PortParam: "agent0", "tsc_early_khz": "2095900"},
		},
		{
			name:    "a later parameter overrides an earlier one",
			cmdline: "agent.port=a agent.port=b",
			want:    map[string]string{PortParam: "b"},
		},
		{
			name:    "only the first = splits",
			cmdline: "x=a=b",
			want:    map[string]string{"x": "a=b"},
		},
		{name: "an empty line has no parameters", cmdline: "", want: map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			NewWithT(t).Expect(ParseCmdline(tc.cmdline)).To(Equal(tc.want))
		})
	}
}

// fakeSysfs writes class/virtio-ports/<dev>/name for each port; a name of
// "-" leaves the name file out (a port not yet named).
func fakeSysfs(t *testing.T, ports map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for dev, name := range ports {
		d := filepath.Join(root, "class", "virtio-ports", dev)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if name != "-" {
			if err := os.WriteFile(filepath.Join(d, "name"), []byte(name+"\n"), 0o444); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

func TestFindPort(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ports map[string]string
		want  string
	}{
		{name: "finds the port by its name", ports: map[string]string{"vport0p0": "org.qemu.console", "vport1p1": "agent0"}, want: "vport1p1"},
		{name: "no port of that name yet", ports: map[string]string{"vport0p0": "other"}, want: ""},
		{name: "a port without a name file yet is skipped", ports: map[string]string{"vport1p1": "-", "vport1p2": "agent0"}, want: "vport1p2"},
		{name: "the name must match exactly", ports: map[string]string{"vport1p1": "agent00"}, want: ""},
		{name: "no virtio-ports class yet (module not loaded)", ports: nil, want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := FindPort(fakeSysfs(t, tc.ports), "agent0")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tc.want))
		})
	}
}

// startSession serves a Session over a pipe whose other end plays the
// node agent. Closing that end makes the port fail for the guest (a net.Pipe
// is no virtio port: see virtioPortSim for reconnections).
func startSession(t *testing.T, runMain func(protocol.Start) (MainProcess, error)) (host net.Conn, done chan error, s *Session) {
	t.Helper()
	guest, host := net.Pipe()
	s = &Session{Port: guest, BootNanos: 1234, Logf: t.Logf, RunMain: runMain}
	done = make(chan error, 1)
	stopped := make(chan struct{})
	go func() { done <- s.Serve(); _ = guest.Close(); close(stopped) }()
	t.Cleanup(func() { _ = host.Close(); <-stopped })
	return host, done, s
}

func send(t *testing.T, c io.Writer, stream uint32, typ protocol.Type, msg any) {
	t.Helper()
	f, err := protocol.Encode(stream, typ, msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := protocol.WriteFrame(c, f); err != nil {
		t.Fatal(err)
	}
}

// decodeAs decodes a frame of type typ.
func decodeAs[T any](g Gomega, f protocol.Frame, typ protocol.Type) T {
	var v T
	g.ExpectWithOffset(1, f.Type).To(Equal(typ), "frame payload %s", f.Payload)
	g.ExpectWithOffset(1, protocol.Decode(f, &v)).To(Succeed())
	return v
}

// handshake reads the Hello on host and acknowledges it.
func handshake(t *testing.T, g Gomega, host deadlineReaderWriter) protocol.Hello {
	t.Helper()
	hello := decodeAs[protocol.Hello](g, nextFrame(t, host, 5*time.Second), protocol.TypeHello)
	send(t, host, 0, protocol.TypeHelloAck, protocol.HelloAck{Version: 1})
	return hello
}

// deadlineReaderWriter is a host end of the port.
type deadlineReaderWriter interface {
	deadlineReader
	io.Writer
}

func TestSessionHandshakeAndShutdown(t *testing.T) {
	g := NewWithT(t)
	host, done, s := startSession(t, nil)

	hello := handshake(t, g, host)
	g.Expect(hello).To(Equal(protocol.Hello{Version: protocol.Version, Agent: AgentName, BootNanos: 1234}))
	// A type from a future version is ignored, an exec is refused on its stream.
	send(t, host, 0, protocol.Type(200), map[string]string{})
	send(t, host, 7, protocol.TypeExec, protocol.Exec{Argv: []string{"/bin/true"}})
	f := nextFrame(t, host, time.Second)
	g.Expect(f.Type).To(Equal(protocol.TypeError))
	g.Expect(f.Stream).To(Equal(uint32(7)))

	send(t, host, 0, protocol.TypeShutdown, protocol.Shutdown{GraceMillis: 500})
	g.Eventually(done).WithTimeout(time.Second).Should(Receive(MatchError(ErrShutdown)))
	g.Expect(s.Version).To(Equal(1))
	g.Expect(s.Shutdown.GraceMillis).To(Equal(int64(500)))
}

func TestSessionIgnoresRequestsBeforeTheHelloAck(t *testing.T) {
	g := NewWithT(t)
	host, done, _ := startSession(t, nil)
	nextFrame(t, host, 5*time.Second)
	send(t, host, 0, protocol.TypeShutdown, protocol.Shutdown{})
	g.Consistently(done).WithTimeout(50 * time.Millisecond).ShouldNot(Receive())
	send(t, host, 0, protocol.TypeHelloAck, protocol.HelloAck{Version: 1})
	send(t, host, 0, protocol.TypeShutdown, protocol.Shutdown{})
	g.Eventually(done).WithTimeout(time.Second).Should(Receive(MatchError(ErrShutdown)))
}

func TestSessionRejectsAVersionItDoesNotSpeak(t *testing.T) {
	for _, v := range []int{0, protocol.Version + 1} {
		g := NewWithT(t)
		host, done, _ := startSession(t, nil)
		nextFrame(t, host, 5*time.Second)
		send(t, host, 0, protocol.TypeHelloAck, protocol.HelloAck{Version: v})
		g.Eventually(done).WithTimeout(time.Second).Should(Receive(MatchError(ContainSubstring("protocol version"))))
	}
}

func TestSessionEndsWhenThePortFails(t *testing.T) {
	g := NewWithT(t)
	host, done, _ := startSession(t, nil)
	nextFrame(t, host, 5*time.Second)
	// The guest reads EOF (a host went), says Hello for the next one and
	// the write fails: a closed pipe is a broken port, not a virtio one.
	g.Expect(host.Close()).To(Succeed())
	g.Eventually(done).WithTimeout(time.Second).Should(Receive(MatchError(ContainSubstring("sending hello"))))
}

func TestLookPath(t *testing.T) {
	g := NewWithT(t)
	root := t.TempDir()
	for _, d := range []string{"bin", "usr/bin"} {
		g.Expect(os.MkdirAll(filepath.Join(root, d), 0o755)).To(Succeed())
	}
	g.Expect(os.WriteFile(filepath.Join(root, "usr/bin/tool"), nil, 0o755)).To(Succeed())
	g.Expect(os.WriteFile(filepath.Join(root, "bin/data"), nil, 0o644)).To(Succeed())
	g.Expect(os.Symlink("/usr/bin/tool", filepath.Join(root, "bin/link"))).To(Succeed())

	for _, tc := range []struct {
		file string
		env  []string
		want string
	}{
		{file: "tool", want: "/usr/bin/tool"}, // the default PATH
		{file: "tool", env: []string{"PATH=/bin:/usr/bin"}, want: "/usr/bin/tool"},
		{file: "link", env: []string{"PATH=/bin"}, want: "/bin/link"}, // a symlink, not followed
		{file: "./rel", want: "./rel"},                                // a '/' skips the search
		{file: "tool", env: []string{"PATH=/bin", "PATH=/usr/bin"}, want: "/usr/bin/tool"},
	} {
		got, err := LookPath(root, tc.file, tc.env)
		g.Expect(err).NotTo(HaveOccurred(), tc.file)
		g.Expect(got).To(Equal(tc.want), tc.file)
	}
	for _, file := range []string{"data", "missing", ""} {
		_, err := LookPath(root, file, []string{"PATH=/bin"})
		g.Expect(err).To(HaveOccurred(), file)
	}
}

func TestSessionStartsTheMainProcessAndReportsItsExit(t *testing.T) {
	g := NewWithT(t)
	got := make(chan protocol.Start, 1)
	host, _, _ := startSession(t, func(st protocol.Start) (MainProcess, error) {
		got <- st
		return MainProcess{PID: 42, Wait: func() protocol.Exit { return protocol.Exit{Code: 3} }}, nil
	})
	handshake(t, g, host)
	start := protocol.Start{Argv: []string{"/bin/exit3"}, Env: []string{"FOO=bar"}, Dir: "/"}
	send(t, host, 0, protocol.TypeStart, start)
	g.Eventually(got).Should(Receive(Equal(start)))
	f := nextFrame(t, host, 5*time.Second)
	g.Expect(f.Stream).To(Equal(uint32(0)))
	g.Expect(decodeAs[protocol.Exit](g, f, protocol.TypeExit)).To(Equal(protocol.Exit{Code: 3}))

	// A second start is refused.
	send(t, host, 0, protocol.TypeStart, start)
	g.Expect(nextFrame(t, host, 5*time.Second).Type).To(Equal(protocol.TypeError))
}

func TestSessionRefusesAStartItCannotRun(t *testing.T) {
	for _, tc := range []struct {
		name    string
		runMain func(protocol.Start) (MainProcess, error)
		start   protocol.Start
		want    string
	}{
		{name: "an agent without RunMain", start: protocol.Start{Argv: []string{"x"}}, want: "cannot start"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			host, _, _ := startSession(t, tc.runMain)
			handshake(t, g, host)
			send(t, host, 0, protocol.TypeStart, tc.start)
			e := decodeAs[protocol.Error](g, nextFrame(t, host, 5*time.Second), protocol.TypeError)
			g.Expect(e.Message).To(ContainSubstring(tc.want))
		})
	}
}

// TestSessionConfiguresWithoutAMainProcess: a Start without a program
// configures the sandbox (RunMain runs) and reports no exit: the VM idles,
// heartbeating, until the host stops it.
func TestSessionConfiguresWithoutAMainProcess(t *testing.T) {
	g := NewWithT(t)
	configured := make(chan protocol.Start, 1)
	host, _, _ := startSession(t, func(st protocol.Start) (MainProcess, error) {
		configured <- st
		return MainProcess{}, nil
	})
	handshake(t, g, host)
	send(t, host, 0, protocol.TypeStart, protocol.Start{Hostname: "idle"})
	g.Eventually(configured).Should(Receive(HaveField("Hostname", "idle")))
	// Only heartbeats follow: no Error, no Exit.
	for range 2 {
		g.Expect(readAnyFrame(t, host, 5*time.Second).Type).To(Equal(protocol.TypeHeartbeat))
	}
}

func TestSessionReportsAMainProcessThatCannotStart(t *testing.T) {
	g := NewWithT(t)
	host, _, _ := startSession(t, func(protocol.Start) (MainProcess, error) {
		return MainProcess{}, errors.New("patch 0 (Text /etc/passwd): the path exists in the image")
	})
	handshake(t, g, host)
	send(t, host, 0, protocol.TypeStart, protocol.Start{Argv: []string{"nope"}})
	e := decodeAs[protocol.Error](g, nextFrame(t, host, 5*time.Second), protocol.TypeError)
	g.Expect(e.Message).To(ContainSubstring("patch 0 (Text /etc/passwd)"))
	exit := decodeAs[protocol.Exit](g, nextFrame(t, host, 5*time.Second), protocol.TypeExit)
	g.Expect(exit.Code).To(Equal(startFailedCode))
}
