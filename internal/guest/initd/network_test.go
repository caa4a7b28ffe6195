package initd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// slirp is the network the node agent gives every sandbox.
var slirp = protocol.Network{MAC: "52:54:00:12:34:56", Address: "10.0.2.15/24", Gateway: "10.0.2.2", Nameservers: []string{"10.0.2.3"}}

func TestParseNetwork(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mod     func(*protocol.Network)
		wantMTU int
		wantErr string
	}{
		{name: "the node agent's network, MTU 1500 by default", mod: func(*protocol.Network) {}, wantMTU: 1500},
		{name: "an MTU of 9000", mod: func(n *protocol.Network) { n.MTU = 9000 }, wantMTU: 9000},
		{name: "IPv6, without a gateway", mod: func(n *protocol.Network) { n.Address, n.Gateway = "fd00::15/64", "" }, wantMTU: 1500},
		{name: "a MAC in upper case", mod: func(n *protocol.Network) { n.MAC = "52:54:00:AB:CD:EF" }, wantMTU: 1500},
		{name: "no MAC", mod: func(n *protocol.Network) { n.MAC = "" }, wantErr: "MAC"},
		{name: "an address without a prefix length", mod: func(n *protocol.Network) { n.Address = "10.0.2.15" }, wantErr: "prefix length"},
		{name: "a gateway that is a name", mod: func(n *protocol.Network) { n.Gateway = "gw.local" }, wantErr: "gateway"},
		{name: "an IPv6 gateway for an IPv4 address", mod: func(n *protocol.Network) { n.Gateway = "fd00::2" }, wantErr: "different IP versions"},
		{name: "an MTU below IPv4's minimum", mod: func(n *protocol.Network) { n.MTU = 67 }, wantErr: "MTU 67"},
		{name: "an MTU above 65535", mod: func(n *protocol.Network) { n.MTU = 65536 }, wantErr: "MTU 65536"},
		{name: "a name server that is a name", mod: func(n *protocol.Network) { n.Nameservers = []string{"dns.local"} }, wantErr: "name server"},
		{name: "a search domain with a space", mod: func(n *protocol.Network) { n.Search = []string{"a b"} }, wantErr: "search domain"},
		{name: "an empty search domain", mod: func(n *protocol.Network) { n.Search = []string{""} }, wantErr: "search domain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			n := slirp
			tc.mod(&n)
			c, err := parseNetwork(n)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(c.mtu).To(Equal(tc.wantMTU))
			g.Expect(c.addr.String()).To(Equal(n.Address), "the address keeps its host bits")
		})
	}
}

func TestWriteResolvConf(t *testing.T) {
	const want = "# Written by sandbox-init from the sandbox's network configuration.\n" +
		"nameserver 10.0.2.3\nnameserver fd00::3\nsearch ns.svc.cluster.local svc.cluster.local\n"
	n := slirp
	n.Nameservers = append(n.Nameservers, "fd00::3")
	n.Search = []string{"ns.svc.cluster.local", "svc.cluster.local"}
	for _, tc := range []struct {
		name  string
		image map[string]string
	}{
		{name: "an image without /etc", image: map[string]string{}},
		{name: "an image's file is replaced, nothing of it kept", image: map[string]string{"etc/resolv.conf": "nameserver 8.8.8.8\noptions ndots:5\n"}},
		{
			name:  "a symlink out of the root is replaced, not followed",
			image: map[string]string{"etc/resolv.conf": "->/run/systemd/resolve/stub-resolv.conf", "run/systemd/resolve/": ""},
		},
		{name: "a relative symlink is replaced too", image: map[string]string{"etc/resolv.conf": "->../run/resolv.conf", "run/resolv.conf": "old"}},
		{name: "an /etc that links elsewhere in the root is followed", image: map[string]string{"etc": "->/private/etc", "private/etc/": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			root := tree(t, tc.image)
			g.Expect(WriteResolvConf(root, n)).To(Succeed())
			file := filepath.Join(root, "etc/resolv.conf")
			if strings.HasPrefix(tc.image["etc"], "->") {
				// An absolute link on this machine would leave the test's root.
				file = filepath.Join(root, "private/etc/resolv.conf")
			}
			g.Expect(os.ReadFile(file)).To(Equal([]byte(want)))
			fi, err := os.Lstat(file)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(fi.Mode()).To(Equal(os.FileMode(0o644)), "a regular file, mode 0644")
			if old, ok := tc.image["run/resolv.conf"]; ok {
				g.Expect(os.ReadFile(filepath.Join(root, "run/resolv.conf"))).To(Equal([]byte(old)), "the link's target is untouched")
			}
		})
	}

	g := NewWithT(t)
	g.Expect(WriteResolvConf(tree(t, map[string]string{"etc/resolv.conf/": ""}), n)).To(MatchError(ContainSubstring("writing /etc/resolv.conf")))
	bad := n
	bad.Nameservers = []string{"not-an-ip"}
	g.Expect(WriteResolvConf(t.TempDir(), bad)).To(MatchError(ContainSubstring("name server")))
	none := protocol.Network{}
	root := t.TempDir()
	g.Expect(WriteResolvConf(root, none)).To(Succeed())
	g.Expect(os.ReadFile(filepath.Join(root, "etc/resolv.conf"))).To(Equal([]byte("# Written by sandbox-init from the sandbox's network configuration.\n")),
		"no name servers: the resolver's default (none reachable)")
}
