package netstack

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/miekg/dns"
	. "github.com/onsi/gomega"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"k8s.io/utils/ptr"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/netpolicy"
)

// These tests play the guest with a second gVisor stack at the other end
// of a socketpair that carries QEMU's stream framing: the node side is the
// real package, the guest a stand-in for the VM's kernel (the VM tests in
// internal/nodeagent and test/e2e use a real one). All traffic stays on
// 127.0.0.1.

// testGuest is the guest's stack, linked to a Net.
type testGuest struct {
	s   *stack.Stack
	ctx context.Context
}

func link(t *testing.T, n *Net) (*testGuest, func()) {
	t.Helper()
	g := NewWithT(t)
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	g.Expect(err).NotTo(HaveOccurred())
	host, err := net.FileConn(os.NewFile(uintptr(fds[0]), "host"))
	g.Expect(err).NotTo(HaveOccurred())
	vm, err := net.FileConn(os.NewFile(uintptr(fds[1]), "vm"))
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); _ = n.Serve(ctx, host) }()

	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	ep := channel.New(256, DefaultMTU, tcpip.LinkAddress(GuestMAC))
	g.Expect(s.CreateNIC(1, ethernet.New(ep))).To(BeNil())
	g.Expect(s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(DefaultGuest), PrefixLen: 24}}, stack.AddressProperties{})).To(BeNil())
	anywhere, _ := tcpip.NewSubnet(tcpip.AddrFrom4([4]byte{}), tcpip.MaskFromBytes(make([]byte, 4)))
	s.SetRouteTable([]tcpip.Route{{Destination: anywhere, Gateway: tcpAddr(DefaultGateway), NIC: 1}})
	pumped := make(chan struct{})
	go func() { defer close(pumped); _ = pump(ctx, vm, ep) }()
	return &testGuest{s: s, ctx: ctx}, func() {
		cancel()
		<-served
		<-pumped
		s.Close()
		s.Wait()
	}
}

func (tg *testGuest) dial(addr netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(tg.ctx, 5*time.Second)
	defer cancel()
	return gonet.DialContextTCP(ctx, tg.s, tcpip.FullAddress{NIC: 1, Addr: tcpAddr(addr.Addr()), Port: addr.Port()}, ipv4.ProtocolNumber)
}

// get sends an HTTP/1.0 GET over a guest connection to addr.
func (tg *testGuest) get(addr netip.AddrPort) (string, error) {
	c, err := tg.dial(addr)
	if err != nil {
		return "", err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// lookup asks the stack's resolver for name's A records over UDP.
func (tg *testGuest) lookup(name string) (*dns.Msg, error) {
	ra := tcpip.FullAddress{NIC: 1, Addr: tcpAddr(DefaultResolver), Port: 53}
	c, err := gonet.DialUDP(tg.s, nil, &ra, ipv4.ProtocolNumber)
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	conn := &dns.Conn{Conn: c}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	if err := conn.WriteMsg(q); err != nil {
		return nil, err
	}
	return conn.ReadMsg()
}

func newNet(t *testing.T, spec *sandboxv1alpha1.NetworkSpec, upstreams ...string) *Net {
	t.Helper()
	p, err := netpolicy.Compile(spec, netpolicy.HostInfo{Resolver: DefaultResolver})
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{Policy: p, Upstreams: upstreams, QueryTimeout: 2 * time.Second, Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

func httpServer(t *testing.T, body string) netip.AddrPort {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) }))
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))
}

func allow(dest sandboxv1alpha1.NetworkDestination) sandboxv1alpha1.NetworkRule {
	return sandboxv1alpha1.NetworkRule{Action: sandboxv1alpha1.PolicyAllow, Destination: dest}
}

