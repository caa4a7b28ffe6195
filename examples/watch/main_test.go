package main

// TestRun runs the watcher against a real kube-apiserver and etcd
// (controller-runtime's envtest) with the Sandbox CRD installed.
//
// The binaries come from KUBEBUILDER_ASSETS, or ../../bin/k8s when it is
// unset (make control-plane builds them there); without either the test
// fails.

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// syncBuffer is a bytes.Buffer that run's handlers may write while the test
// reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestRun(t *testing.T) {
	g := NewWithT(t)
	ctrllog.SetLogger(logr.Discard())

	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join("..", "..", "bin", "k8s")
	}
	if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
		t.Fatalf("no kube-apiserver in %s: run `make control-plane` or set KUBEBUILDER_ASSETS", assets)
	}

	testEnv := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	cfg, err := testEnv.Start()
	g.Expect(err).NotTo(HaveOccurred(), "starting envtest")
	t.Cleanup(func() {
		if err := testEnv.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})

	scheme := runtime.NewScheme()
	g.Expect(corev1.AddToScheme(scheme)).To(Succeed())
	g.Expect(sandboxv1alpha1.AddToScheme(scheme)).To(Succeed())
	k8sClient, err := client.New(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const ns = "watch"
	g.Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())

	// A Sandbox in another namespace, created before the watcher starts:
	// run watches only ns, so it must never print it.
	other := &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: metav1.NamespaceDefault},
		Spec:       sandboxv1alpha1.SandboxSpec{Image: "docker.io/library/busybox:1.36"},
	}
	g.Expect(k8sClient.Create(ctx, other)).To(Succeed())

	// Run the watcher until runCancel.
	out := &syncBuffer{}
	runCtx, runCancel := context.WithCancel(ctx)
	defer runCancel()
	done := make(chan error, 1)
	go func() { done <- run(runCtx, cfg, ns, out) }()

	// Creation: a new Sandbox has no status yet.
	sb := &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: "demo", Namespace: ns},
		Spec:       sandboxv1alpha1.SandboxSpec{Image: "docker.io/library/busybox:1.36"},
	}
	g.Expect(k8sClient.Create(ctx, sb)).To(Succeed())
	created := "watch/demo phase=<none> node=<none> ready=Unknown reason=<none>\n"
	g.Eventually(out.String).WithTimeout(30 * time.Second).Should(ContainSubstring(created))

	// Status change, as the manager would write it: placed on node-a and
	// starting.
	sb.Status.Phase = sandboxv1alpha1.PhaseStarting
	sb.Status.NodeName = "node-a"
	meta.SetStatusCondition(&sb.Status.Conditions, metav1.Condition{
		Type:    sandboxv1alpha1.ConditionReady,
		Status:  metav1.ConditionFalse,
		Reason:  sandboxv1alpha1.ReasonStarting,
		Message: "booting",
	})
	g.Expect(k8sClient.Status().Update(ctx, sb)).To(Succeed())
	starting := "watch/demo phase=Starting node=node-a ready=False reason=Starting\n"
	g.Eventually(out.String).WithTimeout(30 * time.Second).Should(ContainSubstring(starting))

	// A change that leaves phase, node and Ready alone prints nothing.
	sb.Labels = map[string]string{"team": "a"}
	g.Expect(k8sClient.Update(ctx, sb)).To(Succeed())

	// Deletion. There is no controller, hence no finalizer: the Sandbox
	// goes at once.
	g.Expect(k8sClient.Delete(ctx, sb)).To(Succeed())
	deleted := "watch/demo deleted\n"
	g.Eventually(out.String).WithTimeout(30 * time.Second).Should(ContainSubstring(deleted))

	// The handler sees events in order, so once the deletion is printed the
	// label change has been handled too: the output is exactly three lines,
	// and nothing of the other namespace.
	g.Expect(out.String()).To(Equal(created+starting+deleted), "output:\n%s", out.String())
	g.Expect(out.String()).NotTo(ContainSubstring("other"))

	// Cancelling the context stops run, without an error.
	runCancel()
	g.Eventually(done).WithTimeout(30 * time.Second).Should(Receive(BeNil()))
}

// TestRunNoServer checks that run returns the error of its first List
// instead of letting the informer retry forever. It needs no API server.
func TestRunNoServer(t *testing.T) {
	g := NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Nothing listens on port 1: the connection is refused at once.
	err := run(ctx, &rest.Config{Host: "http://127.0.0.1:1"}, "", &syncBuffer{})
	g.Expect(err).To(MatchError(ContainSubstring("listing sandboxes")))
}
