package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/devimage"
	"github.com/microvm-dev/sandbox-operator/internal/guest/hostconn"
	"github.com/microvm-dev/sandbox-operator/internal/guest/initramfs"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/image"
	"github.com/microvm-dev/sandbox-operator/internal/netpolicy"
	"github.com/microvm-dev/sandbox-operator/internal/netstack"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// The guest's view: the tool's path in its root, the image's environment
// and the main process, which only idles.
const toolPath = "/bin/nettool"

var (
	guestEnv  = []string{"PATH=/bin"}
	idleEntry = []string{"/bin/sh", "-c", "sleep 36000"}
)

// networkSpec is the Sandbox network the benchmark's VM gets: the node's
// loopback (the guest's gateway 10.0.2.2) allowed, everything else denied,
// and guestSinkPort published on the node for the inbound transfer.
func networkSpec(hostPort int32) *sandboxv1alpha1.NetworkSpec {
	return &sandboxv1alpha1.NetworkSpec{
		Ports: []sandboxv1alpha1.PublishedPort{{GuestPort: guestSinkPort, HostPort: hostPort, Protocol: sandboxv1alpha1.ProtocolTCP}},
		Policy: &sandboxv1alpha1.NetworkPolicy{
			DefaultEgress: sandboxv1alpha1.PolicyDeny,
			Rules: []sandboxv1alpha1.NetworkRule{{
				Action:      sandboxv1alpha1.PolicyAllow,
				Destination: sandboxv1alpha1.NetworkDestination{CIDR: "127.0.0.1/32"},
				Protocols:   []sandboxv1alpha1.RuleProtocol{"TCP"},
			}},
		},
	}
}

// buildTool compiles the guest tool, static, into dir.
func buildTool(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "nettool")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./bench/cmd/netbench/guesttool")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the guest tool: %w\n%s", err, out)
	}
	return bin, nil
}

