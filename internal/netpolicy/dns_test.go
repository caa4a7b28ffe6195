package netpolicy

import (
	"net/netip"
	"testing"

	. "github.com/onsi/gomega"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

func TestAllowName(t *testing.T) {
	tests := []struct {
		name  string
		spec  *sandboxv1alpha1.NetworkSpec
		query string
		want  bool
	}{
		{name: "the public profile answers every name", spec: nil, query: "evil.test", want: true},
		{name: "a disabled network answers nothing", spec: &sandboxv1alpha1.NetworkSpec{Enabled: ptr(false)}, query: "example.com"},
		{name: "a deny domain rule refuses the name", spec: spec("", deny(domain("evil.test"))), query: "Evil.Test."},
		{name: "a deny domain rule leaves its subdomains alone", spec: spec("", deny(domain("evil.test"))), query: "a.evil.test", want: true},
		{name: "a deny suffix rule refuses subdomains", spec: spec("", deny(suffix(".evil.test"))), query: "a.evil.test"},
		{
			name:  "an earlier allow rule for the name wins over a later deny suffix",
			spec:  spec("", allow(domain("ok.evil.test")), deny(suffix("evil.test"))),
			query: "ok.evil.test",
			want:  true,
		},
		{
			name:  "a deny rule limited to a port does not refuse the name",
			spec:  spec("", deny(domain("evil.test"), port(80))),
			query: "evil.test",
			want:  true,
		},
		{
			name:  "a deny rule limited to a protocol does not refuse the name",
			spec:  spec("", deny(domain("evil.test"), protos("UDP")), deny(suffix("test"))),
			query: "evil.test",
		},
		{
			name:  "address rules do not refuse names",
			spec:  spec("", deny(group(GroupPublic)), deny(cidr("0.0.0.0/0"))),
			query: "example.com",
			want:  true,
		},
		{name: "a name no rule matches is answered under default deny", spec: spec("", allow(domain("ok.test"))), query: "other.test", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			p, err := Compile(tt.spec, testHost)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(p.AllowName(tt.query)).To(Equal(tt.want))
		})
	}
}

func TestFilterAnswer(t *testing.T) {
	public := "93.184.216.34"
	tests := []struct {
		name        string
		spec        *sandboxv1alpha1.NetworkSpec
		query       string
		ips         []netip.Addr
		wantKept    []netip.Addr
		wantDropped []netip.Addr
	}{
		{
			name:        "the public profile drops private, loopback, link-local, metadata, reserved and node answers",
			query:       "rebind.attacker.test",
			ips:         addrs(public, "10.0.0.5", "127.0.0.1", "169.254.1.1", "169.254.169.254", "0.0.0.0", "10.0.0.4", "::ffff:192.168.1.1", "fd00::1", "2606:4700::1"),
			wantKept:    addrs(public, "2606:4700::1"),
			wantDropped: addrs("10.0.0.5", "127.0.0.1", "169.254.1.1", "169.254.169.254", "0.0.0.0", "10.0.0.4", "::ffff:192.168.1.1", "fd00::1"),
		},
		{
			name:     "rebindProtection false keeps everything",
			spec:     &sandboxv1alpha1.NetworkSpec{DNS: &sandboxv1alpha1.DNSConfig{RebindProtection: ptr(false)}},
			query:    "rebind.attacker.test",
			ips:      addrs("10.0.0.5", "127.0.0.1"),
			wantKept: addrs("10.0.0.5", "127.0.0.1"),
		},
		{
			name:        "rebindProtection true is the same as unset",
			spec:        &sandboxv1alpha1.NetworkSpec{DNS: &sandboxv1alpha1.DNSConfig{RebindProtection: ptr(true)}},
			query:       "rebind.attacker.test",
			ips:         addrs("10.0.0.5"),
			wantDropped: addrs("10.0.0.5"),
		},
		{
			name:        "an allow cidr rule keeps the addresses it holds",
			spec:        spec("", allow(cidr("10.1.0.0/16"), port(5432))),
			query:       "db.test",
			ips:         addrs("10.1.2.3", "10.2.0.1"),
			wantKept:    addrs("10.1.2.3"),
			wantDropped: addrs("10.2.0.1"),
		},
		{
			name:        "a deny cidr rule does not keep the addresses it holds",
			spec:        spec(sandboxv1alpha1.PolicyAllow, deny(cidr("10.1.0.0/16"))),
			query:       "db.test",
			ips:         addrs("10.1.2.3"),
			wantDropped: addrs("10.1.2.3"),
		},
		{
			name:        "an allow group rule keeps its group and no other",
			spec:        spec("", allow(group(GroupPrivate))),
			query:       "db.test",
			ips:         addrs("10.1.2.3", "127.0.0.1", "10.0.0.4"),
			wantKept:    addrs("10.1.2.3"),
			wantDropped: addrs("127.0.0.1", "10.0.0.4"),
		},
		{
			name:     "an allow domain rule keeps every answer for that name",
			spec:     spec("", allow(domain("db.corp.test"))),
			query:    "DB.corp.test.",
			ips:      addrs("10.1.2.3", "127.0.0.1"),
			wantKept: addrs("10.1.2.3", "127.0.0.1"),
		},
		{
			name:     "an allow suffix rule keeps answers for names under it",
			spec:     spec("", allow(suffix(".corp.test"))),
			query:    "db.corp.test",
			ips:      addrs("10.1.2.3"),
			wantKept: addrs("10.1.2.3"),
		},
		{
			name:        "an allow domain rule for another name does not keep the answer",
			spec:        spec("", allow(domain("db.corp.test"))),
			query:       "evil.test",
			ips:         addrs("10.1.2.3"),
			wantDropped: addrs("10.1.2.3"),
		},
		{
			name:        "a disabled network drops everything",
			spec:        &sandboxv1alpha1.NetworkSpec{Enabled: ptr(false)},
			query:       "example.com",
			ips:         addrs(public),
			wantDropped: addrs(public),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			p, err := Compile(tt.spec, testHost)
			g.Expect(err).NotTo(HaveOccurred())
			in := append([]netip.Addr(nil), tt.ips...)
			kept, dropped := p.FilterAnswer(tt.query, in)
			g.Expect(kept).To(Equal(tt.wantKept))
			g.Expect(dropped).To(Equal(tt.wantDropped))
			g.Expect(in).To(Equal(tt.ips), "the input is not modified")
		})
	}
}
