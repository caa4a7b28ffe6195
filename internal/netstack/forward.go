package netstack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/microvm-dev/sandbox-operator/internal/netpolicy"
)

// decide asks the policy about a guest flow to dst:port. The policy sees
// the node-side target (the gateway is the node's loopback) and the names
// the resolver gave for the address the guest dialled.
func (n *Net) decide(proto netpolicy.Proto, dst netip.Addr, port uint16) (netip.AddrPort, netpolicy.Decision) {
	target := netip.AddrPortFrom(hostTarget(dst), port)
	f := netpolicy.Flow{Proto: proto, Dst: target, Names: n.Names.Lookup(dst)}
	d := n.cfg.Policy.Decide(f)
	if !d.Allow {
		n.recordDenial(f, d)
		n.cfg.Log.V(4).Info("Denying a guest flow", "proto", proto.String(), "destination", target.String(), "reason", d.Reason)
	}
	return target, d
}

// forwardTCP handles a guest's SYN to anywhere but the stack's own
// listeners.
func (n *Net) forwardTCP(r *tcp.ForwarderRequest) {
	id := r.ID() // Local*: what the guest dialled; Remote*: the guest
	target, d := n.decide(netpolicy.ProtoTCP, netipAddr(id.LocalAddress), id.LocalPort)
	if !d.Allow {
		r.Complete(true) // a reset: the guest's connect fails at once
		return
	}
	if i := n.interceptor; i != nil && i.Intercepts(target) {
		// The interceptor dials the destination itself (and answers the
		// guest when it cannot).
		var wq waiter.Queue
		ep, terr := r.CreateEndpoint(&wq)
		r.Complete(false)
		if terr != nil {
			return
		}
		n.Stats.TCPAllowed.Add(1)
		guest := gonet.NewTCPConn(&wq, ep)
		go func() {
			stop := context.AfterFunc(n.ctx, func() { _ = guest.Close() })
			defer stop()
			if err := i.Handle(n.ctx, guest, target); err != nil {
				n.cfg.Log.V(4).Info("Intercepted connection ended", "destination", target.String(), "error", err.Error())
			}
			_ = guest.Close()
		}()
		return
	}
	// Dial before completing the guest's handshake, so that a refused or
	// unreachable destination is a reset for the guest too.
	ctx, cancel := context.WithTimeout(n.ctx, dialTimeout)
	out, err := n.cfg.Dial(ctx, "tcp", target.String())
	cancel()
	if err != nil {
		n.Stats.DialFailures.Add(1)
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	r.Complete(false)
	if terr != nil {
		_ = out.Close()
		return
	}
	n.Stats.TCPAllowed.Add(1)
	go n.splice(gonet.NewTCPConn(&wq, ep), out)
}

// forwardUDP handles a guest's datagram for a new flow; false makes the
// stack answer ICMP port unreachable.
func (n *Net) forwardUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	dst := netipAddr(id.LocalAddress)
	if dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return true // a broadcast (DHCP): swallowed
	}
	target, d := n.decide(netpolicy.ProtoUDP, dst, id.LocalPort)
	if !d.Allow {
		return false
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		return true
	}
	in := gonet.NewUDPConn(&wq, ep)
	ctx, cancel := context.WithTimeout(n.ctx, dialTimeout)
	out, err := n.cfg.Dial(ctx, "udp", target.String())
	cancel()
	if err != nil {
		n.Stats.DialFailures.Add(1)
		_ = in.Close()
		return true
	}
	n.Stats.UDPAllowed.Add(1)
	go n.relayUDP(in, out)
	return true
}

// splice copies guest ↔ host with half-closes until both ways end, or the
// stack closes.
func (n *Net) splice(guest, host net.Conn) {
	stop := context.AfterFunc(n.ctx, func() { _ = guest.Close(); _ = host.Close() })
	defer stop()
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn, count func(uint64)) {
		defer wg.Done()
		k, _ := io.Copy(dst, src)
		count(uint64(k))
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
	}
	wg.Add(2)
	go cp(host, guest, func(k uint64) { n.Stats.BytesOut.Add(k) })
	go cp(guest, host, func(k uint64) { n.Stats.BytesIn.Add(k) })
	wg.Wait()
	_ = guest.Close()
	_ = host.Close()
}

// relayUDP moves datagrams both ways until udpIdle passes without one.
func (n *Net) relayUDP(guest *gonet.UDPConn, host net.Conn) {
	stop := context.AfterFunc(n.ctx, func() { _ = guest.Close(); _ = host.Close() })
	defer stop()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn, count func(uint64)) {
		buf := make([]byte, 65535)
		for {
			_ = src.SetReadDeadline(time.Now().Add(udpIdle))
			k, err := src.Read(buf)
			if err != nil {
				break
			}
			if _, err := dst.Write(buf[:k]); err != nil {
				break
			}
			count(uint64(k))
		}
		done <- struct{}{}
	}
	go cp(host, guest, func(k uint64) { n.Stats.BytesOut.Add(k) })
	go cp(guest, host, func(k uint64) { n.Stats.BytesIn.Add(k) })
	<-done
	_ = guest.Close()
	_ = host.Close()
	<-done
}
