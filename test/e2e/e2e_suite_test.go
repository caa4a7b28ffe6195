//go:build e2e

// Package e2e runs sandbox-operator end to end, as processes: a real
// kube-apiserver + etcd (controller-runtime's envtest, the binaries
// hack/build-control-plane.sh built), the Helm chart's ServiceAccounts,
// RBAC and admission policy applied with kubectl (identities_test.go), the
// samples, and bin/manager as a separate OS process with leader election,
// authenticated as the chart's ServiceAccount with a TokenRequest token (so
// the chart's permissions are shown to be sufficient, not just
// well-formed); kubectl and the test's own clients act as an admin user
// (system:masters).
//
// Two top-level containers, each with its own manager process (Ginkgo runs
// top-level containers in random order; each stops its manager when done,
// which releases the leader Lease):
//
//   - "sandbox-operator" (e2e_test.go): the manager's placement and
//     lifecycle against stand-in node agents (internal/standin: the test
//     registers SandboxNodes, renews their Leases and reports VM
//     observations with server-side apply) — samples, a manager crash, node
//     loss, deletion.
//   - NodeAgentVMSpec (vm_test.go): two real node agents (bin/node-agent)
//     as processes under the chart's node-agent ServiceAccount (tokens bound
//     to Pod objects on their nodes, checked by the chart's admission
//     policy), booting QEMU microVMs
//     (TCG where there is no KVM) from an image the test builds and serves
//     from an in-memory registry on 127.0.0.1. It needs bin/sandbox-init,
//     bin/guest (`make guest-kernel`), qemu-system-x86_64, mkfs.ext4 and a
//     static busybox (hack/setup.sh), and fails, rather than skips,
//     without them. Its manager also serves the access API
//     (access_test.go): the API server runs with the aggregation layer
//     configured (a front-proxy CA and client certificate), and reaches
//     the manager on loopback through an ExternalName Service; users
//     alice and bob exec in a Running sandbox with client-go's executor,
//     and alice runs bin/kubectl-sandbox (plugin_test.go) with a
//     kubeconfig of her own: exec -it on a pty the test opens, cp, the
//     file commands, logs -f across a restart of the sandbox's agent.
//
// Run it with `make test-e2e`, or after `make build guest-kernel`:
//
//	go test -count=1 -tags e2e -timeout 20m ./test/e2e/ -v -ginkgo.v
//
// The work directory (kubeconfigs, manifests, the processes' logs) is
// removed after a passing run and kept after a failing one, or always with
// E2E_KEEP_WORKDIR=1; so are the node agents' state directories (VM run
// directories with their consoles), in $TMPDIR/e2e-vm-*.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/access"
	"github.com/microvm-dev/sandbox-operator/pkg/client/clientset/versioned"
)

const (
	// leaseNamespace holds the node Leases and the manager's leader
	// election Lease (the manager's defaults).
	leaseNamespace = "sandbox-system"
	// leaderElectionID is the manager's leader election Lease name
	// (cmd/manager/main.go).
	leaderElectionID = "sandbox-manager.sandbox.microvm.dev"
	// sampleNamespace is where config/samples puts its Sandboxes.
	sampleNamespace = "default"
	// managerServiceAccount is the manager's ServiceAccount (the chart's
	// manager.serviceAccount.name, as config/rbac names it).
	managerServiceAccount = "sandbox-manager"

	// Stand-in node agents: a 6 s Lease renewed every 2 s.
	nodeLeaseDuration = 6 * time.Second
	leaseRenewEvery   = 2 * time.Second
	// The manager's timing flags: short, so that node loss and restarts
	// happen within a spec.
	nodeLostGrace  = 3 * time.Second
	restartBackoff = 500 * time.Millisecond

	// Each stand-in node offers 4 vCPUs, 8 GiB and 8 sandbox slots.
	nodeCPUs      = 4
	nodeMemoryMiB = 8192
	nodeSlots     = 8
)

var (
	testEnv *envtest.Environment
	// k8sClient reads and writes straight to the API server as the admin
	// user (no cache): assertions see what is stored.
	k8sClient client.Client
	// sbxClientset is the generated typed clientset (pkg/client), as users
	// of the API would watch Sandboxes.
	sbxClientset versioned.Interface

	// workDir holds the kubeconfig, the manifests the specs write and the
	// manager's log; kept when a spec failed.
	workDir        string
	kubeconfigPath string
	// managerKubeconfigPath authenticates as the manager's ServiceAccount.
	managerKubeconfigPath string
	kubectlPath           string
	managerBin            string

	mgr    *process
	agents *nodeAgents

	anySpecFailed bool
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "sandbox-operator e2e suite")
}

