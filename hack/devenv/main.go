// Command devenv runs the local control plane for `make dev`: a real
// kube-apiserver + etcd (the binaries hack/build-control-plane.sh built),
// with the project's CRDs installed and an admin kubeconfig written to
// --kubeconfig-out. It also serves an in-memory image registry on
// --registry-addr holding dev/busybox:1, an image built from the host's
// busybox-static, so that the dev samples boot without the internet. (The
// node agent, bin/node-agent, registers the machine as a SandboxNode;
// hack/dev.sh runs both.)
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
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/access"
	"github.com/microvm-dev/sandbox-operator/internal/devimage"
)

const (
	leaseNamespace = "sandbox-system"
)

func main() {
	var (
		kubeconfigOut, assets, crdDir, registryAddr, busybox string
		accessPort                                           int
	)
	flag.StringVar(&kubeconfigOut, "kubeconfig-out", "bin/dev/kubeconfig", "Where to write the admin kubeconfig.")
	flag.StringVar(&assets, "assets", "bin/k8s", "Directory holding kube-apiserver, etcd and kubectl.")
	flag.StringVar(&crdDir, "crds", "config/crd/bases", "Directory of the CRDs to install.")
	flag.StringVar(&registryAddr, "registry-addr", "127.0.0.1:5000", "Loopback address of the dev image registry (empty: none).")
	flag.StringVar(&busybox, "busybox", devimage.DefaultBusybox, "The static busybox the dev image is built from.")
	flag.IntVar(&accessPort, "access-port", 8443, "Port of the manager's access API on 127.0.0.1: the kube-apiserver runs with the aggregation layer and Service sandbox-system/sandbox-access points there (0: no access API).")
	flag.Parse()

	if registryAddr != "" {
		reg, err := serveDevImage(registryAddr, busybox)
		if err != nil {
			fmt.Fprintln(os.Stderr, "devenv:", err)
			os.Exit(1)
		}
		defer func() { _ = reg.Close() }()
	}
	if err := run(kubeconfigOut, assets, crdDir, accessPort); err != nil {
		fmt.Fprintln(os.Stderr, "devenv:", err)
		os.Exit(1)
	}
}

// serveDevImage serves dev/busybox:1: busybox-static and its applets, an
// unprivileged user app, and a Cmd that greets and idles.
func serveDevImage(addr, busybox string) (*devimage.Registry, error) {
	files, err := devimage.Busybox(busybox)
	if err != nil {
		return nil, err
	}
	img, err := devimage.Image(files, v1.Config{
		Cmd: []string{"/bin/sh", "-c", "echo hello from $(hostname) as $(id -un); exec sleep 86400"},
		Env: []string{"PATH=/usr/bin:/bin"},
	})
	if err != nil {
		return nil, err
	}
	reg, err := devimage.Serve(addr)
	if err != nil {
		return nil, fmt.Errorf("serving the dev image registry: %w", err)
	}
	ref, err := reg.Push("dev/busybox:1", img)
	if err != nil {
		_ = reg.Close()
		return nil, err
	}
	fmt.Printf("devenv: image %s\n", ref)
	return reg, nil
}

// configureFrontProxy makes a front-proxy CA and client certificate in dir
// and passes them to the kube-apiserver, as a cluster that serves
// aggregated APIs (metrics-server) is configured.
func configureFrontProxy(env *envtest.Environment, dir string) error {
	ca, err := access.NewCA("dev-front-proxy-ca", 24*time.Hour)
	if err != nil {
		return err
	}
	pair, err := ca.IssueClient("front-proxy-client", nil, 24*time.Hour)
	if err != nil {
		return err
	}
	files := map[string][]byte{"front-proxy-ca.crt": ca.CertPEM, "front-proxy-client.crt": pair.CertPEM, "front-proxy-client.key": pair.KeyPEM}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	env.ControlPlane.GetAPIServer().Configure().
		Set("requestheader-client-ca-file", filepath.Join(dir, "front-proxy-ca.crt")).
		Set("requestheader-allowed-names", "front-proxy-client").
		Set("requestheader-username-headers", "X-Remote-User").
		Set("requestheader-group-headers", "X-Remote-Group").
		Set("requestheader-extra-headers-prefix", "X-Remote-Extra-").
		Set("proxy-client-cert-file", filepath.Join(dir, "front-proxy-client.crt")).
		Set("proxy-client-key-file", filepath.Join(dir, "front-proxy-client.key"))
	return nil
}

func run(kubeconfigOut, assets, crdDir string, accessPort int) error {
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
	if accessPort != 0 {
		// The aggregation layer: the kube-apiserver proxies the access API
		// (subresources.sandbox.microvm.dev) to the manager with its
		// front-proxy client certificate.
		if err := configureFrontProxy(env, filepath.Dir(kubeconfigOut)); err != nil {
			return err
		}
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
	if accessPort != 0 {
		// Reach the manager on loopback: an ExternalName Service to localhost.
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "sandbox-access", Namespace: leaseNamespace},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost",
				Ports: []corev1.ServicePort{{Port: int32(accessPort), TargetPort: intstr.FromInt32(int32(accessPort))}}},
		}
		if err := c.Create(ctx, svc); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("failed to create the access Service: %w", err)
		}
	}
	fmt.Printf("devenv: kube-apiserver at %s, kubeconfig %s\n", user.Config().Host, kubeconfigOut)

	<-ctx.Done()
	return nil
}
