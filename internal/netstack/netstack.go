package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/netpolicy"
)

// The guest's subnet. Every sandbox has the same: each has its own stack.
var (
	// DefaultSubnet is the guest's subnet.
	DefaultSubnet = netip.MustParsePrefix("10.0.2.0/24")
	// DefaultGateway is the guest's default route. It stands for the node:
	// a flow to it is re-originated to 127.0.0.1 (and so needs a rule
	// allowing 127.0.0.1; the "public" profile denies loopback).
	DefaultGateway = netip.MustParseAddr("10.0.2.2")
	// DefaultResolver is the stack's DNS resolver.
	DefaultResolver = netip.MustParseAddr("10.0.2.3")
	// DefaultGuest is the guest's address.
	DefaultGuest = netip.MustParseAddr("10.0.2.15")
	// GatewayMAC is the stack's link address.
	GatewayMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x02}
	// GuestMAC is the guest NIC's link address. Fixed, so that a stack
	// made after an agent restart meets the guest's ARP cache as it was.
	GuestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
)

// GuestNetwork is the guest's side of the stack's addresses, for the
// guest's Start message: its NIC (by GuestMAC), address, gateway, resolver
// and MTU.
func GuestNetwork() *protocol.Network {
	return &protocol.Network{
		MAC:         GuestMAC.String(),
		Address:     netip.PrefixFrom(DefaultGuest, DefaultSubnet.Bits()).String(),
		Gateway:     DefaultGateway.String(),
		Nameservers: []string{DefaultResolver.String()},
		MTU:         DefaultMTU,
	}
}

// NodeAddrs are the node's own addresses, for the egress policy's group
// Host (netpolicy.HostInfo.Addrs).
func NodeAddrs() []netip.Addr {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range ifAddrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}

// nodeLoopback is what the gateway address stands for.
var nodeLoopback = netip.MustParseAddr("127.0.0.1")

const (
	nicID = 1
	// DefaultMTU is the guest link's MTU.
	DefaultMTU = 1500
	// linkQueue bounds the frames waiting to go to the guest; the stack
	// drops beyond it (TCP then retransmits).
	linkQueue = 4096
	// maxPendingHandshakes bounds guest TCP connections being dialled on
	// the host at once.
	maxPendingHandshakes = 1024
	// dialTimeout bounds a host dial for a guest connection.
	dialTimeout = 10 * time.Second
	// udpIdle ends a UDP flow after this long without a datagram.
	udpIdle = 60 * time.Second
)

// Config configures a sandbox's network.
type Config struct {
	// Policy decides every flow and every DNS name. Required.
	Policy *netpolicy.Policy
	// Upstreams are the nameservers the resolver asks, "IP:port", in order.
	// Empty: every query fails (SERVFAIL).
	Upstreams []string
	// QueryTimeout bounds one upstream query; 0 means 5 s.
	QueryTimeout time.Duration
	// MTU of the guest link; 0 means DefaultMTU.
	MTU uint32
	// Dial opens the host side of an allowed flow; nil means net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Log receives the stack's operational messages.
	Log logr.Logger
	// OnDenial, if set, is called after each denial is recorded in
	// Net.Denials; it must not block.
	OnDenial func()
}

// Stats counts what the stack did. Read with Snapshot.
type Stats struct {
	TCPAllowed, UDPAllowed, DialFailures atomic.Uint64
	DNSQueries, DNSFailures              atomic.Uint64
	// BytesOut are bytes the guest sent to the host side of its flows,
	// BytesIn bytes it received from them (published ports included).
	BytesOut, BytesIn atomic.Uint64
}

// Net is one sandbox's network stack.
type Net struct {
	cfg   Config
	s     *stack.Stack
	ep    *channel.Endpoint
	dns   *dnsServer
	ctx   context.Context // ends with Close: flows and dials stop
	close context.CancelFunc

	// Names are the names the resolver answered, for domain rules.
	Names *netpolicy.Names
	// Denials are the flows and names the policy refused.
	Denials *netpolicy.Denials
	// Stats counts flows, queries and bytes.
	Stats Stats

	interceptor Interceptor
}

// Interceptor takes over allowed guest TCP connections instead of a plain
// splice (the secrets proxy, internal/egressproxy).
type Interceptor interface {
	// Intercepts says whether connections to dst (the node-side target)
	// go to Handle.
	Intercepts(dst netip.AddrPort) bool
	// Handle serves one guest connection to dst until it ends.
	Handle(ctx context.Context, guest net.Conn, dst netip.AddrPort) error
}

