package nodeagent

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestSplitAdvertise(t *testing.T) {
	for _, tc := range []struct {
		name, in, host, port, err string
	}{
		{name: "an IPv4 address and port", in: "10.0.0.5:10270", host: "10.0.0.5", port: "10270"},
		{name: "a bracketed IPv6 address and port", in: "[fd00::5]:10270", host: "fd00::5", port: "10270"},
		{name: "a bracketed IPv4 address and port, as the chart's [$(HOST_IP)]:port gives on an IPv4 node", in: "[10.0.0.5]:10270", host: "10.0.0.5", port: "10270"},
		{name: "an IPv6 address without brackets, as $(HOST_IP):port gives on an IPv6 node", in: "fd00::5:10270", host: "fd00::5", port: "10270"},
		{name: "a host name and port", in: "node-a.example:10270", host: "node-a.example", port: "10270"},
		{name: "port 0 (picked when bound)", in: "127.0.0.1:0", host: "127.0.0.1", port: "0"},
		{name: "no port is refused", in: "10.0.0.5", err: "missing port"},
		{name: "an IPv6 address alone is refused, not read as address fd00: and port 5", in: "fd00::5", err: "too many colons"},
		{name: "a port out of range after an IPv6 address is refused", in: "fd00::5:99999", err: "too many colons"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			host, port, err := splitAdvertise(tc.in)
			if tc.err != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.err)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect([]string{host, port}).To(Equal([]string{tc.host, tc.port}))
		})
	}
}