var _ = BeforeSuite(func() {
	SetDefaultEventuallyTimeout(30 * time.Second)
	SetDefaultEventuallyPollingInterval(200 * time.Millisecond)
	SetDefaultConsistentlyDuration(3 * time.Second)
	SetDefaultConsistentlyPollingInterval(200 * time.Millisecond)

	// KUBEBUILDER_ASSETS (the Makefile sets it) wins; this default lets a
	// plain `go test` find the binaries hack/build-control-plane.sh built.
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join("..", "..", "bin", "k8s")
	}
	var err error
	assets, err = filepath.Abs(assets)
	Expect(err).NotTo(HaveOccurred())
	for _, b := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if err := errIfMissing(filepath.Join(assets, b), "run `make control-plane` or set KUBEBUILDER_ASSETS"); err != nil {
			Fail(err.Error())
		}
	}
	kubectlPath = filepath.Join(assets, "kubectl")
	managerBin, err = filepath.Abs(filepath.Join("..", "..", "bin", "manager"))
	Expect(err).NotTo(HaveOccurred())
	if err := errIfMissing(managerBin, "run `make build` (or `make test-e2e`, which builds it)"); err != nil {
		Fail(err.Error())
	}

	workDir, err = os.MkdirTemp("", "sandbox-e2e-")
	Expect(err).NotTo(HaveOccurred())
	fmt.Fprintf(GinkgoWriter, "work directory (kubeconfig, manifests, manager.log): %s\n", workDir)

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(sandboxv1alpha1.AddToScheme(scheme))

	By("starting kube-apiserver (with the aggregation layer: front-proxy CA and client certificate) and etcd with the CRDs")
	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
		Scheme:                scheme,
	}
	configureAggregation(testEnv, workDir)
	_, err = testEnv.Start()
	Expect(err).NotTo(HaveOccurred())

	By("adding an admin user (system:masters) and writing its kubeconfig")
	admin, err := testEnv.AddUser(envtest.User{Name: "e2e-admin", Groups: []string{"system:masters"}}, nil)
	Expect(err).NotTo(HaveOccurred())
	kubeconfig, err := admin.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	kubeconfigPath = filepath.Join(workDir, "kubeconfig")
	Expect(os.WriteFile(kubeconfigPath, kubeconfig, 0o600)).To(Succeed())

	k8sClient, err = client.New(admin.Config(), client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())
	sbxClientset, err = versioned.NewForConfig(admin.Config())
	Expect(err).NotTo(HaveOccurred())

	By("creating namespace " + leaseNamespace)
	Expect(k8sClient.Create(context.Background(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: leaseNamespace}})).To(Succeed())

	By("applying the Helm chart's ServiceAccounts, RBAC and node restriction policy (helm template), and minting the manager's token (TokenRequest)")
	applyChartIdentities()
	managerKubeconfigPath = tokenKubeconfig("manager", managerServiceAccount, nil)
})

// configureAggregation sets up the API server's aggregation layer, as a
// cluster's control plane has it: a front-proxy (requestheader) CA it
// trusts for X-Remote-User/Group headers, and a client certificate from
// that CA it presents to aggregated API servers (the manager's access API,
// which reads the CA from kube-system/extension-apiserver-authentication).
func configureAggregation(env *envtest.Environment, dir string) {
	GinkgoHelper()
	frontCA, err := access.NewCA("e2e-front-proxy-ca", 24*time.Hour)
	Expect(err).NotTo(HaveOccurred())
	proxyClient, err := frontCA.IssueClient("front-proxy-client", nil, 24*time.Hour)
	Expect(err).NotTo(HaveOccurred())
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		Expect(os.WriteFile(p, b, 0o600)).To(Succeed())
		return p
	}
	env.ControlPlane.GetAPIServer().Configure().
		Set("requestheader-client-ca-file", write("front-proxy-ca.crt", frontCA.CertPEM)).
		Set("requestheader-allowed-names", "front-proxy-client").
		Set("requestheader-username-headers", "X-Remote-User").
		Set("requestheader-group-headers", "X-Remote-Group").
		Set("requestheader-extra-headers-prefix", "X-Remote-Extra-").
		Set("proxy-client-cert-file", write("front-proxy-client.crt", proxyClient.CertPEM)).
		Set("proxy-client-key-file", write("front-proxy-client.key", proxyClient.KeyPEM))
}

var _ = AfterSuite(func() {
	agents.stop()
	if mgr != nil && mgr.running() {
		By("stopping the manager (SIGTERM)")
		err := mgr.stop(15 * time.Second)
		Expect(err).NotTo(HaveOccurred(), "manager log:\n%s", mgr.logTail(40))
	}
	if testEnv != nil {
		By("stopping kube-apiserver and etcd")
		Expect(testEnv.Stop()).To(Succeed())
	}
	if workDir != "" {
		if anySpecFailed || os.Getenv("E2E_KEEP_WORKDIR") != "" {
			fmt.Fprintf(GinkgoWriter, "keeping %s (a spec failed)\n", workDir)
		} else {
			_ = os.RemoveAll(workDir)
		}
	}
})
