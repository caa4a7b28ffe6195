package nodeagent

import (
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/netstack"
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
	n := netstack.GuestNetwork()
	g.Expect(n.Address).To(Equal("10.0.2.15/24"))
	g.Expect(n.Gateway).To(Equal("10.0.2.2"))
	g.Expect(n.Nameservers).To(Equal([]string{"10.0.2.3"}))
	g.Expect(n.MAC).To(Equal(vmNetworkDevice().MAC))
}

// fakeObjects serves Secrets from a map.
type fakeObjects map[string]map[string][]byte

func (f fakeObjects) secret(name string) (map[string][]byte, error)    { return f[name], nil }
func (f fakeObjects) configMap(name string) (map[string][]byte, error) { return nil, nil }

func TestPlanSecretsGivesTheGuestPlaceholdersOnly(t *testing.T) {
	g := NewWithT(t)
	sbx := &sandboxv1alpha1.Sandbox{}
	sbx.Spec.Network = &sandboxv1alpha1.NetworkSpec{Secrets: []sandboxv1alpha1.NetworkSecret{
		{EnvVar: "API_TOKEN", SecretKeyRef: corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "token"},
			AllowedHosts: []string{"api.example.com"}},
		{EnvVar: "DB", Placeholder: "db-placeholder-1", SecretKeyRef: corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "db"},
			AllowedHosts: []string{"*.db.example.com"}, Injection: &sandboxv1alpha1.SecretInjection{Headers: ptr.To(false), Body: true}},
	}}
	g.Expect(hasSecrets(sbx)).To(BeTrue())
	objs := fakeObjects{"s": {"token": []byte("t0ken"), "db": []byte("pw")}}
	secrets, env, err := planSecrets(sbx, objs)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(env).To(Equal([]string{"API_TOKEN=$SANDBOX_SECRET_API_TOKEN", "DB=db-placeholder-1"}))
	g.Expect(secrets).To(HaveLen(2))
	g.Expect(secrets[0].Value).To(Equal([]byte("t0ken")))
	g.Expect(secrets[0].Headers && secrets[0].BasicAuth && !secrets[0].Body).To(BeTrue(), "the API's defaults: headers and basic auth")
	g.Expect(secrets[1].Headers).To(BeFalse())
	g.Expect(secrets[1].BasicAuth && secrets[1].Body).To(BeTrue())
	for _, e := range env {
		g.Expect(e).NotTo(Or(ContainSubstring("t0ken"), ContainSubstring("=pw")))
	}

	_, _, err = planSecrets(sbx, fakeObjects{"s": {"token": []byte("x")}})
	g.Expect(err).To(MatchError(ContainSubstring(`key "db" of Secret s not found`)))

	sbx.Spec.Network.Enabled = ptr.To(false)
	g.Expect(hasSecrets(sbx)).To(BeFalse())
}

func TestWithEnvReplacesEarlierValues(t *testing.T) {
	NewWithT(t).Expect(withEnv([]string{"A=1", "TOKEN=real", "B=2"}, []string{"TOKEN=placeholder"})).
		To(Equal([]string{"A=1", "B=2", "TOKEN=placeholder"}))
}

func TestTheEgressCAIsKeptInTheRunDirectory(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	_, err := egressCA(dir, false)
	g.Expect(err).To(HaveOccurred(), "an adopting agent finds none to load")
	made, err := egressCA(dir, true)
	g.Expect(err).NotTo(HaveOccurred())
	fi, err := os.Stat(filepath.Join(dir, egressCAFile))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(fi.Mode().Perm()).To(Equal(os.FileMode(0o600)))
	loaded, err := egressCA(dir, false)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(loaded.CertPEM).To(Equal(made.CertPEM), "a re-adopting agent intercepts with the CA the guest trusts")
	g.Expect(loaded.Key.Equal(made.Key)).To(BeTrue())
	patches := trustPatches(loaded)
	g.Expect(patches).To(HaveLen(2))
	g.Expect(patches[1].Path).To(Equal(guestCABundle))
}
