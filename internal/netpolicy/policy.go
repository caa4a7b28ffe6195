package netpolicy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// Proto is the transport protocol of a flow.
type Proto uint8

// The protocols a flow can have. The zero Proto is invalid and always denied.
const (
	ProtoTCP Proto = iota + 1
	ProtoUDP
	// ProtoICMP is ICMP echo, IPv4 or IPv6. It has no port: a rule that
	// lists ports never matches it.
	ProtoICMP
)

// String is the API spelling: TCP, UDP or ICMP.
func (p Proto) String() string {
	switch p {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoICMP:
		return "ICMP"
	default:
		return "Proto(" + strconv.Itoa(int(p)) + ")"
	}
}

func (p Proto) bit() uint8 { return 1 << p }

// DNSPort is the port of the stack's own resolver.
const DNSPort = 53

// RuleNone is Decision.Rule when no rule of the spec decided: the default
// egress, the "public" profile, the resolver, a disabled network or an
// invalid flow.
const RuleNone = -1

// Decision classes: Decision.Class, and the Denials counter keys. Denials by
// the "public" profile use "group:<group>" (e.g. "group:Private") or
// ClassReserved instead.
const (
	// ClassRule: a rule of the spec decided.
	ClassRule = "rule"
	// ClassDefault: no rule matched; the policy's defaultEgress decided.
	ClassDefault = "default"
	// ClassProfile: the "public" profile allowed a public address.
	ClassProfile = "profile"
	// ClassResolver: DNS to the stack's own resolver, always allowed.
	ClassResolver = "resolver"
	// ClassReserved: the "public" profile denied a special-purpose address
	// that is in no group (broadcast, unspecified, documentation, …).
	ClassReserved = "reserved"
	// ClassDisabled: the sandbox has no network.
	ClassDisabled = "disabled"
	// ClassInvalid: the flow itself is malformed (no address, no protocol).
	ClassInvalid = "invalid"
)

// HostInfo is what the policy needs to know about the node.
type HostInfo struct {
	// Addrs are the node's own addresses (group Host). Flows to them are
	// denied by the "public" profile even when they are public addresses,
	// since every guest flow leaves from the node itself.
	Addrs []netip.Addr
	// Resolver is the address of the stack's own DNS resolver (the guest's
	// gateway). TCP and UDP to it on port 53 are always allowed: the
	// resolver answers in-process, and what it answers is governed by
	// AllowName and FilterAnswer. Unset means no such exemption.
	Resolver netip.Addr
}

// Flow is one guest connection (TCP), datagram flow (UDP) or echo (ICMP)
// the stack is about to re-originate from the node.
type Flow struct {
	Proto Proto
	// Dst is the destination. The port is ignored for ICMP.
	Dst netip.AddrPort
	// Names are the DNS names known to have resolved to Dst.Addr(), from
	// Names.Lookup. They must come from answers the stack itself served,
	// never from the guest (SNI, Host header): a guest-supplied name would
	// let any address pass an Allow domain rule.
	Names []string
}

// Decision is the verdict on a flow.
type Decision struct {
	Allow bool
	// Rule is the index of the deciding rule in spec.policy.rules, or
	// RuleNone.
	Rule int
	// Class is one of the Class constants or "group:<group>"; a small fixed
	// set, fit for a metrics label.
	Class string
	// Reason says why in words, e.g. `denied by rule 2 (domain evil.test)`;
	// rule numbers are 0-based indexes, as in spec.network.policy.rules[2].
	Reason string
}

// Policy is a compiled egress policy. It is immutable and safe for
// concurrent use.
type Policy struct {
	// disabled: the sandbox has no network; everything is denied.
	disabled bool
	// profile: no policy was given; the "public" profile applies and rules
	// is empty.
	profile      bool
	rules        []rule
	defaultAllow bool
	// hasNameRules: some rule matches by DNS name.
	hasNameRules bool
	rebind       bool
	host         map[netip.Addr]bool
	resolver     netip.Addr
}

// rule is a compiled NetworkRule.
type rule struct {
	index int
	allow bool

	// Exactly one destination kind is set.
	prefix       netip.Prefix
	domain       string
	domainSuffix string
	group        addrClass
	hasGroup     bool

	// protos is a bit set of Proto.bit; 0 means any.
	protos uint8
	// ports are inclusive ranges; none means any.
	ports [][2]uint16

	// desc is the rule in words, e.g. "domain evil.test, TCP port 443".
	desc string
}

// publicProfileName is the name used in reasons.
const publicProfileName = `the default "public" profile`

