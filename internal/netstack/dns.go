package netstack

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/microvm-dev/sandbox-operator/internal/netpolicy"
)

// ClassDNS is the Denials class of a DNS query the policy refused, and
// ClassRebind that of answers dropped by the rebinding protection.
const (
	ClassDNS    = "dns"
	ClassRebind = "rebind"
)

type dnsServer struct{ udp, tcp *dns.Server }

// startDNS serves DNS at DefaultResolver:53 (UDP and TCP) inside the
// stack. Endpoints bound in the stack take precedence over the
// forwarders: queries to the resolver never reach the flow policy; the
// names they ask about meet AllowName instead.
func (n *Net) startDNS() (*dnsServer, error) {
	fa := tcpip.FullAddress{NIC: nicID, Addr: tcpAddr(DefaultResolver), Port: netpolicy.DNSPort}
	uc, err := gonet.DialUDP(n.s, &fa, nil, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("netstack: binding the resolver (UDP): %w", err)
	}
	tl, err := gonet.ListenTCP(n.s, fa, ipv4.ProtocolNumber)
	if err != nil {
		_ = uc.Close()
		return nil, fmt.Errorf("netstack: binding the resolver (TCP): %w", err)
	}
	h := dns.HandlerFunc(n.serveDNS)
	d := &dnsServer{udp: &dns.Server{PacketConn: uc, Handler: h}, tcp: &dns.Server{Listener: tl, Handler: h}}
	go func() { _ = d.udp.ActivateAndServe() }()
	go func() { _ = d.tcp.ActivateAndServe() }()
	return d, nil
}

func (d *dnsServer) close() {
	_ = d.udp.Shutdown()
	_ = d.tcp.Shutdown()
}

// serveDNS answers one guest query: refused names get NXDOMAIN, the rest
// go to the upstreams; their A and AAAA answers pass the rebinding filter
// and are remembered for domain rules.
func (n *Net) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	n.Stats.DNSQueries.Add(1)
	reply := func(rcode int) {
		m := new(dns.Msg)
		m.SetRcode(req, rcode)
		m.RecursionAvailable = true
		_ = w.WriteMsg(m)
	}
	if len(req.Question) != 1 {
		reply(dns.RcodeFormatError)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(strings.TrimSuffix(q.Name, "."))
	if !n.cfg.Policy.AllowName(name) {
		n.recordDenial(netpolicy.Flow{Proto: netpolicy.ProtoUDP, Dst: netip.AddrPortFrom(DefaultResolver, netpolicy.DNSPort), Names: []string{name}},
			netpolicy.Decision{Rule: netpolicy.RuleNone, Class: ClassDNS, Reason: fmt.Sprintf("the policy denies the name %s", name)})
		reply(dns.RcodeNameError)
		return
	}
	network := "udp"
	if _, ok := w.RemoteAddr().(interface{ Network() string }); ok && w.RemoteAddr().Network() == "tcp" {
		network = "tcp"
	}
	resp := n.exchange(req, network)
	if resp == nil {
		n.Stats.DNSFailures.Add(1)
		reply(dns.RcodeServerFailure)
		return
	}
	resp.Id = req.Id
	resp.Answer = n.filterAnswers(name, resp.Answer)
	_ = w.WriteMsg(resp)
}

// exchange asks the upstreams in order; nil when none answered.
func (n *Net) exchange(req *dns.Msg, network string) *dns.Msg {
	for _, up := range n.cfg.Upstreams {
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.QueryTimeout)
		c := &dns.Client{Net: network, Timeout: n.cfg.QueryTimeout}
		resp, _, err := c.ExchangeContext(ctx, req.Copy(), up)
		cancel()
		if err == nil && resp != nil {
			if resp.Truncated && network == "udp" {
				return resp // the guest retries over TCP
			}
			return resp
		}
		n.cfg.Log.V(4).Info("Failing to ask a nameserver", "nameserver", up, "error", err)
	}
	return nil
}

// filterAnswers drops the A and AAAA records the rebinding protection
// refuses for name (the name the guest asked; CNAME targets are judged as
// that name) and remembers the rest under name and their owner names.
func (n *Net) filterAnswers(name string, rrs []dns.RR) []dns.RR {
	var ips []netip.Addr
	for _, rr := range rrs {
		if ip, ok := rrAddr(rr); ok {
			ips = append(ips, ip)
		}
	}
	if len(ips) == 0 {
		return rrs
	}
	kept, dropped := n.cfg.Policy.FilterAnswer(name, ips)
	keep := map[netip.Addr]bool{}
	for _, ip := range kept {
		keep[ip] = true
	}
	for _, ip := range dropped {
		n.recordDenial(netpolicy.Flow{Proto: netpolicy.ProtoUDP, Dst: netip.AddrPortFrom(ip, 0), Names: []string{name}},
			netpolicy.Decision{Rule: netpolicy.RuleNone, Class: ClassRebind,
				Reason: fmt.Sprintf("the answer %s for %s points at a non-public address (DNS rebinding protection)", ip, name)})
	}
	out := rrs[:0:0]
	for _, rr := range rrs {
		ip, ok := rrAddr(rr)
		if !ok {
			out = append(out, rr)
			continue
		}
		if !keep[ip.Unmap()] && !keep[ip] {
			continue
		}
		ttl := time.Duration(rr.Header().Ttl) * time.Second
		n.Names.Record(name, []netip.Addr{ip}, ttl)
		if owner := strings.ToLower(strings.TrimSuffix(rr.Header().Name, ".")); owner != name {
			n.Names.Record(owner, []netip.Addr{ip}, ttl)
		}
		out = append(out, rr)
	}
	return out
}

func rrAddr(rr dns.RR) (netip.Addr, bool) {
	switch r := rr.(type) {
	case *dns.A:
		ip, ok := netip.AddrFromSlice(r.A.To4())
		return ip, ok
	case *dns.AAAA:
		ip, ok := netip.AddrFromSlice(r.AAAA.To16())
		return ip.Unmap(), ok
	}
	return netip.Addr{}, false
}
