package netpolicy

import (
	"net/netip"
	"testing"

	. "github.com/onsi/gomega"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

func TestCompile(t *testing.T) {
	tests := []struct {
		name    string
		spec    *sandboxv1alpha1.NetworkSpec
		host    HostInfo
		wantErr []string
	}{
		{name: "a nil spec compiles to the public profile", spec: nil},
		{name: "a spec without a policy compiles to the public profile", spec: &sandboxv1alpha1.NetworkSpec{}},
		{name: "a disabled network compiles", spec: &sandboxv1alpha1.NetworkSpec{Enabled: ptr(false)}},
		{
			name: "a valid policy with every kind of destination compiles",
			spec: spec(sandboxv1alpha1.PolicyAllow,
				allow(cidr("10.1.2.3/32")), allow(cidr("10.0.0.5/8")), allow(cidr("::ffff:10.0.0.0/104")),
				deny(domain("Evil.Test.")), allow(suffix(".example.com")), allow(suffix("example.org")),
				allow(group(GroupPrivate), protos("TCP", "UDP", "ICMP"), port(443), ports(8000, 8080))),
		},
		{
			name:    "a bad CIDR is an error naming the rule and the field",
			spec:    spec("", allow(cidr("10.0.0.0/33"))),
			wantErr: []string{`policy.rules[0].destination.cidr: "10.0.0.0/33" is not a CIDR`},
		},
		{
			name:    "an address without a prefix length is not a CIDR",
			spec:    spec("", deny(cidr("1.2.3.4")), allow(cidr("nonsense"))),
			wantErr: []string{`policy.rules[0].destination.cidr: "1.2.3.4"`, `policy.rules[1].destination.cidr: "nonsense"`},
		},
		{
			name:    "a rule with two destinations is an error",
			spec:    spec("", allow(sandboxv1alpha1.NetworkDestination{CIDR: "10.0.0.0/8", Domain: "a.test"})),
			wantErr: []string{"policy.rules[0].destination: set exactly one of cidr, domain, domainSuffix or group (2 set)"},
		},
		{
			name:    "a rule without a destination is an error",
			spec:    spec("", allow(sandboxv1alpha1.NetworkDestination{})),
			wantErr: []string{"(0 set)"},
		},
		{
			name:    "an unknown group is an error",
			spec:    spec("", allow(group("Internet"))),
			wantErr: []string{`destination.group: "Internet" is not one of Public`},
		},
		{
			name:    "a wildcard domain is an error that points at domainSuffix",
			spec:    spec("", allow(domain("*.example.com"))),
			wantErr: []string{"use domainSuffix"},
		},
		{
			name:    "a domain with an underscore is an error",
			spec:    spec("", allow(suffix("_dmarc.example.com"))),
			wantErr: []string{`destination.domainSuffix: "_dmarc.example.com" is not a DNS name`},
		},
		{
			name:    "an unknown action, protocol or defaultEgress is an error",
			spec:    spec("Maybe", mkRule("Permit", cidr("10.0.0.0/8"), []ruleMod{protos("SCTP")})),
			wantErr: []string{`policy.defaultEgress: "Maybe"`, `policy.rules[0].action: "Permit"`, `policy.rules[0].protocols[0]: "SCTP"`},
		},
		{
			name:    "a port range that ends below its start is an error",
			spec:    spec("", allow(cidr("10.0.0.0/8"), ports(90, 80), port(0), ports(1, 70000))),
			wantErr: []string{"ports[0]: end 80 is below start 90", "ports[1].start: 0 is not a port", "ports[2].end: 70000 is not a port"},
		},
		{
			name:    "an invalid host address is an error",
			host:    HostInfo{Addrs: []netip.Addr{nodeAddr4, nodeAddr6, {}}},
			wantErr: []string{"host.addrs[2]: not a valid address"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			p, err := Compile(tt.spec, tt.host)
			if len(tt.wantErr) == 0 {
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(p).NotTo(BeNil())
				return
			}
			g.Expect(err).To(HaveOccurred())
			g.Expect(p).To(BeNil())
			g.Expect(err.Error()).To(HavePrefix("invalid network policy: "))
			for _, want := range tt.wantErr {
				g.Expect(err.Error()).To(ContainSubstring(want))
			}
		})
	}
}

func TestDecidePublicProfile(t *testing.T) {
	tests := []struct {
		name       string
		flow       Flow
		wantAllow  bool
		wantClass  string
		wantReason string
	}{
		{name: "a public IPv4 address is allowed on any port", flow: tcp("93.184.216.34:443"), wantAllow: true, wantClass: ClassProfile,
			wantReason: `allowed by the default "public" profile: 93.184.216.34 is a public address`},
		{name: "UDP to a public address is allowed", flow: udp("1.1.1.1:4500"), wantAllow: true, wantClass: ClassProfile},
		{name: "ICMP to a public address is allowed", flow: icmp("8.8.8.8"), wantAllow: true, wantClass: ClassProfile},
		{name: "a public IPv6 address is allowed", flow: tcp("[2606:2800:220:1:248:1893:25c8:1946]:80"), wantAllow: true, wantClass: ClassProfile},
		{name: "an IPv4-mapped public address is allowed", flow: tcp("[::ffff:93.184.216.34]:443"), wantAllow: true, wantClass: ClassProfile},
		{name: "DNS to the stack's resolver is allowed although it is private", flow: udp("10.0.2.3:53"), wantAllow: true, wantClass: ClassResolver,
			wantReason: "allowed: DNS to the sandbox's own resolver"},
		{name: "DNS over TCP to the stack's resolver is allowed", flow: tcp("10.0.2.3:53"), wantAllow: true, wantClass: ClassResolver},
		{name: "another port on the resolver is denied", flow: tcp("10.0.2.3:80"), wantClass: "group:Private"},

		{name: "loopback is denied", flow: tcp("127.0.0.1:8080"), wantClass: "group:Loopback",
			wantReason: `denied by the default "public" profile: 127.0.0.1 is in the loopback range (127.0.0.0/8)`},
		{name: "10/8 is denied", flow: tcp("10.0.0.5:443"), wantClass: "group:Private",
			wantReason: `denied by the default "public" profile: 10.0.0.5 is in a private range (10.0.0.0/8)`},
		{name: "192.168/16 is denied", flow: tcp("192.168.1.1:80"), wantClass: "group:Private"},
		{name: "172.16/12 is denied", flow: udp("172.16.0.1:53"), wantClass: "group:Private"},
		{name: "the CGNAT range is denied", flow: tcp("100.64.0.1:80"), wantClass: "group:Private",
			wantReason: "100.64.0.1 is in the shared (CGNAT) range (100.64.0.0/10)"},
		{name: "the metadata address is denied as Metadata, not LinkLocal", flow: tcp("169.254.169.254:80"), wantClass: "group:Metadata",
			wantReason: `denied by the default "public" profile: 169.254.169.254 is the cloud metadata address`},
		{name: "the IPv6 metadata address is denied", flow: tcp("[fd00:ec2::254]:80"), wantClass: "group:Metadata"},
		{name: "other link-local addresses are denied", flow: tcp("169.254.1.1:80"), wantClass: "group:LinkLocal"},
		{name: "multicast is denied", flow: udp("224.0.0.1:5353"), wantClass: "group:Multicast"},
		{name: "the broadcast address is denied", flow: udp("255.255.255.255:67"), wantClass: ClassReserved,
			wantReason: "255.255.255.255 is the broadcast address"},
		{name: "the unspecified address is denied", flow: tcp("0.0.0.0:80"), wantClass: ClassReserved},
		{name: "this-network 0/8 is denied", flow: tcp("0.1.2.3:80"), wantClass: ClassReserved},
		{name: "240/4 is denied", flow: tcp("240.0.0.1:80"), wantClass: ClassReserved},
		{name: "a documentation range is denied", flow: tcp("203.0.113.9:80"), wantClass: ClassReserved},
		{name: "IPv6 loopback is denied", flow: tcp("[::1]:22"), wantClass: "group:Loopback"},
		{name: "IPv6 link-local is denied", flow: tcp("[fe80::1]:22"), wantClass: "group:LinkLocal"},
		{name: "IPv6 link-local with a zone is denied", flow: tcp("[fe80::1%eth0]:22"), wantClass: "group:LinkLocal"},
		{name: "IPv6 unique local is denied", flow: tcp("[fd00::1]:22"), wantClass: "group:Private"},
		{name: "IPv6 multicast is denied", flow: udp("[ff02::fb]:5353"), wantClass: "group:Multicast"},
		{name: "the unspecified IPv6 address is denied", flow: tcp("[::]:80"), wantClass: ClassReserved},
		{name: "IPv6 outside 2000::/3 is denied", flow: tcp("[4000::1]:80"), wantClass: ClassReserved},
		{name: "an IPv4-mapped private address is denied", flow: tcp("[::ffff:10.0.0.5]:80"), wantClass: "group:Private"},
		{name: "a NAT64 form of a private address is denied", flow: tcp("[64:ff9b::a00:5]:80"), wantClass: "group:Private",
			wantReason: "64:ff9b::a00:5 is an IPv6 form of 10.0.0.5, which is in a private range (10.0.0.0/8)"},
		{name: "a 6to4 form of the metadata address is denied", flow: tcp("[2002:a9fe:a9fe::1]:80"), wantClass: "group:Metadata"},
		{name: "a NAT64 form of a public address is allowed", flow: tcp("[64:ff9b::5db8:d822]:443"), wantAllow: true, wantClass: ClassProfile},
		{name: "the node's private address is denied as Host", flow: tcp("10.0.0.4:10250"), wantClass: "group:Host",
			wantReason: "10.0.0.4 is one of the node's own addresses"},
		{name: "the node's public address is denied", flow: tcp("198.100.7.4:22"), wantClass: "group:Host"},
		{name: "the node's IPv6 address is denied", flow: tcp("[2a01:4f8::4]:22"), wantClass: "group:Host"},
		{name: "a flow without a protocol is denied", flow: Flow{Dst: tcp("1.1.1.1:443").Dst}, wantClass: ClassInvalid},
		{name: "a flow without an address is denied", flow: Flow{Proto: ProtoTCP}, wantClass: ClassInvalid},
	}
	for _, s := range []*sandboxv1alpha1.NetworkSpec{nil, {}} {
		p, err := Compile(s, testHost)
		NewWithT(t).Expect(err).NotTo(HaveOccurred())
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				g := NewWithT(t)
				d := p.Decide(tt.flow)
				g.Expect(d.Allow).To(Equal(tt.wantAllow), d.Reason)
				g.Expect(d.Rule).To(Equal(RuleNone))
				g.Expect(d.Class).To(Equal(tt.wantClass), d.Reason)
				if tt.wantReason != "" {
					g.Expect(d.Reason).To(ContainSubstring(tt.wantReason))
				}
				if !tt.wantAllow && tt.wantClass != ClassInvalid {
					g.Expect(d.Reason).To(HavePrefix(`denied by the default "public" profile: `))
				}
			})
		}
	}
}

