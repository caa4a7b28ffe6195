package netpolicy

import (
	"fmt"
	"net/netip"
	"strings"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// The destination groups of the API. The API declares the type and its enum
// but no constants, so they live here.
const (
	// GroupPublic is every globally routable unicast address that is in no
	// other group.
	GroupPublic sandboxv1alpha1.DestinationGroup = "Public"
	// GroupPrivate is RFC 1918, the shared (CGNAT) range 100.64.0.0/10,
	// IPv6 unique local fc00::/7 and local-use NAT64 64:ff9b:1::/48.
	GroupPrivate sandboxv1alpha1.DestinationGroup = "Private"
	// GroupLoopback is 127.0.0.0/8 and ::1.
	GroupLoopback sandboxv1alpha1.DestinationGroup = "Loopback"
	// GroupLinkLocal is 169.254.0.0/16 and fe80::/10, less the metadata
	// addresses.
	GroupLinkLocal sandboxv1alpha1.DestinationGroup = "LinkLocal"
	// GroupMetadata is the cloud instance metadata service: 169.254.169.254
	// and fd00:ec2::254.
	GroupMetadata sandboxv1alpha1.DestinationGroup = "Metadata"
	// GroupMulticast is 224.0.0.0/4 and ff00::/8.
	GroupMulticast sandboxv1alpha1.DestinationGroup = "Multicast"
	// GroupHost is the node's own addresses (HostInfo.Addrs).
	GroupHost sandboxv1alpha1.DestinationGroup = "Host"
)

// addrClass is the one group an address belongs to. The groups partition the
// address space: an address is in exactly one class, checked in the order of
// the constants below, so that a more dangerous class wins. That is why the
// metadata address is not LinkLocal, and the node's own 10.0.0.4 is Host and
// not Private: allowing LinkLocal or Private must not quietly allow the
// metadata service or the node itself.
type addrClass uint8

const (
	classPublic addrClass = iota
	classHost
	classMetadata
	classLoopback
	classLinkLocal
	classMulticast
	classPrivate
	// classReserved is in no API group: unspecified, broadcast, "this
	// network", documentation, benchmarking and other special-purpose
	// ranges, and IPv6 outside 2000::/3. Only a cidr rule can match it.
	classReserved
)

// group is the API group of the class; classReserved has none.
func (c addrClass) group() sandboxv1alpha1.DestinationGroup {
	switch c {
	case classPublic:
		return GroupPublic
	case classHost:
		return GroupHost
	case classMetadata:
		return GroupMetadata
	case classLoopback:
		return GroupLoopback
	case classLinkLocal:
		return GroupLinkLocal
	case classMulticast:
		return GroupMulticast
	case classPrivate:
		return GroupPrivate
	default:
		return ""
	}
}

// denialClass is the Denials counter key for a flow the public profile
// denies because of this class.
func (c addrClass) denialClass() string {
	if g := c.group(); g != "" {
		return "group:" + string(g)
	}
	return ClassReserved
}

// classOfGroup maps an API group to its class.
func classOfGroup(g sandboxv1alpha1.DestinationGroup) (addrClass, bool) {
	switch g {
	case GroupPublic:
		return classPublic, true
	case GroupHost:
		return classHost, true
	case GroupMetadata:
		return classMetadata, true
	case GroupLoopback:
		return classLoopback, true
	case GroupLinkLocal:
		return classLinkLocal, true
	case GroupMulticast:
		return classMulticast, true
	case GroupPrivate:
		return classPrivate, true
	default:
		return 0, false
	}
}

// special is a special-purpose range and how a denial describes it.
type special struct {
	prefix netip.Prefix
	class  addrClass
	// what completes "<addr> is …".
	what string
}

func sp(cidr string, c addrClass, what string) special {
	p := netip.MustParsePrefix(cidr)
	if strings.Contains(what, "%s") {
		what = fmt.Sprintf(what, p)
	}
	return special{prefix: p, class: c, what: what}
}

// specials is scanned in order; more specific ranges come first. Sources:
// the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and
// later), plus the metadata addresses of the big clouds.
var specials = []special{
	sp("169.254.169.254/32", classMetadata, "the cloud metadata address"),
	sp("fd00:ec2::254/128", classMetadata, "the cloud metadata address"),

	sp("127.0.0.0/8", classLoopback, "in the loopback range (%s)"),
	sp("::1/128", classLoopback, "the loopback address"),

	sp("169.254.0.0/16", classLinkLocal, "in the link-local range (%s)"),
	sp("fe80::/10", classLinkLocal, "in the link-local range (%s)"),

	sp("255.255.255.255/32", classReserved, "the broadcast address"),
	sp("224.0.0.0/4", classMulticast, "in the multicast range (%s)"),
	sp("ff00::/8", classMulticast, "in the multicast range (%s)"),

	sp("10.0.0.0/8", classPrivate, "in a private range (%s)"),
	sp("172.16.0.0/12", classPrivate, "in a private range (%s)"),
	sp("192.168.0.0/16", classPrivate, "in a private range (%s)"),
	sp("100.64.0.0/10", classPrivate, "in the shared (CGNAT) range (%s)"),
	sp("fc00::/7", classPrivate, "in the unique local (private) range (%s)"),
	sp("64:ff9b:1::/48", classPrivate, "in the local-use NAT64 range (%s)"),

	sp("0.0.0.0/32", classReserved, "the unspecified address"),
	sp("0.0.0.0/8", classReserved, `in the reserved "this network" range (%s)`),
	sp("192.0.0.0/24", classReserved, "in the reserved IETF protocol range (%s)"),
	sp("192.0.2.0/24", classReserved, "in a documentation range (%s)"),
	sp("198.51.100.0/24", classReserved, "in a documentation range (%s)"),
	sp("203.0.113.0/24", classReserved, "in a documentation range (%s)"),
	sp("192.88.99.0/24", classReserved, "in the deprecated 6to4 relay range (%s)"),
	sp("198.18.0.0/15", classReserved, "in the benchmarking range (%s)"),
	sp("240.0.0.0/4", classReserved, "in the reserved range (%s)"),
	sp("::/128", classReserved, "the unspecified address"),
	sp("100::/64", classReserved, "in the discard-only range (%s)"),
	sp("2001::/23", classReserved, "in the reserved IETF protocol range (%s)"),
	sp("2001:db8::/32", classReserved, "in a documentation range (%s)"),
	sp("3fff::/20", classReserved, "in a documentation range (%s)"),
	sp("5f00::/16", classReserved, "in the SRv6 SID range (%s)"),
}

var (
	globalUnicast6 = netip.MustParsePrefix("2000::/3")
	// These IPv6 prefixes carry an IPv4 address that a translator on the
	// path may turn back into IPv4: judge them by what they carry.
	nat64WellKnown = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour      = netip.MustParsePrefix("2002::/16")
)

// classified is an address's class and the words that explain it.
type classified struct {
	class addrClass
	// what completes "<addr> is …", e.g. "in a private range (10.0.0.0/8)".
	what string
}

// canonical strips the zone and unmaps IPv4-mapped IPv6, so that
// ::ffff:10.0.0.5 is judged as 10.0.0.5.
func canonical(a netip.Addr) netip.Addr {
	return a.WithZone("").Unmap()
}

// classify puts a canonical address in its class. host holds the node's own
// addresses, canonical.
func classify(a netip.Addr, host map[netip.Addr]bool) classified {
	if host[a] {
		return classified{class: classHost, what: "one of the node's own addresses"}
	}
	for _, s := range specials {
		if s.prefix.Contains(a) {
			return classified{class: s.class, what: s.what}
		}
	}
	if a.Is6() {
		if nat64WellKnown.Contains(a) || sixToFour.Contains(a) {
			// 64:ff9b::/96 is outside 2000::/3 yet reaches the public
			// IPv4 internet through a translator: it is what it carries.
			c := classify(embedded4(a), host)
			if c.class != classPublic {
				c.what = fmt.Sprintf("an IPv6 form of %s, which is %s", embedded4(a), c.what)
			}
			return c
		}
		if !globalUnicast6.Contains(a) {
			return classified{class: classReserved, what: fmt.Sprintf("outside the global unicast range (%s)", globalUnicast6)}
		}
	}
	return classified{class: classPublic, what: "a public address"}
}

// embedded4 is the IPv4 address inside a NAT64 (last 32 bits) or 6to4
// (bits 16-47) address.
func embedded4(a netip.Addr) netip.Addr {
	b := a.As16()
	if sixToFour.Contains(a) {
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
	}
	return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
}