// rootDisk makes the guest's root disk as the node agent makes a
// Sandbox's: an OCI image (internal/devimage's busybox plus the tool) served
// from an in-memory registry on 127.0.0.1 and pulled into an image cache
// (internal/image), which flattens it to ext4.
func rootDisk(ctx context.Context, tool, cacheDir string) (string, error) {
	files, err := devimage.Busybox("")
	if err != nil {
		return "", fmt.Errorf("%w (install busybox-static: hack/setup.sh)", err)
	}
	content, err := os.ReadFile(tool)
	if err != nil {
		return "", err
	}
	files = append(files, devimage.File{Name: toolPath[1:], Mode: 0o755, Content: content})
	img, err := devimage.Image(files, v1.Config{Cmd: idleEntry, Env: guestEnv})
	if err != nil {
		return "", err
	}
	reg, err := devimage.Serve("127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = reg.Close() }()
	ref, err := reg.Push("netbench/nettool:v1", img)
	if err != nil {
		return "", err
	}
	cache, err := image.New(cacheDir)
	if err != nil {
		return "", err
	}
	defer cache.Close()
	pulled, err := cache.Ensure(ctx, ref, image.PullOptions{Insecure: true}, nil)
	if err != nil {
		return "", err
	}
	return pulled.RootfsPath, nil
}

// initrd packs sandbox-init with the guest kernel's default and network
// modules, as the node agent does (internal/nodeagent prepareInitrd).
func initrd(sandboxInit, modules, dst string) (string, error) {
	err := initramfs.WriteFile(dst, initramfs.Spec{Init: sandboxInit, KernelModulesDir: modules,
		Modules: initramfs.DefaultModules, NetworkModules: initramfs.NetworkModules})
	return dst, err
}

// guest is the booted VM, its network and its agent connection.
type guest struct {
	vm    vmm.VM
	stack *netstack.Net
	conn  *hostconn.Conn
	// published is the node address of the published guest port.
	published string
	bootTime  time.Duration

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// bootGuest starts the VM with a NIC linked to a per-VM stack whose
// policy is compiled from networkSpec, as the node agent does
// (internal/nodeagent startNetwork), answers the guest's Hello with the
// Start of an idle main process and the Network, and opens the session
// multiplexer (hostconn) for exec sessions.
func bootGuest(ctx context.Context, b *bench) (_ *guest, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	spec := networkSpec(int32(ln.Addr().(*net.TCPAddr).Port))
	policy, err := netpolicy.Compile(spec, netpolicy.HostInfo{Addrs: netstack.NodeAddrs(), Resolver: netstack.DefaultResolver})
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	st, err := netstack.New(netstack.Config{Policy: policy, Log: logr.Discard()})
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	lctx, cancel := context.WithCancel(context.Background())
	g := &guest{stack: st, cancel: cancel, published: ln.Addr().String()}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	g.wg.Go(func() { _ = st.Publish(ln, guestSinkPort) })

	start := time.Now()
	g.vm, err = vmm.QEMU{}.Start(ctx, vmm.Config{
		Kernel: b.kernel, Initrd: b.initrd, CPUs: 1, MemoryMiB: b.cfg.memoryMiB,
		Accel: vmm.Accel(b.cfg.accelerator), TSCkHz: b.tscKHz, RunDir: filepath.Join(b.work, "vm"),
		RootDisk: b.rootfs, Binary: vmm.DefaultQEMUBinary,
		Network: &vmm.NetworkDevice{MAC: netstack.GuestMAC.String()},
	})
	if err != nil {
		return nil, fmt.Errorf("failed to start QEMU: %w", err)
	}
	bootCtx, bootCancel := context.WithTimeout(ctx, b.cfg.bootTimeout)
	defer bootCancel()
	// The stack dials the NIC's socket before the guest is configured:
	// QEMU drops the frames it gets while nobody is connected.
	nc, err := g.vm.DialNet(bootCtx)
	if err != nil {
		return nil, fmt.Errorf("failed to reach the NIC's socket: %w", err)
	}
	g.wg.Go(func() { _ = st.Serve(lctx, nc) })
	conn, err := g.vm.DialAgent(bootCtx)
	if err != nil {
		return nil, fmt.Errorf("failed to reach the agent socket: %w%s", err, g.consoleTail())
	}
	if err := handshake(bootCtx, conn); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("%w%s", err, g.consoleTail())
	}
	g.bootTime = time.Since(start)
	g.conn = hostconn.New(conn, hostconn.Options{})
	return g, nil
}

// handshake reads the guest's Hello and answers HelloAck and the Start of
// an idle main process with the guest's network.
func handshake(ctx context.Context, conn net.Conn) error {
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(d)
	}
	f, err := protocol.ReadFrame(conn)
	if err != nil {
		return fmt.Errorf("no Hello from the guest: %w", err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	var h protocol.Hello
	if f.Type != protocol.TypeHello {
		return fmt.Errorf("the guest's first frame is %v, not Hello", f.Type)
	}
	if err := protocol.Decode(f, &h); err != nil {
		return err
	}
	version, err := protocol.Negotiate(protocol.Version, h.Version)
	if err != nil {
		return err
	}
	ack, err := protocol.Encode(0, protocol.TypeHelloAck, protocol.HelloAck{Version: version})
	if err != nil {
		return err
	}
	start, err := protocol.Encode(0, protocol.TypeStart, protocol.Start{
		Argv: idleEntry, Env: guestEnv, Dir: "/", Hostname: "netbench", Network: netstack.GuestNetwork(),
	})
	if err != nil {
		return err
	}
	return errors.Join(protocol.WriteFrame(conn, ack), protocol.WriteFrame(conn, start))
}

// run execs the tool in the guest and returns its stdout; a non-zero exit
// is an error carrying its stderr.
func (g *guest) run(ctx context.Context, args ...string) ([]byte, error) {
	return g.exec(ctx, append([]string{toolPath}, args...)...)
}

// exec runs argv in the guest and returns its stdout; a non-zero exit is
// an error carrying its stderr.
func (g *guest) exec(ctx context.Context, argv ...string) ([]byte, error) {
	p, err := g.conn.Exec(ctx, protocol.Exec{Argv: argv, Env: guestEnv})
	if err != nil {
		return nil, err
	}
	defer func() { _ = p.Close() }()
	stop := context.AfterFunc(ctx, func() { _ = p.Close() })
	defer stop()
	var stderr bytes.Buffer
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(&stderr, p.Stderr)
		close(done)
	}()
	stdout, _ := io.ReadAll(p.Stdout)
	<-done
	exit, err := p.Wait()
	if err == nil && exit.Code != 0 {
		err = fmt.Errorf("exit code %d", exit.Code)
	}
	if err != nil {
		return stdout, fmt.Errorf("guest: %v: %w: %s", argv, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout, nil
}

// uptime reads the guest's /proc/uptime (its boot-time clock, 10 ms
// resolution) and returns it with the host's time halfway through the
// exec, so that the two clocks can be compared over a run.
func (g *guest) uptime(ctx context.Context) (float64, time.Time, error) {
	before := time.Now()
	out, err := g.exec(ctx, "cat", "/proc/uptime")
	if err != nil {
		return 0, time.Time{}, err
	}
	mid := before.Add(time.Since(before) / 2)
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return 0, time.Time{}, fmt.Errorf("the guest's /proc/uptime reads %q", out)
	}
	up, err := strconv.ParseFloat(f[0], 64)
	return up, mid, err
}

// startSink starts the tool's sink on guestSinkPort in the guest for n
// transfers and returns once it listens; each transfer it reports is sent
// on the returned channel, which is closed when the sink ends.
func (g *guest) startSink(ctx context.Context, n int) (<-chan guestTransfer, error) {
	p, err := g.conn.Exec(ctx, protocol.Exec{
		Argv: []string{toolPath, "sink", "0.0.0.0:" + strconv.Itoa(guestSinkPort), strconv.Itoa(n)}, Env: guestEnv,
	})
	if err != nil {
		return nil, err
	}
	go func() { _, _ = io.Copy(io.Discard, p.Stderr) }()
	lines := json.NewDecoder(p.Stdout)
	listening := make([]byte, 0, 64)
	for {
		var c [1]byte
		if _, err := io.ReadFull(p.Stdout, c[:]); err != nil {
			_ = p.Close()
			return nil, fmt.Errorf("the guest's sink did not start: %w", err)
		}
		if c[0] == '\n' {
			break
		}
		listening = append(listening, c[0])
	}
	if !bytes.HasPrefix(listening, []byte("listening ")) {
		_ = p.Close()
		return nil, fmt.Errorf("the guest's sink said %q", listening)
	}
	out := make(chan guestTransfer, n)
	go func() {
		defer close(out)
		defer func() { _ = p.Close() }()
		for {
			var t guestTransfer
			if err := lines.Decode(&t.Transfer); err != nil {
				if !errors.Is(err, io.EOF) {
					t.err = err
					out <- t
				}
				return
			}
			out <- t
		}
	}()
	return out, nil
}

// close kills the VM and stops the stack.
func (g *guest) close() {
	if g.conn != nil {
		_ = g.conn.Close()
	}
	if g.vm != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = g.vm.Kill(ctx)
		cancel()
		_ = g.vm.Close()
	}
	g.cancel()
	g.stack.Close()
	g.wg.Wait()
}

// consoleTail is the end of the VM's console log, for errors.
func (g *guest) consoleTail() string {
	if g.vm == nil {
		return ""
	}
	b, err := os.ReadFile(g.vm.Paths().Console)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return "; console:\n" + string(b)
}
