package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/standin"
	"github.com/microvm-dev/sandbox-operator/pkg/client/clientset/versioned"
)

const (
	leaseNamespace    = "sandbox-system"
	benchNamespace    = "bench"
	baselineNamespace = "bench-baseline"

	nodeCPUs             = 64
	nodeMemMiB           = 65536
	leaseDurationSeconds = 40

	image = "docker.io/library/busybox:1.36"
)

// cluster is the envtest control plane and the benchmark's clients.
type cluster struct {
	env        *envtest.Environment
	cfg        *rest.Config
	kube       kubernetes.Interface
	sbx        versioned.Interface
	ctrl       client.Client
	kubeconfig string
}

func startCluster(ctx context.Context, root, tmp string) (*cluster, error) {
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		// KUBEBUILDER_ASSETS (the Makefile sets it) wins over this default.
		BinaryAssetsDirectory: filepath.Join(root, "bin", "k8s"),
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = env.BinaryAssetsDirectory
	}
	logf("starting kube-apiserver + etcd (envtest, binaries from %s)", assets)
	start := time.Now()
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("failed to start envtest: %w", err)
	}
	cl := &cluster{env: env}
	fail := func(err error) (*cluster, error) {
		_ = env.Stop()
		return nil, err
	}
	user, err := env.AddUser(envtest.User{Name: "bench-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fail(fmt.Errorf("failed to add the bench-admin user: %w", err))
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fail(fmt.Errorf("failed to build a kubeconfig: %w", err))
	}
	cl.kubeconfig = filepath.Join(tmp, "kubeconfig")
	if err := os.WriteFile(cl.kubeconfig, kc, 0o600); err != nil {
		return fail(err)
	}

	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 1000, 2000
	cfg.UserAgent = "placebench"
	cl.cfg = cfg
	if cl.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return fail(err)
	}
	if cl.sbx, err = versioned.NewForConfig(cfg); err != nil {
		return fail(err)
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(sandboxv1alpha1.AddToScheme(scheme))
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	if cl.ctrl, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return fail(err)
	}
	logf("control plane up in %s; kubeconfig %s", time.Since(start).Round(time.Millisecond), cl.kubeconfig)
	return cl, nil
}

func (cl *cluster) stop() error { return cl.env.Stop() }

func (cl *cluster) createNamespaces(ctx context.Context, names ...string) error {
	for _, n := range names {
		if _, err := cl.kube.CoreV1().Namespaces().Create(ctx,
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("failed to create namespace %s: %w", n, err)
		}
	}
	return nil
}

// createNodes registers Ready SandboxNodes and their Leases with the
// stand-in for node agents (internal/standin).
func (cl *cluster) createNodes(ctx context.Context, n, slots int) ([]string, error) {
	res := sandboxv1alpha1.NodeResources{CPUs: nodeCPUs, MemoryMiB: nodeMemMiB, Sandboxes: int32(slots)}
	names := make([]string, 0, n)
	for i := range n {
		name := fmt.Sprintf("node-%02d", i)
		if err := standin.Register(ctx, cl.ctrl, leaseNamespace, standin.Node{Name: name, Allocatable: res,
			Agent: "placebench", LeaseDuration: leaseDurationSeconds * time.Second}); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}

// renewLeases renews every node's Lease each period until ctx ends, as the
// node agents would. The first error is sent on the returned channel.
func (cl *cluster) renewLeases(ctx context.Context, names []string, period time.Duration) <-chan error {
	errs := make(chan error, 1)
	go standin.KeepRenewing(ctx, cl.ctrl, leaseNamespace, func() []string { return names }, period, func(err error) {
		select {
		case errs <- err:
		default:
		}
	})
	return errs
}

// scrapeAPIServer reads the kube-apiserver's own /metrics.
func (cl *cluster) scrapeAPIServer(ctx context.Context) (*metricsDump, error) {
	b, err := cl.kube.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed to scrape kube-apiserver metrics: %w", err)
	}
	return parseMetrics(string(b)), nil
}

// nodeCount is how many sandboxes one node got.
type nodeCount struct {
	node string
	n    int
}

// countPerNode lists the namespace's Sandboxes from the API server (not a
// cache) and counts them by status.nodeName, most first.
func (cl *cluster) countPerNode(ctx context.Context, ns string) ([]nodeCount, error) {
	list, err := cl.sbx.SandboxV1alpha1().Sandboxes(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("failed to list Sandboxes: %w", err)
	}
	m := map[string]int{}
	for i := range list.Items {
		if n := list.Items[i].Status.NodeName; n != "" {
			m[n]++
		}
	}
	out := make([]nodeCount, 0, len(m))
	for n, c := range m {
		out = append(out, nodeCount{n, c})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].n != out[j].n {
			return out[i].n > out[j].n
		}
		return out[i].node < out[j].node
	})
	return out, nil
}
