package manifest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// Cluster is a real kube-apiserver and etcd (envtest, binaries from assets)
// with an admin: a kubeconfig file for kubectl and a client. There is no
// kubelet, so Deployments and DaemonSets are only stored.
type Cluster struct {
	// Client acts as the admin (system:masters).
	Client              client.Client
	kubectl, kubeconfig string
}

// StartCluster starts one for the test (stopped at its end); kubectl is the
// binary Kubectl runs.
func StartCluster(t *testing.T, assets, kubectl string) *Cluster {
	t.Helper()
	ctrllog.SetLogger(logr.Discard())
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	if _, err := env.Start(); err != nil {
		t.Fatalf("starting envtest (kube-apiserver and etcd from %s): %v", assets, err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})
	admin, err := env.AddUser(envtest.User{Name: "install-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := admin.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(admin.Config(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &Cluster{Client: c, kubectl: kubectl, kubeconfig: path}
}

// Kubectl runs kubectl against the cluster as the admin and returns its
// combined output.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	return Run(c.kubectl, append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
}

// InstallCRDs creates CRDs (StandInCRD's) and waits until kubectl can list
// their objects.
func (c *Cluster) InstallCRDs(g gomega.Gomega, crds ...*unstructured.Unstructured) {
	for _, crd := range crds {
		g.Expect(c.Client.Create(context.Background(), crd)).To(gomega.Succeed())
		g.Eventually(func(g gomega.Gomega) {
			out, err := c.Kubectl("get", crd.GetName(), "-A")
			g.Expect(err).NotTo(gomega.HaveOccurred(), out)
		}).WithTimeout(30 * time.Second).WithPolling(200 * time.Millisecond).Should(gomega.Succeed())
	}
}