// recordDenial records a denial and tells Config.OnDenial.
func (n *Net) recordDenial(f netpolicy.Flow, d netpolicy.Decision) {
	n.Denials.Record(f, d)
	if n.cfg.OnDenial != nil {
		n.cfg.OnDenial()
	}
}

// RecordDenial records a denial found outside the stack (the secrets
// proxy's blocked placeholders) with the stack's own.
func (n *Net) RecordDenial(f netpolicy.Flow, d netpolicy.Decision) { n.recordDenial(f, d) }

// SetInterceptor hands allowed TCP connections that i intercepts to i.
// Call it before Serve.
func (n *Net) SetInterceptor(i Interceptor) { n.interceptor = i }

// Dial is the stack's dialler of node-side connections (Config.Dial).
func (n *Net) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	return n.cfg.Dial(ctx, network, address)
}

// New makes the stack and its resolver. Serve connects it to the VM.
func New(cfg Config) (*Net, error) {
	if cfg.Policy == nil {
		return nil, errors.New("netstack: no policy")
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.QueryTimeout == 0 {
		cfg.QueryTimeout = 5 * time.Second
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Net{cfg: cfg, ctx: ctx, close: cancel, Names: netpolicy.NewNames(), Denials: netpolicy.NewDenials()}
	n.s = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	fail := func(what string, err tcpip.Error) (*Net, error) {
		n.Close()
		return nil, fmt.Errorf("netstack: %s: %s", what, err)
	}
	// SACK and buffers beyond the 1 MiB default: throughput under a slow
	// (emulated) guest.
	sack := tcpip.TCPSACKEnabled(true)
	if err := n.s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return fail("enabling SACK", err)
	}
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: 8 << 20}
	if err := n.s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return fail("setting the receive buffer", err)
	}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: 8 << 20}
	if err := n.s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
		return fail("setting the send buffer", err)
	}
	n.ep = channel.New(linkQueue, cfg.MTU, tcpip.LinkAddress(GatewayMAC))
	if err := n.s.CreateNIC(nicID, ethernet.New(n.ep)); err != nil {
		return fail("creating the NIC", err)
	}
	for _, a := range []netip.Addr{DefaultGateway, DefaultResolver} {
		if err := n.s.AddProtocolAddress(nicID, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(a), PrefixLen: DefaultSubnet.Bits()}},
			stack.AddressProperties{}); err != nil {
			return fail("adding "+a.String(), err)
		}
	}
	// Promiscuous: take packets for any destination (the guest sends all
	// of them to its gateway); spoofing: answer as that destination.
	if err := n.s.SetPromiscuousMode(nicID, true); err != nil {
		return fail("setting promiscuous mode", err)
	}
	if err := n.s.SetSpoofing(nicID, true); err != nil {
		return fail("enabling spoofing", err)
	}
	sub, _ := tcpip.NewSubnet(tcpAddr(DefaultSubnet.Masked().Addr()), tcpip.MaskFromBytes(net.CIDRMask(DefaultSubnet.Bits(), 32)))
	n.s.SetRouteTable([]tcpip.Route{{Destination: sub, NIC: nicID}})
	n.s.SetTransportProtocolHandler(tcp.ProtocolNumber, tcp.NewForwarder(n.s, 0, maxPendingHandshakes, n.forwardTCP).HandlePacket)
	n.s.SetTransportProtocolHandler(udp.ProtocolNumber, udp.NewForwarder(n.s, n.forwardUDP).HandlePacket)
	d, err := n.startDNS()
	if err != nil {
		n.Close()
		return nil, err
	}
	n.dns = d
	return n, nil
}

// Close stops the resolver, every flow and the stack.
func (n *Net) Close() {
	n.close()
	if n.dns != nil {
		n.dns.close()
	}
	n.ep.Close()
	n.s.Close()
	n.s.Wait()
}

func tcpAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }

func netipAddr(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip.Unmap()
}

// hostTarget is where a flow the guest sent to dst goes on the node: the
// gateway stands for the node's loopback.
func hostTarget(dst netip.Addr) netip.Addr {
	if dst == DefaultGateway {
		return nodeLoopback
	}
	return dst
}