// Compile checks spec and compiles its egress policy. A nil spec or a nil
// spec.policy gives the "public" profile: public addresses (group Public) on
// any protocol and port, plus DNS to host.Resolver; everything else —
// private, loopback, link-local, metadata, multicast, reserved and the
// node's own addresses — is denied. A spec with enabled=false gives a policy
// that denies everything. Invalid input (bad CIDR, unknown group, two
// destinations in one rule, …) returns every problem found, joined; the
// API's admission rules reject the same input, so this is defence in depth.
func Compile(spec *sandboxv1alpha1.NetworkSpec, host HostInfo) (*Policy, error) {
	p := &Policy{rebind: true, host: make(map[netip.Addr]bool, len(host.Addrs))}
	var errs []error
	for i, a := range host.Addrs {
		if !a.IsValid() {
			errs = append(errs, fmt.Errorf("host.addrs[%d]: not a valid address", i))
			continue
		}
		p.host[canonical(a)] = true
	}
	if host.Resolver.IsValid() {
		p.resolver = canonical(host.Resolver)
	}
	if spec != nil && spec.DNS != nil && spec.DNS.RebindProtection != nil {
		p.rebind = *spec.DNS.RebindProtection
	}
	switch {
	case spec != nil && spec.Enabled != nil && !*spec.Enabled:
		p.disabled = true
	case spec == nil || spec.Policy == nil:
		p.profile = true
	default:
		errs = append(errs, p.compilePolicy(spec.Policy)...)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("invalid network policy: %w", errors.Join(errs...))
	}
	return p, nil
}

func (p *Policy) compilePolicy(np *sandboxv1alpha1.NetworkPolicy) []error {
	var errs []error
	switch np.DefaultEgress {
	case "", sandboxv1alpha1.PolicyDeny:
	case sandboxv1alpha1.PolicyAllow:
		p.defaultAllow = true
	default:
		errs = append(errs, fmt.Errorf("policy.defaultEgress: %q is not Allow or Deny", np.DefaultEgress))
	}
	p.rules = make([]rule, 0, len(np.Rules))
	for i := range np.Rules {
		r, rerrs := compileRule(i, &np.Rules[i])
		errs = append(errs, rerrs...)
		if r.domain != "" || r.domainSuffix != "" {
			p.hasNameRules = true
		}
		p.rules = append(p.rules, r)
	}
	return errs
}

func compileRule(i int, nr *sandboxv1alpha1.NetworkRule) (rule, []error) {
	r := rule{index: i}
	path := fmt.Sprintf("policy.rules[%d]", i)
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%w", path, fmt.Errorf(format, args...)))
	}

	switch nr.Action {
	case sandboxv1alpha1.PolicyAllow:
		r.allow = true
	case sandboxv1alpha1.PolicyDeny:
	default:
		fail("action: %q is not Allow or Deny", nr.Action)
	}

	d := nr.Destination
	var dest string
	set := 0
	if d.CIDR != "" {
		set++
		pfx, err := netip.ParsePrefix(strings.TrimSpace(d.CIDR))
		if err != nil {
			fail("destination.cidr: %q is not a CIDR such as 10.0.0.0/8: %w", d.CIDR, err)
		} else {
			r.prefix = canonicalPrefix(pfx)
			dest = "cidr " + r.prefix.String()
		}
	}
	if d.Domain != "" {
		set++
		if err := checkDomain(d.Domain); err != nil {
			fail("destination.domain: %q %w", d.Domain, err)
		} else {
			r.domain = normalizeName(d.Domain)
			dest = "domain " + r.domain
		}
	}
	if d.DomainSuffix != "" {
		set++
		s := strings.TrimPrefix(d.DomainSuffix, ".")
		if err := checkDomain(s); err != nil {
			fail("destination.domainSuffix: %q %w", d.DomainSuffix, err)
		} else {
			r.domainSuffix = normalizeName(s)
			dest = "domainSuffix ." + r.domainSuffix
		}
	}
	if d.Group != "" {
		set++
		c, ok := classOfGroup(d.Group)
		if !ok {
			fail("destination.group: %q is not one of Public, Private, Loopback, LinkLocal, Metadata, Multicast or Host", d.Group)
		} else {
			r.group, r.hasGroup = c, true
			dest = "group " + string(d.Group)
		}
	}
	if set != 1 {
		fail("destination: set exactly one of cidr, domain, domainSuffix or group (%d set)", set)
	}

	var protos []string
	for j, pr := range nr.Protocols {
		var p Proto
		switch pr {
		case "TCP":
			p = ProtoTCP
		case "UDP":
			p = ProtoUDP
		case "ICMP":
			p = ProtoICMP
		default:
			fail("protocols[%d]: %q is not TCP, UDP or ICMP", j, pr)
			continue
		}
		if r.protos&p.bit() == 0 {
			protos = append(protos, p.String())
		}
		r.protos |= p.bit()
	}

	var ports []string
	for j, pr := range nr.Ports {
		start, end := pr.Start, pr.Start
		if pr.End != nil {
			end = *pr.End
		}
		switch {
		case start < 1 || start > 65535:
			fail("ports[%d].start: %d is not a port (1-65535)", j, start)
		case end < 1 || end > 65535:
			fail("ports[%d].end: %d is not a port (1-65535)", j, end)
		case end < start:
			fail("ports[%d]: end %d is below start %d", j, end, start)
		default:
			r.ports = append(r.ports, [2]uint16{uint16(start), uint16(end)})
			if start == end {
				ports = append(ports, strconv.Itoa(int(start)))
			} else {
				ports = append(ports, fmt.Sprintf("%d-%d", start, end))
			}
		}
	}

	r.desc = dest
	if len(protos) > 0 {
		r.desc += ", " + strings.Join(protos, "/")
	}
	if len(ports) == 1 {
		r.desc += ", port " + ports[0]
	} else if len(ports) > 1 {
		r.desc += ", ports " + strings.Join(ports, ",")
	}
	return r, errs
}