func TestDecideRules(t *testing.T) {
	tests := []struct {
		name       string
		spec       *sandboxv1alpha1.NetworkSpec
		flow       Flow
		wantAllow  bool
		wantRule   int
		wantReason string
	}{
		{
			name:       "an explicit allow for 10.1.2.3/32 lets that address through",
			spec:       spec("", allow(cidr("10.1.2.3/32"))),
			flow:       tcp("10.1.2.3:5432"),
			wantAllow:  true,
			wantRule:   0,
			wantReason: "allowed by rule 0 (cidr 10.1.2.3/32)",
		},
		{
			name:       "a flow no rule matches falls to the default, which is Deny when unset",
			spec:       spec("", allow(cidr("10.1.2.3/32"))),
			flow:       tcp("10.1.2.4:5432"),
			wantRule:   RuleNone,
			wantReason: "denied by defaultEgress Deny: no rule matches TCP 10.1.2.4:5432 (in a private range (10.0.0.0/8))",
		},
		{
			name:       "an explicit policy does not include the public profile",
			spec:       spec("", allow(cidr("10.1.2.3/32"))),
			flow:       tcp("93.184.216.34:443"),
			wantRule:   RuleNone,
			wantReason: "denied by defaultEgress Deny",
		},
		{
			name:       "defaultEgress Allow lets unmatched flows through",
			spec:       spec(sandboxv1alpha1.PolicyAllow, deny(cidr("10.0.0.0/8"))),
			flow:       tcp("192.168.1.1:80"),
			wantAllow:  true,
			wantRule:   RuleNone,
			wantReason: "allowed by defaultEgress Allow: no rule matches TCP 192.168.1.1:80",
		},
		{
			name:       "a deny rule before an allow rule wins",
			spec:       spec("", deny(cidr("10.1.2.3/32")), allow(cidr("10.0.0.0/8"))),
			flow:       tcp("10.1.2.3:80"),
			wantRule:   0,
			wantReason: "denied by rule 0 (cidr 10.1.2.3/32)",
		},
		{
			name:      "an allow rule before a deny rule wins",
			spec:      spec("", allow(cidr("10.0.0.0/8")), deny(cidr("10.1.2.3/32"))),
			flow:      tcp("10.1.2.3:80"),
			wantAllow: true,
			wantRule:  0,
		},
		{
			name:      "the rest of an allowed range is still allowed after a narrower deny",
			spec:      spec("", deny(cidr("10.1.2.3/32")), allow(cidr("10.0.0.0/8"))),
			flow:      tcp("10.9.9.9:80"),
			wantAllow: true,
			wantRule:  1,
		},
		{
			name:       "a port range matches its ends",
			spec:       spec("", allow(group(GroupPublic), protos("TCP"), port(443), ports(8000, 8080))),
			flow:       tcp("1.1.1.1:8080"),
			wantAllow:  true,
			wantRule:   0,
			wantReason: "allowed by rule 0 (group Public, TCP, ports 443,8000-8080)",
		},
		{
			name:     "a port outside the ranges does not match",
			spec:     spec("", allow(group(GroupPublic), port(443), ports(8000, 8080))),
			flow:     tcp("1.1.1.1:8081"),
			wantRule: RuleNone,
		},
		{
			name:     "a TCP-only rule does not match UDP",
			spec:     spec("", allow(group(GroupPublic), protos("TCP"), port(443))),
			flow:     udp("1.1.1.1:443"),
			wantRule: RuleNone,
		},
		{
			name:      "a rule without protocols matches UDP",
			spec:      spec("", allow(group(GroupPublic), port(443))),
			flow:      udp("1.1.1.1:443"),
			wantAllow: true,
			wantRule:  0,
		},
		{
			name:     "a rule with ports never matches ICMP",
			spec:     spec("", allow(group(GroupPublic), port(443))),
			flow:     icmp("1.1.1.1"),
			wantRule: RuleNone,
		},
		{
			name:      "an ICMP rule matches ICMP",
			spec:      spec("", allow(group(GroupPublic), protos("ICMP"))),
			flow:      icmp("1.1.1.1"),
			wantAllow: true,
			wantRule:  0,
		},
		{
			name:       "a domain rule matches a flow through its names, ignoring case and the trailing dot",
			spec:       spec(sandboxv1alpha1.PolicyAllow, allow(domain("ok.test")), deny(domain("evil.test"))),
			flow:       tcp("93.184.216.34:443", "cdn.test", "EVIL.test."),
			wantRule:   1,
			wantReason: "denied by rule 1 (domain evil.test)",
		},
		{
			name:     "a domain rule does not match a subdomain",
			spec:     spec("", allow(domain("example.com"))),
			flow:     tcp("93.184.216.34:443", "a.example.com"),
			wantRule: RuleNone,
		},
		{
			name:      "a suffix with a leading dot matches the name itself",
			spec:      spec("", allow(suffix(".example.com"))),
			flow:      tcp("93.184.216.34:443", "example.com"),
			wantAllow: true,
			wantRule:  0,
		},
		{
			name:       "a suffix without a leading dot matches a subdomain",
			spec:       spec("", allow(suffix("example.com"))),
			flow:       tcp("93.184.216.34:443", "a.b.Example.com"),
			wantAllow:  true,
			wantRule:   0,
			wantReason: "allowed by rule 0 (domainSuffix .example.com)",
		},
		{
			name:     "a suffix does not match a name that merely ends in the same letters",
			spec:     spec("", allow(suffix("example.com"))),
			flow:     tcp("93.184.216.34:443", "badexample.com"),
			wantRule: RuleNone,
		},
		{
			name:     "a domain rule does not match a flow without names",
			spec:     spec("", allow(domain("example.com"))),
			flow:     tcp("93.184.216.34:443"),
			wantRule: RuleNone,
		},
		{
			name:      "an allowed domain may resolve to a private address",
			spec:      spec("", allow(domain("db.corp.test"), port(5432))),
			flow:      tcp("10.20.0.7:5432", "db.corp.test"),
			wantAllow: true,
			wantRule:  0,
		},
		{
			name:       "a Private group allow does not include the node itself",
			spec:       spec("", allow(group(GroupPrivate))),
			flow:       tcp("10.0.0.4:10250"),
			wantRule:   RuleNone,
			wantReason: "one of the node's own addresses",
		},
		{
			name:     "a LinkLocal group allow does not include the metadata service",
			spec:     spec("", allow(group(GroupLinkLocal))),
			flow:     tcp("169.254.169.254:80"),
			wantRule: RuleNone,
		},
		{
			name:      "a Host group allow reaches the node",
			spec:      spec("", allow(group(GroupHost), port(8080))),
			flow:      tcp("[2a01:4f8::4]:8080"),
			wantAllow: true,
			wantRule:  0,
		},
		{
			name:      "a Metadata group allow reaches the metadata service",
			spec:      spec("", allow(group(GroupMetadata))),
			flow:      tcp("169.254.169.254:80"),
			wantAllow: true,
			wantRule:  0,
		},
		{
			name:      "an IPv4-mapped cidr rule matches the IPv4 address",
			spec:      spec("", allow(cidr("::ffff:10.0.0.0/104"))),
			flow:      tcp("10.2.3.4:80"),
			wantAllow: true,
			wantRule:  0,
		},
		{
			name:      "a cidr rule reaches a reserved range no group holds",
			spec:      spec("", allow(cidr("203.0.113.0/24"))),
			flow:      tcp("203.0.113.9:80"),
			wantAllow: true,
			wantRule:  0,
		},
		{
			name:       "DNS to the resolver is allowed under an explicit deny-all policy",
			spec:       spec(sandboxv1alpha1.PolicyDeny, deny(group(GroupPrivate))),
			flow:       udp("10.0.2.3:53"),
			wantAllow:  true,
			wantRule:   RuleNone,
			wantReason: "allowed: DNS to the sandbox's own resolver",
		},
		{
			name:       "a disabled network denies everything",
			spec:       &sandboxv1alpha1.NetworkSpec{Enabled: ptr(false), Policy: spec(sandboxv1alpha1.PolicyAllow).Policy},
			flow:       udp("10.0.2.3:53"),
			wantRule:   RuleNone,
			wantReason: "denied: the sandbox's network is disabled",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			p, err := Compile(tt.spec, testHost)
			g.Expect(err).NotTo(HaveOccurred())
			d := p.Decide(tt.flow)
			g.Expect(d.Allow).To(Equal(tt.wantAllow), d.Reason)
			g.Expect(d.Rule).To(Equal(tt.wantRule), d.Reason)
			if tt.wantReason != "" {
				g.Expect(d.Reason).To(ContainSubstring(tt.wantReason))
			}
		})
	}
}
