package netpolicy

import (
	"errors"
	"net/netip"
	"strings"
)

// normalizeName lower-cases a DNS name and drops its trailing dot, so that
// "Example.COM." and "example.com" compare equal.
func normalizeName(n string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(n), "."))
}

// checkDomain accepts what the API's domain pattern accepts: dot-separated
// labels of letters, digits and inner hyphens, at most 253 characters, each
// label at most 63. A trailing dot is tolerated.
func checkDomain(d string) error {
	d = strings.TrimSuffix(d, ".")
	switch {
	case d == "":
		return errors.New("is empty")
	case len(d) > 253:
		return errors.New("is longer than 253 characters")
	case strings.HasPrefix(d, "*."):
		return errors.New("is a wildcard: use domainSuffix instead")
	}
	for l := range strings.SplitSeq(d, ".") {
		if l == "" || len(l) > 63 {
			return errors.New("is not a DNS name: each label must be 1-63 characters")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return errors.New("is not a DNS name: a label must not start or end with a hyphen")
		}
		if strings.IndexFunc(l, notLDH) >= 0 {
			return errors.New("is not a DNS name: only letters, digits, hyphens and dots are allowed")
		}
	}
	return nil
}

// AllowName reports whether the resolver may answer a query for name at all;
// false means answer NXDOMAIN (or REFUSED). Only name rules (domain,
// domainSuffix) are consulted, in order: the first Allow rule that matches
// the name answers true; the first matching Deny rule that lists no
// protocols and no ports answers false. A Deny rule limited to some ports
// or protocols does not stop the query, since other flows to the name may be
// allowed; it still denies its flows in Decide. Names no rule matches are
// answered, and their addresses judged by Decide and FilterAnswer. With the
// network disabled nothing is answered.
func (p *Policy) AllowName(name string) bool {
	if p.disabled {
		return false
	}
	n := normalizeName(name)
	for i := range p.rules {
		r := &p.rules[i]
		if !r.isNameRule() || !r.matchName(n) {
			continue
		}
		if r.allow {
			return true
		}
		if r.protos == 0 && len(r.ports) == 0 {
			return false
		}
	}
	return true
}

// FilterAnswer applies DNS rebinding protection to the addresses of an
// answer for name. With rebindProtection on (the default) an address that is
// not Public — private, loopback, link-local, metadata, multicast, reserved
// or the node's own — is dropped unless an Allow rule covers it explicitly:
// a cidr that holds it, a group that holds it, or a domain or domainSuffix
// that matches name. Protocols and ports of those rules are not consulted:
// the answer is kept and Decide judges each flow. The input slice is not
// modified; kept preserves its order.
//
// Record only the kept addresses in Names; otherwise a dropped answer would
// still lend its name to a flow.
func (p *Policy) FilterAnswer(name string, ips []netip.Addr) (kept, dropped []netip.Addr) {
	if p.disabled {
		return nil, append([]netip.Addr(nil), ips...)
	}
	if !p.rebind {
		return append([]netip.Addr(nil), ips...), nil
	}
	n := normalizeName(name)
	nameAllowed := false
	for i := range p.rules {
		if r := &p.rules[i]; r.allow && r.isNameRule() && r.matchName(n) {
			nameAllowed = true
			break
		}
	}
	for _, ip := range ips {
		if !ip.IsValid() {
			dropped = append(dropped, ip)
			continue
		}
		a := canonical(ip)
		c := classify(a, p.host).class
		if c == classPublic || nameAllowed || p.allowsAddr(a, c) {
			kept = append(kept, ip)
		} else {
			dropped = append(dropped, ip)
		}
	}
	return kept, dropped
}

// allowsAddr reports whether some Allow cidr or group rule holds a.
func (p *Policy) allowsAddr(a netip.Addr, c addrClass) bool {
	for i := range p.rules {
		if r := &p.rules[i]; r.allow && r.matchAddr(a, c) {
			return true
		}
	}
	return false
}

// notLDH reports whether r is not a letter, digit or hyphen (ASCII).
func notLDH(r rune) bool {
	return (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '-'
}