func TestTheGuestReachesTheNodeAtTheGatewayOnlyWhenThePolicyAllowsLoopback(t *testing.T) {
	g := NewWithT(t)
	srv := httpServer(t, "hello from the node")
	atGateway := netip.AddrPortFrom(DefaultGateway, srv.Port())

	// The default ("public") profile: loopback is denied, with a reason.
	n := newNet(t, nil)
	guest, unlink := link(t, n)
	_, err := guest.get(atGateway)
	g.Expect(err).To(MatchError(ContainSubstring("refused")))
	snap := n.Denials.Snapshot()
	g.Expect(snap.Total).To(Equal(uint64(1)))
	g.Expect(snap.Recent[0].Dst).To(Equal(netip.AddrPortFrom(nodeLoopback, srv.Port())), "judged as the node's loopback")
	g.Expect(snap.Recent[0].Reason).To(ContainSubstring("127.0.0.1"))
	g.Expect(n.Stats.TCPAllowed.Load()).To(BeZero())
	unlink()

	// A rule allowing 127.0.0.1: the connection goes through.
	n = newNet(t, &sandboxv1alpha1.NetworkSpec{Policy: &sandboxv1alpha1.NetworkPolicy{
		DefaultEgress: sandboxv1alpha1.PolicyDeny,
		Rules:         []sandboxv1alpha1.NetworkRule{allow(sandboxv1alpha1.NetworkDestination{CIDR: "127.0.0.1/32"})}}})
	guest, unlink = link(t, n)
	defer unlink()
	body, err := guest.get(atGateway)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(body).To(HaveSuffix("hello from the node"))
	g.Expect(n.Stats.TCPAllowed.Load()).To(Equal(uint64(1)))
	// Counted when each direction ends.
	g.Eventually(n.Stats.BytesOut.Load).Should(BeNumerically(">=", len("GET / HTTP/1.0\r\n\r\n")))
	g.Eventually(n.Stats.BytesIn.Load).Should(BeNumerically(">", len("hello from the node")))
	g.Expect(n.Denials.Snapshot().Total).To(BeZero())

	// A port nobody listens on: a reset, counted as a dial failure.
	free, _ := net.Listen("tcp", "127.0.0.1:0")
	port := free.Addr().(*net.TCPAddr).Port
	_ = free.Close()
	_, err = guest.get(netip.AddrPortFrom(DefaultGateway, uint16(port)))
	g.Expect(err).To(MatchError(ContainSubstring("refused")))
	g.Expect(n.Stats.DialFailures.Load()).To(Equal(uint64(1)))
}

