// Command devenv runs the local control plane for `make dev`: a real
// kube-apiserver + etcd (the binaries hack/build-control-plane.sh built),
// with the project's CRDs installed and an admin kubeconfig written to
// --kubeconfig-out. It also registers this machine as the SandboxNode
// "local" and renews its Lease, standing in for the node agent until that
// exists; pass --register-node=false to skip it.
//
// It runs until interrupted, then stops the control plane.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/standin"
)

const (
	leaseNamespace = "sandbox-system"
	nodeName       = "local"
	leaseSeconds   = 40
)

func main() {
	var (
		kubeconfigOut, assets, crdDir string
		registerNode                  bool
	)
	flag.StringVar(&kubeconfigOut, "kubeconfig-out", "bin/dev/kubeconfig", "Where to write the admin kubeconfig.")
	flag.StringVar(&assets, "assets", "bin/k8s", "Directory holding kube-apiserver, etcd and kubectl.")
	flag.StringVar(&crdDir, "crds", "config/crd/bases", "Directory of the CRDs to install.")
	flag.BoolVar(&registerNode, "register-node", true, "Register this machine as SandboxNode \"local\" and renew its Lease (a stand-in for the node agent).")
	flag.Parse()

	if err := run(kubeconfigOut, assets, crdDir, registerNode); err != nil {
		fmt.Fprintln(os.Stderr, "devenv:", err)
		os.Exit(1)
	}
}

func run(kubeconfigOut, assets, crdDir string, registerNode bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	scheme := k8sruntime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(sandboxv1alpha1.AddToScheme(scheme))

	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{crdDir},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
	}
	if _, err := env.Start(); err != nil {
		return fmt.Errorf("failed to start kube-apiserver and etcd: %w", err)
	}
	defer func() { _ = env.Stop() }()

	user, err := env.AddUser(envtest.User{Name: "dev-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("failed to create the admin user: %w", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("failed to render the kubeconfig: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(kubeconfigOut), 0o755); err != nil {
		return err
	}
	// Write then rename: dev.sh waits for the file to appear.
	if err := os.WriteFile(kubeconfigOut+".tmp", kubeconfig, 0o600); err != nil {
		return err
	}
	if err := os.Rename(kubeconfigOut+".tmp", kubeconfigOut); err != nil {
		return err
	}
	defer func() { _ = os.Remove(kubeconfigOut) }()

	c, err := client.New(user.Config(), client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: leaseNamespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("failed to create namespace %s: %w", leaseNamespace, err)
	}
	fmt.Printf("devenv: kube-apiserver at %s, kubeconfig %s\n", user.Config().Host, kubeconfigOut)

	if registerNode {
		if err := standin.Register(ctx, c, leaseNamespace, localNode()); err != nil {
			return err
		}
		fmt.Printf("devenv: registered SandboxNode %q (stand-in for the node agent; it runs no VMs)\n", nodeName)
		standin.KeepRenewing(ctx, c, leaseNamespace, func() []string { return []string{nodeName} }, leaseSeconds/4*time.Second,
			func(err error) { fmt.Fprintln(os.Stderr, "devenv:", err) })
		return nil
	}
	<-ctx.Done()
	return nil
}

// localNode describes this machine: its real CPU count and memory, minus 1
// CPU and 1 GiB reserved, and kvm when /dev/kvm opens read-write.
func localNode() standin.Node {
	cpus := int32(runtime.NumCPU())
	memMiB := hostMemoryMiB()
	accel := sandboxv1alpha1.AcceleratorTCG
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		_ = f.Close()
		accel = sandboxv1alpha1.AcceleratorKVMName
	}
	return standin.Node{
		Name:          nodeName,
		Labels:        map[string]string{"kubernetes.io/hostname": nodeName},
		Capacity:      &sandboxv1alpha1.NodeResources{CPUs: cpus, MemoryMiB: memMiB, Sandboxes: 110},
		Allocatable:   sandboxv1alpha1.NodeResources{CPUs: max(cpus-1, 1), MemoryMiB: max(memMiB-1024, 0), Sandboxes: 110},
		Accelerator:   accel,
		Agent:         "hack/devenv",
		LeaseDuration: leaseSeconds * time.Second,
	}
}

// hostMemoryMiB reads MemTotal from /proc/meminfo (0 when unreadable).
func hostMemoryMiB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var kb int64
	if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err != nil {
		return 0
	}
	return kb / 1024
}
