package netpolicy

import (
	"net/netip"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

func TestSpecialRanges(t *testing.T) {
	for i, s := range specials {
		t.Run(s.prefix.String()+" is described and reachable", func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(s.what).NotTo(ContainSubstring("%"))
			g.Expect(s.prefix).To(Equal(s.prefix.Masked()))
			for _, earlier := range specials[:i] {
				shadowed := earlier.prefix.Bits() <= s.prefix.Bits() && earlier.prefix.Contains(s.prefix.Addr())
				g.Expect(shadowed).To(BeFalse(), "%s is hidden behind %s", s.prefix, earlier.prefix)
			}
			g.Expect(classify(s.prefix.Addr(), nil).class).To(Equal(s.class))
		})
	}
}

// FuzzDecide compiles a one-rule policy from fuzzed fields and decides a
// fuzzed flow. `go test` runs only the seeds; `go test -fuzz FuzzDecide`
// explores. Invariants: nothing panics, a reason is always given, the
// deciding rule's action is the verdict, and the public profile allows only
// public addresses.
func FuzzDecide(f *testing.F) {
	f.Add("10.0.0.0/8", "", "", "", "Allow", "TCP", int32(1), int32(65535), []byte{10, 0, 0, 5}, uint16(443), uint8(1), "a.test")
	f.Add("", "evil.test", "", "", "Deny", "", int32(0), int32(0), []byte{93, 184, 216, 34}, uint16(80), uint8(2), "EVIL.test.")
	f.Add("", "", ".example.com", "", "Allow", "UDP", int32(53), int32(0), []byte{169, 254, 169, 254}, uint16(53), uint8(2), "x.example.com")
	f.Add("", "", "", "Private", "Allow", "ICMP", int32(0), int32(0), net16("fd00:ec2::254"), uint16(0), uint8(3), "")
	f.Add("::ffff:0:0/96", "", "", "Host", "Deny", "SCTP", int32(9), int32(1), net16("64:ff9b::a00:4"), uint16(22), uint8(0), "")
	f.Fuzz(func(t *testing.T, cidr, dom, suf, grp, action, proto string, start, end int32, ip []byte, port uint16, fproto uint8, name string) {
		r := sandboxv1alpha1.NetworkRule{
			Action:      sandboxv1alpha1.PolicyAction(action),
			Destination: sandboxv1alpha1.NetworkDestination{CIDR: cidr, Domain: dom, DomainSuffix: suf, Group: sandboxv1alpha1.DestinationGroup(grp)},
		}
		if proto != "" {
			r.Protocols = []sandboxv1alpha1.RuleProtocol{sandboxv1alpha1.RuleProtocol(proto)}
		}
		if start != 0 {
			pr := sandboxv1alpha1.PortRange{Start: start}
			if end != 0 {
				pr.End = &end
			}
			r.Ports = []sandboxv1alpha1.PortRange{pr}
		}
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return
		}
		flow := Flow{Proto: Proto(fproto % 5), Dst: netip.AddrPortFrom(a, port), Names: []string{name}}

		profile, err := Compile(nil, testHost)
		if err != nil {
			t.Fatal(err)
		}
		d := profile.Decide(flow)
		if d.Reason == "" {
			t.Fatalf("no reason for %+v", flow)
		}
		if d.Allow && d.Class != ClassResolver && classify(canonical(a), profile.host).class != classPublic {
			t.Fatalf("the public profile allowed %s: %s", a, d.Reason)
		}

		p, err := Compile(spec(sandboxv1alpha1.PolicyDeny, r), testHost)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "invalid network policy: policy.rules[0].") {
				t.Fatalf("error without a path: %v", err)
			}
			return
		}
		d = p.Decide(flow)
		if d.Reason == "" {
			t.Fatalf("no reason for %+v", flow)
		}
		if d.Rule == 0 && d.Allow != (r.Action == sandboxv1alpha1.PolicyAllow) {
			t.Fatalf("rule 0 is %s but the verdict is %v", r.Action, d.Allow)
		}
		_ = p.AllowName(name)
		kept, dropped := p.FilterAnswer(name, []netip.Addr{a})
		if len(kept)+len(dropped) != 1 {
			t.Fatalf("FilterAnswer lost or grew %s: %v %v", a, kept, dropped)
		}
	})
}

func net16(s string) []byte {
	b := netip.MustParseAddr(s).As16()
	return b[:]
}