// upstreamDNS serves A records from answers on 127.0.0.1 (UDP).
func upstreamDNS(t *testing.T, answers map[string]string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		if ip, ok := answers[strings.TrimSuffix(q.Name, ".")]; ok {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.ParseIP(ip)})
		} else {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func answerAddrs(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func TestDomainRulesDecideByTheNamesTheResolverAnswered(t *testing.T) {
	g := NewWithT(t)
	srv := httpServer(t, "allowed by name")
	// Every name points at the gateway, i.e. the node's loopback: private,
	// so also a test of the rebinding protection.
	up := upstreamDNS(t, map[string]string{"allowed.test": DefaultGateway.String(), "denied.test": DefaultGateway.String(),
		"other.test": DefaultGateway.String(), "public.test": "93.184.216.34"})
	n := newNet(t, &sandboxv1alpha1.NetworkSpec{Policy: &sandboxv1alpha1.NetworkPolicy{
		DefaultEgress: sandboxv1alpha1.PolicyDeny,
		Rules: []sandboxv1alpha1.NetworkRule{
			{Action: sandboxv1alpha1.PolicyDeny, Destination: sandboxv1alpha1.NetworkDestination{Domain: "denied.test"}},
			allow(sandboxv1alpha1.NetworkDestination{Domain: "allowed.test"}),
		}}, DNS: &sandboxv1alpha1.DNSConfig{RebindProtection: ptr.To(true)}}, up)
	guest, unlink := link(t, n)
	defer unlink()
	atGateway := netip.AddrPortFrom(DefaultGateway, srv.Port())

	// A name no rule allows is answered, but the rebinding protection drops its private address; the flow is denied.
	m, err := guest.lookup("other.test")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(m.Rcode).To(Equal(dns.RcodeSuccess))
	g.Expect(answerAddrs(m)).To(BeEmpty())
	_, err = guest.get(atGateway)
	g.Expect(err).To(MatchError(ContainSubstring("refused")))

	// A denied name gets NXDOMAIN.
	m, err = guest.lookup("denied.test")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(m.Rcode).To(Equal(dns.RcodeNameError))

	// An allowed name resolves, and the flow to its address is allowed by the domain rule.
	m, err = guest.lookup("allowed.test")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(answerAddrs(m)).To(Equal([]string{DefaultGateway.String()}))
	body, err := guest.get(atGateway)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(body).To(HaveSuffix("allowed by name"))

	// A public answer passes the filter untouched.
	m, err = guest.lookup("public.test")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(answerAddrs(m)).To(Equal([]string{"93.184.216.34"}))

	snap := n.Denials.Snapshot()
	g.Expect(snap.ByClass).To(HaveKeyWithValue(ClassRebind, uint64(1)))
	g.Expect(snap.ByClass).To(HaveKeyWithValue(ClassDNS, uint64(1)))
	g.Expect(snap.ByClass).To(HaveKeyWithValue(netpolicy.ClassDefault, uint64(1)))
	g.Expect(n.Stats.DNSQueries.Load()).To(Equal(uint64(4)))
}

func TestTheResolverFailsClearlyWithoutAnUpstream(t *testing.T) {
	g := NewWithT(t)
	dead, _ := net.ListenPacket("udp", "127.0.0.1:0")
	addr := dead.LocalAddr().String()
	_ = dead.Close()
	n := newNet(t, nil, addr)
	n.cfg.QueryTimeout = 300 * time.Millisecond
	guest, unlink := link(t, n)
	defer unlink()
	m, err := guest.lookup("anything.test")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(m.Rcode).To(Equal(dns.RcodeServerFailure))
	g.Expect(n.Stats.DNSFailures.Load()).To(Equal(uint64(1)))
}

func TestAPublishedPortReachesTheGuestAndSurvivesANewLink(t *testing.T) {
	g := NewWithT(t)
	n := newNet(t, nil)
	guest, unlink := link(t, n)
	ln, err := gonet.ListenTCP(guest.s, tcpip.FullAddress{NIC: 1, Addr: tcpAddr(DefaultGuest), Port: 8080}, ipv4.ProtocolNumber)
	g.Expect(err).NotTo(HaveOccurred())
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				line := make([]byte, 64)
				k, _ := c.Read(line)
				_, _ = fmt.Fprintf(c, "guest got %s", line[:k])
			}()
		}
	}()
	host, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	go func() { _ = n.Publish(host, 8080) }()
	ask := func() (string, error) {
		c, err := net.DialTimeout("tcp", host.Addr().String(), 5*time.Second)
		if err != nil {
			return "", err
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "ping")
		b, err := io.ReadAll(c)
		return string(b), err
	}
	g.Expect(ask()).To(Equal("guest got ping"))

	// The link breaks (the agent restarts) and comes back on a new
	// connection: the same addresses, the port works again.
	_ = ln.Close()
	unlink()
	guest, unlink = link(t, n)
	defer unlink()
	ln, err = gonet.ListenTCP(guest.s, tcpip.FullAddress{NIC: 1, Addr: tcpAddr(DefaultGuest), Port: 8080}, ipv4.ProtocolNumber)
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = ln.Close() }()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.WriteString(c, "again")
			_ = c.Close()
		}
	}()
	g.Eventually(ask).WithTimeout(10 * time.Second).Should(Equal("again"))
	_ = host.Close()
}

func TestAPublishedUDPPortReachesTheGuestAndAnswersEachClient(t *testing.T) {
	g := NewWithT(t)
	n := newNet(t, nil)
	guest, unlink := link(t, n)
	defer unlink()
	echo, err := gonet.DialUDP(guest.s, &tcpip.FullAddress{NIC: 1, Addr: tcpAddr(DefaultGuest), Port: 5353}, nil, ipv4.ProtocolNumber)
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = echo.Close() }()
	go func() {
		buf := make([]byte, 1500)
		for {
			k, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = echo.WriteTo(append([]byte("guest got "), buf[:k]...), from)
		}
	}()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	go func() { _ = n.PublishUDP(pc, 5353) }()
	defer func() { _ = pc.Close() }()
	for _, msg := range []string{"one", "two"} {
		c, err := net.Dial("udp", pc.LocalAddr().String())
		g.Expect(err).NotTo(HaveOccurred())
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Write([]byte(msg))
		g.Expect(err).NotTo(HaveOccurred())
		buf := make([]byte, 64)
		k, err := c.Read(buf)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(string(buf[:k])).To(Equal("guest got " + msg))
		_ = c.Close()
	}
}
