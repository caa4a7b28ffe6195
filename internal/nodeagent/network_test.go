package nodeagent

import (
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/utils/ptr"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

func TestNameserversComeFromTheSpecOrTheNode(t *testing.T) {
	node := []string{"192.0.2.53:53"}
	for _, c := range []struct {
		name string
		spec *sandboxv1alpha1.NetworkSpec
		want []string
	}{
		{name: "no network spec: the node's", spec: nil, want: node},
		{name: "no dns: the node's", spec: &sandboxv1alpha1.NetworkSpec{}, want: node},
		{name: "addresses get port 53, ports are kept, IPv6 in brackets",
			spec: &sandboxv1alpha1.NetworkSpec{DNS: &sandboxv1alpha1.DNSConfig{Nameservers: []string{"127.0.0.1", "127.0.0.2:5353", "::1", "[::1]:5353"}}},
			want: []string{"127.0.0.1:53", "127.0.0.2:5353", "[::1]:53", "[::1]:5353"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			NewWithT(t).Expect(nameservers(c.spec, node)).To(Equal(c.want))
		})
	}
}

func TestNodeResolversReadResolvConf(t *testing.T) {
	g := NewWithT(t)
	path := filepath.Join(t.TempDir(), "resolv.conf")
	g.Expect(os.WriteFile(path, []byte("# comment\nnameserver 127.0.0.53\nnameserver ::1\nsearch example\n"), 0o644)).To(Succeed())
	g.Expect(nodeResolvers(path)).To(Equal([]string{"127.0.0.53:53", "[::1]:53"}))
	g.Expect(nodeResolvers(filepath.Join(t.TempDir(), "missing"))).To(BeEmpty())
}

func TestNetworkIsEnabledUnlessTurnedOff(t *testing.T) {
	g := NewWithT(t)
	sbx := &sandboxv1alpha1.Sandbox{}
	g.Expect(networkEnabled(sbx)).To(BeTrue())
	sbx.Spec.Network = &sandboxv1alpha1.NetworkSpec{}
	g.Expect(networkEnabled(sbx)).To(BeTrue())
	sbx.Spec.Network.Enabled = ptr.To(true)
	g.Expect(networkEnabled(sbx)).To(BeTrue())
	sbx.Spec.Network.Enabled = ptr.To(false)
	g.Expect(networkEnabled(sbx)).To(BeFalse())
}

func TestTheGuestNetworkMatchesTheStack(t *testing.T) {
	g := NewWithT(t)
	n := guestNetwork()
	g.Expect(n.Address).To(Equal("10.0.2.15/24"))
	g.Expect(n.Gateway).To(Equal("10.0.2.2"))
	g.Expect(n.Nameservers).To(Equal([]string{"10.0.2.3"}))
	g.Expect(n.MAC).To(Equal(vmNetworkDevice().MAC))
}