// canonicalPrefix masks the host bits and turns an IPv4-mapped IPv6 prefix
// (::ffff:10.0.0.0/104) into its IPv4 form, since flows are matched on
// unmapped addresses.
func canonicalPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// matchAddr reports whether the rule's address destination (cidr or group)
// holds a. Name rules never match here.
func (r *rule) matchAddr(a netip.Addr, c addrClass) bool {
	switch {
	case r.prefix.IsValid():
		return r.prefix.Contains(a)
	case r.hasGroup:
		return r.group == c
	default:
		return false
	}
}

// matchName reports whether the rule's name destination (domain or
// domainSuffix) matches the normalized name n.
func (r *rule) matchName(n string) bool {
	switch {
	case r.domain != "":
		return n == r.domain
	case r.domainSuffix != "":
		return n == r.domainSuffix || strings.HasSuffix(n, "."+r.domainSuffix)
	default:
		return false
	}
}

func (r *rule) isNameRule() bool { return r.domain != "" || r.domainSuffix != "" }

// matchProtoPort reports whether the rule's protocols and ports admit the
// flow.
func (r *rule) matchProtoPort(proto Proto, port uint16) bool {
	if r.protos != 0 && r.protos&proto.bit() == 0 {
		return false
	}
	if len(r.ports) == 0 {
		return true
	}
	if proto == ProtoICMP {
		return false
	}
	for _, pr := range r.ports {
		if port >= pr[0] && port <= pr[1] {
			return true
		}
	}
	return false
}

// Decide judges one flow: the resolver exemption first, then the rules in
// order (the first match wins), then defaultEgress — or, without a policy,
// the "public" profile.
func (p *Policy) Decide(f Flow) Decision {
	if p.disabled {
		return Decision{Rule: RuleNone, Class: ClassDisabled, Reason: "denied: the sandbox's network is disabled"}
	}
	if !f.Dst.Addr().IsValid() {
		return Decision{Rule: RuleNone, Class: ClassInvalid, Reason: "denied: the flow has no destination address"}
	}
	if f.Proto < ProtoTCP || f.Proto > ProtoICMP {
		return Decision{Rule: RuleNone, Class: ClassInvalid, Reason: fmt.Sprintf("denied: %s is not TCP, UDP or ICMP", f.Proto)}
	}
	a := canonical(f.Dst.Addr())
	port := f.Dst.Port()
	if p.resolver.IsValid() && a == p.resolver && port == DNSPort && f.Proto != ProtoICMP {
		return Decision{Allow: true, Rule: RuleNone, Class: ClassResolver, Reason: "allowed: DNS to the sandbox's own resolver"}
	}
	c := classify(a, p.host)

	if p.profile {
		if c.class == classPublic {
			return Decision{Allow: true, Rule: RuleNone, Class: ClassProfile,
				Reason: fmt.Sprintf("allowed by %s: %s is %s", publicProfileName, a, c.what)}
		}
		return Decision{Rule: RuleNone, Class: c.class.denialClass(),
			Reason: fmt.Sprintf("denied by %s: %s is %s", publicProfileName, a, c.what)}
	}

	var names []string
	if p.hasNameRules && len(f.Names) > 0 {
		names = make([]string, len(f.Names))
		for i, n := range f.Names {
			names[i] = normalizeName(n)
		}
	}
	for i := range p.rules {
		r := &p.rules[i]
		if !r.matchProtoPort(f.Proto, port) {
			continue
		}
		if !r.matchAddr(a, c.class) && !anyName(r, names) {
			continue
		}
		verb := "denied"
		if r.allow {
			verb = "allowed"
		}
		return Decision{Allow: r.allow, Rule: r.index, Class: ClassRule,
			Reason: fmt.Sprintf("%s by rule %d (%s)", verb, r.index, r.desc)}
	}
	if p.defaultAllow {
		return Decision{Allow: true, Rule: RuleNone, Class: ClassDefault,
			Reason: fmt.Sprintf("allowed by defaultEgress Allow: no rule matches %s %s", f.Proto, flowDst(f, a))}
	}
	return Decision{Rule: RuleNone, Class: ClassDefault,
		Reason: fmt.Sprintf("denied by defaultEgress Deny: no rule matches %s %s (%s)", f.Proto, flowDst(f, a), c.what)}
}

func anyName(r *rule, names []string) bool {
	if !r.isNameRule() {
		return false
	}
	for _, n := range names {
		if r.matchName(n) {
			return true
		}
	}
	return false
}

// flowDst is the destination in words: address and port, no port for ICMP.
func flowDst(f Flow, a netip.Addr) string {
	if f.Proto == ProtoICMP {
		return a.String()
	}
	return netip.AddrPortFrom(a, f.Dst.Port()).String()
}
