package nodeagent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"github.com/miekg/dns"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/netpolicy"
	"github.com/microvm-dev/sandbox-operator/internal/netstack"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// A sandbox's network: the guest's NIC is QEMU's stream netdev, whose
// socket QEMU serves in the run directory; the agent runs one userspace
// stack per VM (internal/netstack) and dials that socket, again after each
// disconnection and after its own restart (a re-adopted VM gets a new
// stack with the same addresses). Published ports are node listeners that
// the stack dials into the guest.

// resolvConf is where the node's resolvers are read when a sandbox names
// none.
const resolvConf = "/etc/resolv.conf"

// networkEnabled says whether the sandbox's VM gets a NIC (the default).
func networkEnabled(sbx *sandboxv1alpha1.Sandbox) bool {
	n := sbx.Spec.Network
	return n == nil || n.Enabled == nil || *n.Enabled
}

// guestNetwork is the guest's side of the network, for its Start message.
func guestNetwork() *protocol.Network {
	return &protocol.Network{
		MAC:         netstack.GuestMAC.String(),
		Address:     netip.PrefixFrom(netstack.DefaultGuest, netstack.DefaultSubnet.Bits()).String(),
		Gateway:     netstack.DefaultGateway.String(),
		Nameservers: []string{netstack.DefaultResolver.String()},
		MTU:         netstack.DefaultMTU,
	}
}

// vmNetworkDevice is the VM's NIC.
func vmNetworkDevice() *vmm.NetworkDevice {
	return &vmm.NetworkDevice{MAC: netstack.GuestMAC.String()}
}

// nameservers are the upstreams of a sandbox's resolver: spec.network.dns
// or the node's, as "IP:port".
func nameservers(spec *sandboxv1alpha1.NetworkSpec, node []string) []string {
	if spec == nil || spec.DNS == nil || len(spec.DNS.Nameservers) == 0 {
		return node
	}
	out := make([]string, 0, len(spec.DNS.Nameservers))
	for _, ns := range spec.DNS.Nameservers {
		if ap, err := netip.ParseAddrPort(ns); err == nil {
			out = append(out, ap.String())
		} else if a, err := netip.ParseAddr(strings.Trim(ns, "[]")); err == nil {
			out = append(out, netip.AddrPortFrom(a, 53).String())
		}
	}
	return out
}

// nodeResolvers reads the node's nameservers from resolv.conf.
func nodeResolvers(path string) []string {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		out = append(out, net.JoinHostPort(s, cc.Port))
	}
	return out
}

