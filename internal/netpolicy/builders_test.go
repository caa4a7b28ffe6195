package netpolicy

import (
	"net/netip"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// Builders for test specs: spec(defaultEgress, rules...) and
// allow/deny(destination, mods...).

var (
	nodeAddr4 = netip.MustParseAddr("10.0.0.4")
	nodeAddr6 = netip.MustParseAddr("2a01:4f8::4")
	nodePub4  = netip.MustParseAddr("198.100.7.4")
	resolver  = netip.MustParseAddr("10.0.2.3")
	testHost  = HostInfo{Addrs: []netip.Addr{nodeAddr4, nodeAddr6, nodePub4}, Resolver: resolver}
)

func spec(def sandboxv1alpha1.PolicyAction, rules ...sandboxv1alpha1.NetworkRule) *sandboxv1alpha1.NetworkSpec {
	return &sandboxv1alpha1.NetworkSpec{Policy: &sandboxv1alpha1.NetworkPolicy{DefaultEgress: def, Rules: rules}}
}

type ruleMod func(*sandboxv1alpha1.NetworkRule)

func allow(d sandboxv1alpha1.NetworkDestination, mods ...ruleMod) sandboxv1alpha1.NetworkRule {
	return mkRule(sandboxv1alpha1.PolicyAllow, d, mods)
}

func deny(d sandboxv1alpha1.NetworkDestination, mods ...ruleMod) sandboxv1alpha1.NetworkRule {
	return mkRule(sandboxv1alpha1.PolicyDeny, d, mods)
}

func mkRule(a sandboxv1alpha1.PolicyAction, d sandboxv1alpha1.NetworkDestination, mods []ruleMod) sandboxv1alpha1.NetworkRule {
	r := sandboxv1alpha1.NetworkRule{Action: a, Destination: d}
	for _, m := range mods {
		m(&r)
	}
	return r
}

func cidr(s string) sandboxv1alpha1.NetworkDestination {
	return sandboxv1alpha1.NetworkDestination{CIDR: s}
}

func domain(s string) sandboxv1alpha1.NetworkDestination {
	return sandboxv1alpha1.NetworkDestination{Domain: s}
}

func suffix(s string) sandboxv1alpha1.NetworkDestination {
	return sandboxv1alpha1.NetworkDestination{DomainSuffix: s}
}

func group(g sandboxv1alpha1.DestinationGroup) sandboxv1alpha1.NetworkDestination {
	return sandboxv1alpha1.NetworkDestination{Group: g}
}

func protos(ps ...sandboxv1alpha1.RuleProtocol) ruleMod {
	return func(r *sandboxv1alpha1.NetworkRule) { r.Protocols = append(r.Protocols, ps...) }
}

func port(p int32) ruleMod {
	return func(r *sandboxv1alpha1.NetworkRule) {
		r.Ports = append(r.Ports, sandboxv1alpha1.PortRange{Start: p})
	}
}

func ports(start, end int32) ruleMod {
	return func(r *sandboxv1alpha1.NetworkRule) {
		r.Ports = append(r.Ports, sandboxv1alpha1.PortRange{Start: start, End: &end})
	}
}

func tcp(dst string, names ...string) Flow  { return mkFlow(ProtoTCP, dst, names) }
func udp(dst string, names ...string) Flow  { return mkFlow(ProtoUDP, dst, names) }
func icmp(dst string, names ...string) Flow { return mkFlow(ProtoICMP, dst, names) }

func mkFlow(p Proto, dst string, names []string) Flow {
	ap, err := netip.ParseAddrPort(dst)
	if err != nil {
		ap = netip.AddrPortFrom(netip.MustParseAddr(dst), 0)
	}
	return Flow{Proto: p, Dst: ap, Names: names}
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func ptr[T any](v T) *T { return &v }
