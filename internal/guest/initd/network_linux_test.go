package initd

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// testNetns is a throwaway network namespace: run executes a function on
// an OS thread of its own inside it.
type testNetns struct{ fd int }

// newNetns creates a network namespace for the test, skipping it where
// that is not allowed (it needs root: CAP_SYS_ADMIN and CAP_NET_ADMIN).
func newNetns(t *testing.T) testNetns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("configuring interfaces needs a network namespace of its own, which needs root")
	}
	fd := make(chan int, 1)
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, which alone is in the new namespace,
		// ends with this goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		f, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		fd <- f
	}()
	select {
	case err := <-errc:
		t.Skipf("cannot create a network namespace: %v", err)
	case f := <-fd:
		t.Cleanup(func() { _ = unix.Close(f) })
		return testNetns{fd: f}
	}
	panic("unreachable")
}

// run runs f in the namespace, on a thread that ends with it.
func (n testNetns) run(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, as in newNetns
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

func TestBringUpLoopbackMakes127001Work(t *testing.T) {
	g := NewWithT(t)
	ns := newNetns(t)
	var upBefore bool
	g.Expect(ns.run(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		upBefore = lo.Attrs().Flags&net.FlagUp != 0
		if err := bringUpLoopback(); err != nil {
			return err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer func() { _ = ln.Close() }()
		c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})).To(Succeed())
	g.Expect(upBefore).To(BeFalse(), "a new namespace's lo starts down, like a guest's")
}

func TestConfigureNetworkInANetworkNamespace(t *testing.T) {
	g := NewWithT(t)
	ns := newNetns(t)
	n := slirp
	n.MTU = 9000
	cfg, err := parseNetwork(n)
	g.Expect(err).NotTo(HaveOccurred())
	noList := filepath.Join(t.TempDir(), "modules.network")

	// The NIC appears while configureNetwork waits for it, as virtio_net's
	// probe makes it appear in the guest (a veth here).
	created := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		created <- ns.run(func() error {
			return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", HardwareAddr: cfg.mac}, PeerName: "peer0"})
		})
	}()
	err = ns.run(func() error { return configureNetwork(cfg, noList, 5*time.Second, t.Logf) })
	if err := <-created; errors.Is(err, unix.EOPNOTSUPP) {
		t.Skipf("this kernel has no veth: %v", err)
	}
	g.Expect(err).NotTo(HaveOccurred())

	var (
		mtu    int
		up     bool
		addrs  []string
		routes []netlink.Route
	)
	// Twice: a second configuration of the same link changes nothing.
	for range 2 {
		g.Expect(ns.run(func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			mtu, up = l.Attrs().MTU, l.Attrs().Flags&net.FlagUp != 0
			as, err := netlink.AddrList(l, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			addrs = nil
			for _, a := range as {
				addrs = append(addrs, a.IPNet.String())
			}
			routes, err = netlink.RouteList(l, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			return configureNetwork(cfg, noList, time.Second, t.Logf)
		})).To(Succeed())
		g.Expect(mtu).To(Equal(9000))
		g.Expect(up).To(BeTrue())
		g.Expect(addrs).To(Equal([]string{"10.0.2.15/24"}))
		var defaults []string
		for _, r := range routes {
			if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
				defaults = append(defaults, r.Gw.String())
			}
		}
		g.Expect(defaults).To(Equal([]string{"10.0.2.2"}), "one default route via the gateway")
	}

	// No NIC with that MAC: a bounded wait and an error that says what is
	// there and that the initramfs listed no network modules.
	other := cfg
	other.mac = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x99}
	err = ns.run(func() error { return configureNetwork(other, noList, 50*time.Millisecond, t.Logf) })
	g.Expect(err).To(MatchError(And(
		ContainSubstring("no network interface with MAC 52:54:00:00:00:99 after 50ms"),
		ContainSubstring("eth0 52:54:00:12:34:56"),
		ContainSubstring("the initramfs has no network modules"))))

	// A module list naming a module that is not there fails the load.
	list := filepath.Join(t.TempDir(), "modules.network")
	g.Expect(os.WriteFile(list, []byte("/nonexistent/virtio_net.ko\n"), 0o644)).To(Succeed())
	err = ns.run(func() error { return configureNetwork(cfg, list, time.Second, t.Logf) })
	g.Expect(err).To(MatchError(ContainSubstring("loading module")))
}