// nodeAddrs are the node's own addresses (the policy's group Host).
func nodeAddrs() []netip.Addr {
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

// vmNet is the network of one VM on the node.
type vmNet struct {
	stack *netstack.Net
	// ports are the published ports listening; portErrors say why the
	// others are not.
	ports      []sandboxv1alpha1.PortStatus
	portErrors []string

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	listeners []net.Listener
}

// startNetwork makes h's stack, links it to the VM and opens the published
// ports. A policy that does not compile is an error (admission checks the
// same rules, so it means an agent older than the API).
func (r *SandboxReconciler) startNetwork(log logr.Logger, sbx *sandboxv1alpha1.Sandbox, h *vmHandle) error {
	policy, err := netpolicy.Compile(sbx.Spec.Network, netpolicy.HostInfo{Addrs: r.hostAddrs, Resolver: netstack.DefaultResolver})
	if err != nil {
		return err
	}
	cfg := netstack.Config{Policy: policy, Upstreams: nameservers(sbx.Spec.Network, r.nodeResolvers), Log: log.WithName("network")}
	if spec := sbx.Spec.Network; spec != nil && spec.DNS != nil && spec.DNS.QueryTimeoutMillis > 0 {
		cfg.QueryTimeout = time.Duration(spec.DNS.QueryTimeoutMillis) * time.Millisecond
	}
	st, err := netstack.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(r.ctx)
	vn := &vmNet{stack: st, cancel: cancel}
	vn.wg.Go(func() { vn.link(ctx, log, h.vm) })
	if spec := sbx.Spec.Network; spec != nil {
		for _, p := range spec.Ports {
			vn.publish(p)
		}
	}
	h.net = vn
	return nil
}

// link keeps the stack connected to the VM's NIC until ctx ends or the VM
// exits.
func (vn *vmNet) link(ctx context.Context, log logr.Logger, vm vmm.VM) {
	for {
		conn, err := vm.DialNet(ctx)
		if err == nil {
			err = vn.stack.Serve(ctx, conn)
		}
		select {
		case <-ctx.Done():
			return
		case <-vm.Done():
			return
		case <-time.After(redialPause):
		}
		if err != nil {
			log.V(4).Info("Reconnecting to the VM's network device", "error", err.Error())
		}
	}
}

// publish opens a published port on the node.
func (vn *vmNet) publish(p sandboxv1alpha1.PublishedPort) {
	proto := p.Protocol
	if proto == "" {
		proto = sandboxv1alpha1.ProtocolTCP
	}
	hostIP := p.HostIP
	if hostIP == "" {
		hostIP = "127.0.0.1"
	}
	if proto != sandboxv1alpha1.ProtocolTCP {
		vn.portErrors = append(vn.portErrors, fmt.Sprintf("%s port %d: only TCP ports are published so far", proto, p.GuestPort))
		return
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(hostIP, strconv.Itoa(int(p.HostPort))))
	if err != nil {
		vn.portErrors = append(vn.portErrors, fmt.Sprintf("port %d: %v", p.GuestPort, err))
		return
	}
	vn.listeners = append(vn.listeners, ln)
	vn.ports = append(vn.ports, sandboxv1alpha1.PortStatus{GuestPort: p.GuestPort, Protocol: proto, HostIP: hostIP, HostPort: p.HostPort})
	vn.wg.Go(func() { _ = vn.stack.Publish(ln, uint16(p.GuestPort)) })
}

// close stops the ports, the link and the stack.
func (vn *vmNet) close() {
	vn.cancel()
	for _, ln := range vn.listeners {
		_ = ln.Close()
	}
	vn.stack.Close()
	vn.wg.Wait()
}

// observeNetwork reports the published ports and the NetworkReady
// condition while the VM runs; both go with its exit.
func observeNetwork(sbx *sandboxv1alpha1.Sandbox, st *sandboxState, h *vmHandle, running bool) {
	if !running {
		st.report.Ports = nil
		return
	}
	if h.net == nil {
		st.report.Ports = nil
		if !networkEnabled(sbx) {
			setCond(st, sbx, sandboxv1alpha1.ConditionNetworkReady, metav1.ConditionTrue, sandboxv1alpha1.ReasonNetworkDisabled,
				"network.enabled is false: the guest has no network interface")
		}
		return
	}
	st.report.Ports = h.net.ports
	if len(h.net.portErrors) > 0 {
		setCond(st, sbx, sandboxv1alpha1.ConditionNetworkReady, metav1.ConditionFalse, sandboxv1alpha1.ReasonPortUnavailable,
			trim("Published ports not open: "+strings.Join(h.net.portErrors, "; ")))
		return
	}
	msg := "The guest's network is linked to the node's stack"
	if len(h.net.ports) > 0 {
		var eps []string
		for _, p := range h.net.ports {
			eps = append(eps, fmt.Sprintf("%s:%d→%d/%s", p.HostIP, p.HostPort, p.GuestPort, p.Protocol))
		}
		msg += "; published: " + strings.Join(eps, ", ")
	}
	setCond(st, sbx, sandboxv1alpha1.ConditionNetworkReady, metav1.ConditionTrue, sandboxv1alpha1.ReasonNetworkConfigured, trim(msg))
}
