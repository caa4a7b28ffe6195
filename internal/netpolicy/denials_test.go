package netpolicy

import (
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

func TestDenials(t *testing.T) {
	profile, err := Compile(nil, testHost)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	custom, err := Compile(spec("", deny(domain("evil.test")), allow(cidr("10.1.2.3/32"))), testHost)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())

	type decided struct {
		p *Policy
		f Flow
	}
	tests := []struct {
		name        string
		opts        []DenialsOption
		flows       []decided
		wantTotal   uint64
		wantByClass map[string]uint64
		// wantRecent are the reasons of the recent denials, oldest first.
		wantRecent []string
	}{
		{
			name:        "nothing recorded is an empty snapshot",
			wantByClass: map[string]uint64{},
		},
		{
			name: "allowed flows are not counted",
			flows: []decided{
				{profile, tcp("93.184.216.34:443")},
				{custom, tcp("10.1.2.3:80")},
			},
			wantByClass: map[string]uint64{},
		},
		{
			name: "denials are counted by class",
			flows: []decided{
				{profile, tcp("10.0.0.5:80")},
				{profile, tcp("192.168.1.1:80")},
				{profile, tcp("169.254.169.254:80")},
				{profile, udp("255.255.255.255:67")},
				{custom, tcp("93.184.216.34:443", "evil.test")},
				{custom, tcp("93.184.216.34:443")},
			},
			wantTotal: 6,
			wantByClass: map[string]uint64{
				"group:Private": 2, "group:Metadata": 1, ClassReserved: 1, ClassRule: 1, ClassDefault: 1,
			},
			wantRecent: []string{
				`denied by the default "public" profile: 10.0.0.5 is in a private range (10.0.0.0/8)`,
				`denied by the default "public" profile: 192.168.1.1 is in a private range (192.168.0.0/16)`,
				`denied by the default "public" profile: 169.254.169.254 is the cloud metadata address`,
				`denied by the default "public" profile: 255.255.255.255 is the broadcast address`,
				`denied by rule 0 (domain evil.test)`,
				`denied by defaultEgress Deny: no rule matches TCP 93.184.216.34:443 (a public address)`,
			},
		},
		{
			name: "the ring keeps only the newest denials, oldest first",
			opts: []DenialsOption{WithRecentDenials(3)},
			flows: func() []decided {
				var ds []decided
				for i := 1; i <= 5; i++ {
					ds = append(ds, decided{profile, tcp(fmt.Sprintf("10.0.1.%d:80", i))})
				}
				return ds
			}(),
			wantTotal:   5,
			wantByClass: map[string]uint64{"group:Private": 5},
			wantRecent: []string{
				`denied by the default "public" profile: 10.0.1.3 is in a private range (10.0.0.0/8)`,
				`denied by the default "public" profile: 10.0.1.4 is in a private range (10.0.0.0/8)`,
				`denied by the default "public" profile: 10.0.1.5 is in a private range (10.0.0.0/8)`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c := newFakeClock()
			d := NewDenials(append([]DenialsOption{WithDenialsClock(c.Now)}, tt.opts...)...)
			for _, fd := range tt.flows {
				d.Record(fd.f, fd.p.Decide(fd.f))
				c.Step(time.Second)
			}
			s := d.Snapshot()
			g.Expect(s.Total).To(Equal(tt.wantTotal))
			g.Expect(s.ByClass).To(Equal(tt.wantByClass))
			reasons := make([]string, 0, len(s.Recent))
			for _, r := range s.Recent {
				reasons = append(reasons, r.Reason)
			}
			g.Expect(reasons).To(Equal(append([]string{}, tt.wantRecent...)))
		})
	}
}

func TestDenialsRecordsTheFlow(t *testing.T) {
	g := NewWithT(t)
	p, err := Compile(spec(sandboxv1alpha1.PolicyAllow, deny(suffix("evil.test"), protos("UDP"))), testHost)
	g.Expect(err).NotTo(HaveOccurred())
	c := newFakeClock()
	d := NewDenials(WithDenialsClock(c.Now))

	names := make([]string, 0, 12)
	for i := range 12 {
		names = append(names, fmt.Sprintf("n%d.evil.test", i))
	}
	f := udp("93.184.216.34:443", names...)
	d.Record(f, p.Decide(f))
	names[0] = "changed.test"

	s := d.Snapshot()
	g.Expect(s.Recent).To(HaveLen(1))
	r := s.Recent[0]
	g.Expect(r.Time).To(Equal(c.Now()))
	g.Expect(r.Proto).To(Equal(ProtoUDP))
	g.Expect(r.Dst).To(Equal(f.Dst))
	g.Expect(r.Rule).To(Equal(0))
	g.Expect(r.Class).To(Equal(ClassRule))
	g.Expect(r.Reason).To(Equal("denied by rule 0 (domainSuffix .evil.test, UDP)"))
	g.Expect(r.Names).To(HaveLen(8), "names are bounded")
	g.Expect(r.Names[0]).To(Equal("n0.evil.test"), "names are copied")
}
