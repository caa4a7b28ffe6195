package nodeagent

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/vmm/vmtest"
)

// throttledWriter writes a response body in chunks of chunk bytes, flushing
// each and sleeping pause after it, until the request is cancelled.
type throttledWriter struct {
	http.ResponseWriter
	ctx   context.Context
	chunk int
	pause time.Duration
}

func (w *throttledWriter) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		n := min(len(b), w.chunk)
		m, err := w.ResponseWriter.Write(b[:n])
		written += m
		if err != nil {
			return written, err
		}
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		b = b[n:]
		select {
		case <-w.ctx.Done():
			return written, w.ctx.Err()
		case <-time.After(w.pause):
		}
	}
	return written, nil
}

// TestLongPullReportsProgress runs the manager and a node agent against a
// registry that serves blobs at about 2 MiB/s, and an image whose one layer
// is 12 MiB of incompressible bytes: a pull of about 6 s. While it lasts,
// the ImageReady condition stays Unknown/Pulling and its message shows the
// compressed bytes done and total ("Pulling <ref>: x of y MiB"), and x grows.
// Deleting the sandbox then removes it (stopping the VM if it booted).
func TestLongPullReportsProgress(t *testing.T) {
	began := time.Now()
	kernel, modules := vmtest.Prereqs(t, "mkfs.ext4")
	initBin := buildSandboxInit(t, t.TempDir())

	const (
		layerBytes = 12 << 20
		chunk      = 256 << 10
		pause      = 125 * time.Millisecond // 256 KiB / 125 ms = 2 MiB/s
	)
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			w = &throttledWriter{ResponseWriter: w, ctx: r.Context(), chunk: chunk, pause: pause}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/big:v1"

	// Random bytes do not compress: the gzip layer is as large as the file.
	data := make([]byte, layerBytes)
	_, _ = rand.NewChaCha8([32]byte{42}).Read(data)
	pushImage(t, ref, []imageFile{{name: "blob.bin", mode: 0o644, data: data}})
	// The progress counts the layers' compressed bytes, as the manifest
	// gives them (not the config or the manifest).
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	layerSize, err := layers[0].Size()
	if err != nil {
		t.Fatal(err)
	}
	wantTotal := fmt.Sprintf("%.1f", float64(layerSize)/(1<<20))
	t.Logf("layer: %d bytes compressed (%s MiB); pushed after %v", layerSize, wantTotal, time.Since(began).Round(time.Millisecond))

	// Unix socket paths are limited to 107 bytes: a short state dir.
	stateDir, err := os.MkdirTemp("", "npg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(stateDir) })

	ctx := context.Background()
	const node, ns = "node-progress", "progress"
	if err := k8sClient.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, Labels: map[string]string{"kubernetes.io/hostname": node}}}); err != nil {
		t.Fatal(err)
	}
	if err := k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	args := testArgs(node)
	args.AllowEmulation = true
	args.Labels = nil
	args.StateDir = stateDir
	args.KernelPath, args.SandboxInitPath, args.GuestModulesDir = kernel, initBin, modules
	// Placement holds whole vCPUs and the test host may have two.
	args.Reserve = Reserve{CPUs: -8}
	runManager(t)
	stop := runAgent(t, args)
	defer stop()

	sbx := &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: "big", Namespace: ns},
		Spec: sandboxv1alpha1.SandboxSpec{
			Image:        ref,
			Resources:    sandboxv1alpha1.SandboxResources{CPUs: 1, MemoryMiB: 256},
			Registry:     &sandboxv1alpha1.RegistryOptions{Insecure: true},
			StopPolicy:   sandboxv1alpha1.StopPolicy{GracePeriodSeconds: ptr.To[int64](2)},
			NodeSelector: map[string]string{"kubernetes.io/hostname": node},
		},
	}
	g := NewWithT(t)
	g.Expect(k8sClient.Create(ctx, sbx)).To(Succeed())
	created := time.Now()
	deleted := false
	// Runs before the agent stops: a booted VM must not outlive the test.
	defer func() {
		if !deleted {
			_ = k8sClient.Delete(ctx, sbx)
		}
		g.Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(sbx), &sandboxv1alpha1.Sandbox{}))
		}).WithTimeout(30*time.Second).Should(BeTrue(), "the sandbox is deleted")
	}()

	progressRE := regexp.MustCompile(`^Pulling ` + regexp.QuoteMeta(ref) + `: (\d+\.\d) of (\d+\.\d) MiB$`)
	type seen struct {
		at   time.Duration
		cond metav1.Condition
	}
	var history []seen
	// progress polls the ImageReady condition, records each new message,
	// and returns the MiB done of the latest progress message (or -1).
	last := -1.0
	poll := func(g Gomega) float64 {
		cur := &sandboxv1alpha1.Sandbox{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(sbx), cur)).To(Succeed())
		c := condition(cur, sandboxv1alpha1.ConditionImageReady)
		if len(history) == 0 || history[len(history)-1].cond.Message != c.Message || history[len(history)-1].cond.Status != c.Status {
			history = append(history, seen{at: time.Since(created).Round(time.Millisecond), cond: c})
		}
		m := progressRE.FindStringSubmatch(c.Message)
		if m == nil {
			return last
		}
		g.Expect(c.Status).To(Equal(metav1.ConditionUnknown), "ImageReady: %+v", c)
		g.Expect(c.Reason).To(Equal(sandboxv1alpha1.ReasonImagePulling))
		done, err := strconv.ParseFloat(m[1], 64)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(m[2]).To(Equal(wantTotal), "the total is the layer's size: %q", c.Message)
		total, _ := strconv.ParseFloat(m[2], 64)
		g.Expect(done).To(BeNumerically("<=", total), "%q", c.Message)
		last = done
		return done
	}
	defer func() {
		for _, h := range history {
			t.Logf("+%v ImageReady %s/%s: %q", h.at, h.cond.Status, h.cond.Reason, h.cond.Message)
		}
	}()

	var first float64
	g.Eventually(func(g Gomega) {
		first = poll(g)
		g.Expect(first).To(BeNumerically(">", 0), "a progress message")
	}).WithTimeout(15*time.Second).WithPolling(50*time.Millisecond).Should(Succeed(), "history: %+v", history)
	g.Expect(fmt.Sprintf("%.1f", first)).NotTo(Equal(wantTotal), "progress shown before the pull ends")
	g.Eventually(func(g Gomega) {
		g.Expect(poll(g)).To(BeNumerically(">", first), "the progress moves")
	}).WithTimeout(10*time.Second).WithPolling(50*time.Millisecond).Should(Succeed(), "history: %+v", history)

	g.Expect(k8sClient.Delete(ctx, sbx)).To(Succeed())
	deleted = true
	t.Logf("progress %.1f → %.1f of %s MiB; deleting after %v", first, last, wantTotal, time.Since(created).Round(time.Millisecond))
}
