package nodeagent

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/controller"
	"github.com/microvm-dev/sandbox-operator/internal/placement"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
	"github.com/microvm-dev/sandbox-operator/internal/vmm/vmtest"
)

// buildSandboxInit compiles sandbox-init (static) into dir.
func buildSandboxInit(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "sandbox-init")
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", bin, "../../cmd/sandbox-init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building sandbox-init: %v\n%s", err, out)
	}
	return bin
}

// imageFile is a file of a test image's layer.
type imageFile struct {
	name string
	mode int64
	data []byte
}

// serveImage serves a one-file linux/amd64 image as <host>/small:v1 from an
// in-memory registry, and the same with extra as <host>/small:extra, and
// returns the registry's host.
func serveImage(t *testing.T, extra ...imageFile) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")

	base := []imageFile{{name: "hello.txt", mode: 0o644, data: []byte("hello from the image\n")}}
	pushImage(t, host+"/small:v1", base)
	pushImage(t, host+"/small:extra", append(base, extra...))
	return host
}

// pushImage pushes a one-layer linux/amd64 image of files to ref.
func pushImage(t *testing.T, ref string, files []imageFile) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		if d := filepath.Dir(f.name); d != "." && !dirs[d] {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "amd64", RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
}

// exit3Source is a program that prints its FOO and exits with code 3.
const exit3Source = `package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Println("FOO=" + os.Getenv("FOO"))
	os.Exit(3)
}
`

// buildExit3 compiles exit3Source (static) and returns the binary.
func buildExit3(t *testing.T, dir string) []byte {
	t.Helper()
	src := filepath.Join(dir, "exit3")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(exit3Source), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module exit3\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "exit3.bin")
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", bin, ".")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building exit3: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runManager runs the real manager-side Sandbox reconciler until the test
// ends.
func runManager(t *testing.T) {
	t.Helper()
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(sandboxv1alpha1.AddToScheme(scheme))
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		// Several tests of the package run a manager: controller-runtime
		// refuses a second controller named "sandbox" in one process unless
		// name validation is skipped.
		Controller: ctrlconfig.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&controller.SandboxReconciler{
		Client:            mgr.GetClient(),
		Recorder:          mgr.GetEventRecorder("sandbox-manager"),
		Assumer:           placement.NewAssumer(30 * time.Second),
		LeaseNamespace:    "sandbox-system",
		NodeLostGrace:     30 * time.Second,
		RestartBackoff:    time.Second,
		MaxRestartBackoff: 2 * time.Second,
	}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager stopped with %v", err)
		}
	})
}

func condition(s *sandboxv1alpha1.Sandbox, t string) metav1.Condition {
	if c := meta.FindStatusCondition(s.Status.Conditions, t); c != nil {
		return *c
	}
	return metav1.Condition{}
}

// TestAgentRunsSandboxVMs runs the manager and a node agent together: a
// Sandbox's VM boots from an image served by a local registry, stops when
// asked, and its deletion waits for the VM to be gone.
func TestAgentRunsSandboxVMs(t *testing.T) {
	kernel, modules := vmtest.Prereqs(t, "mkfs.ext4")
	work := t.TempDir()
	initBin := buildSandboxInit(t, work)
	host := serveImage(t, imageFile{name: "bin/exit3", mode: 0o755, data: buildExit3(t, work)})

	// Unix socket paths are limited to 107 bytes: a short state dir.
	stateDir, err := os.MkdirTemp("", "na")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(stateDir) })

	ctx := context.Background()
	const node = "node-vm"
	if err := k8sClient.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, Labels: map[string]string{"kubernetes.io/hostname": node}}}); err != nil {
		t.Fatal(err)
	}
	if err := k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "vms"}}); err != nil {
		t.Fatal(err)
	}
	args := testArgs(node)
	args.AllowEmulation = true
	args.Labels = nil
	args.StateDir = stateDir
	args.KernelPath, args.SandboxInitPath, args.GuestModulesDir = kernel, initBin, modules
	runManager(t)
	stop := runAgent(t, args)
	defer stop()

	newSandbox := func(n, img string) *sandboxv1alpha1.Sandbox {
		return &sandboxv1alpha1.Sandbox{
			ObjectMeta: metav1.ObjectMeta{Name: n, Namespace: "vms"},
			Spec: sandboxv1alpha1.SandboxSpec{
				Image:      img,
				Resources:  sandboxv1alpha1.SandboxResources{CPUs: 1, MemoryMiB: 256},
				Registry:   &sandboxv1alpha1.RegistryOptions{Insecure: true},
				StopPolicy: sandboxv1alpha1.StopPolicy{GracePeriodSeconds: ptr.To[int64](2)},
			},
		}
	}
	get := func(g Gomega, s *sandboxv1alpha1.Sandbox) *sandboxv1alpha1.Sandbox {
		cur := &sandboxv1alpha1.Sandbox{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), cur)).To(Succeed())
		return cur
	}

	t.Run("boots, stops and deletes a VM", func(t *testing.T) {
		g := NewWithT(t)
		s := newSandbox("vm1", host+"/small:v1")
		created := time.Now()
		g.Expect(k8sClient.Create(ctx, s)).To(Succeed())

		var pid int32
		g.Eventually(func(g Gomega) {
			cur := get(g, s)
			g.Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning), "vm: %+v, conditions: %+v", cur.Status.VM, cur.Status.Conditions)
			g.Expect(cur.Status.VM.PID).To(BeNumerically(">", 0))
			g.Expect(cur.Status.VM.Accelerator).NotTo(BeEmpty())
			g.Expect(cur.Status.VM.BootedAt).NotTo(BeNil())
			g.Expect(condition(cur, sandboxv1alpha1.ConditionImageReady).Status).To(Equal(metav1.ConditionTrue))
			g.Expect(cur.Status.ImageDigest).To(HavePrefix("sha256:"))
			g.Expect(cur.Status.Timings).NotTo(BeNil())
			g.Expect(cur.Status.Timings.ImagePulledMillis).NotTo(BeNil())
			g.Expect(cur.Status.Timings.VMMStartedMillis).NotTo(BeNil())
			g.Expect(cur.Status.Timings.GuestReadyMillis).NotTo(BeNil())
			g.Expect(cur.Status.Timings.ScheduledMillis).NotTo(BeNil(), "the manager's timing is kept")
			pid = cur.Status.VM.PID
			t.Logf("timings: scheduled %dms, image %dms, vmm %dms, guest ready %dms",
				*cur.Status.Timings.ScheduledMillis, *cur.Status.Timings.ImagePulledMillis,
				*cur.Status.Timings.VMMStartedMillis, *cur.Status.Timings.GuestReadyMillis)
		}).WithTimeout(30 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
		t.Logf("create → phase Running: %v", time.Since(created).Round(time.Millisecond))
		runDir := filepath.Join(stateDir, "vms", string(get(g, s).UID))
		g.Expect(filepath.Join(runDir, vmm.ConsoleLogFile)).To(BeAnExistingFile())
		g.Expect(processAlive(int(pid))).To(BeTrue())

		stopAsked := time.Now()
		cur := get(g, s)
		cur.Spec.State = sandboxv1alpha1.DesiredStateStopped
		g.Expect(k8sClient.Update(ctx, cur)).To(Succeed())
		g.Eventually(func(g Gomega) {
			cur := get(g, s)
			g.Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStopped), "vm: %+v", cur.Status.VM)
			g.Expect(cur.Status.TerminationReason).To(Equal(sandboxv1alpha1.TerminationShutdownRequested))
			g.Expect(cur.Status.VM.ExitedAt).NotTo(BeNil())
			g.Expect(condition(cur, sandboxv1alpha1.ConditionDraining).Status).To(Equal(metav1.ConditionFalse))
		}).WithTimeout(15 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
		t.Logf("spec.state Stopped → phase Stopped: %v", time.Since(stopAsked).Round(time.Millisecond))
		g.Expect(processAlive(int(pid))).To(BeFalse(), "QEMU is gone")

		g.Expect(k8sClient.Delete(ctx, s)).To(Succeed())
		g.Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &sandboxv1alpha1.Sandbox{}))
		}).WithTimeout(10*time.Second).Should(BeTrue(), "both finalizers released")
		g.Expect(runDir).NotTo(BeADirectory(), "the run directory is removed")
	})

	t.Run("reports a VMM that exits unasked as InternalError", func(t *testing.T) {
		g := NewWithT(t)
		s := newSandbox("vm2", host+"/small:v1")
		s.Spec.RestartPolicy = sandboxv1alpha1.RestartNever
		g.Expect(k8sClient.Create(ctx, s)).To(Succeed())
		var pid int32
		g.Eventually(func(g Gomega) {
			cur := get(g, s)
			g.Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
			pid = cur.Status.VM.PID
		}).WithTimeout(30 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
		g.Expect(syscall.Kill(int(pid), syscall.SIGKILL)).To(Succeed())
		g.Eventually(func(g Gomega) {
			cur := get(g, s)
			g.Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseCrashed))
			g.Expect(cur.Status.VM.ExitReason).To(Equal(sandboxv1alpha1.TerminationInternalError))
			g.Expect(cur.Status.VM.Message).To(ContainSubstring("console:"))
		}).WithTimeout(10 * time.Second).Should(Succeed())
		g.Expect(k8sClient.Delete(ctx, s)).To(Succeed())
		g.Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &sandboxv1alpha1.Sandbox{}))
		}).WithTimeout(10 * time.Second).Should(BeTrue())
	})

	t.Run("runs the main process and reports its exit", func(t *testing.T) {
		g := NewWithT(t)
		s := newSandbox("exit3", host+"/small:extra")
		s.Spec.RestartPolicy = sandboxv1alpha1.RestartNever
		s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{Entrypoint: []string{"/bin/exit3"}}
		s.Spec.Env = []sandboxv1alpha1.EnvVar{{Name: "FOO", Value: "bar"}}
		created := time.Now()
		g.Expect(k8sClient.Create(ctx, s)).To(Succeed())
		g.Eventually(func(g Gomega) {
			cur := get(g, s)
			g.Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStopped), "vm: %+v", cur.Status.VM)
			g.Expect(cur.Status.TerminationReason).To(Equal(sandboxv1alpha1.TerminationFailed))
			g.Expect(cur.Status.ExitCode).To(Equal(ptr.To[int32](3)))
			g.Expect(cur.Status.VM.ExitReason).To(Equal(sandboxv1alpha1.TerminationFailed))
			g.Expect(cur.Status.VM.ExitedAt).NotTo(BeNil())
		}).WithTimeout(30 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
		t.Logf("create → phase Stopped (exit 3): %v", time.Since(created).Round(time.Millisecond))
		runDir := filepath.Join(stateDir, "vms", string(get(g, s).UID))
		console, err := os.ReadFile(filepath.Join(runDir, vmm.ConsoleLogFile))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(string(console)).To(ContainSubstring("FOO=bar"), "the program's output goes to the console")

		g.Expect(k8sClient.Delete(ctx, s)).To(Succeed())
		g.Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &sandboxv1alpha1.Sandbox{}))
		}).WithTimeout(10 * time.Second).Should(BeTrue())
	})

	t.Run("reports a failed pull", func(t *testing.T) {
		g := NewWithT(t)
		s := newSandbox("badimage", host+"/nothing:here")
		g.Expect(k8sClient.Create(ctx, s)).To(Succeed())
		g.Eventually(func(g Gomega) {
			cur := get(g, s)
			c := condition(cur, sandboxv1alpha1.ConditionImageReady)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(sandboxv1alpha1.ReasonErrImagePull))
			g.Expect(c.Message).NotTo(BeEmpty())
			g.Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStarting))
			g.Expect(cur.Status.VM.State).To(Equal(sandboxv1alpha1.VMPulling))
		}).WithTimeout(15 * time.Second).Should(Succeed())

		g.Expect(k8sClient.Delete(ctx, s)).To(Succeed())
		g.Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &sandboxv1alpha1.Sandbox{}))
		}).WithTimeout(10 * time.Second).Should(BeTrue())
	})

	t.Run("stops a VM idle for idleTimeoutSeconds with IdleTimeout", func(t *testing.T) {
		g := NewWithT(t)
		// No entrypoint: the guest is configured and idles; no exec session
		// or other host-driven activity ever comes.
		s := newSandbox("idle", host+"/small:v1")
		s.Spec.Lifecycle = &sandboxv1alpha1.Lifecycle{IdleTimeoutSeconds: ptr.To[int64](2)}
		g.Expect(k8sClient.Create(ctx, s)).To(Succeed())
		var running time.Time
		g.Eventually(func(g Gomega) {
			g.Expect(get(g, s).Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
		}).WithTimeout(30 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
		running = time.Now()
		g.Eventually(func(g Gomega) {
			cur := get(g, s)
			g.Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStopped), "vm: %+v", cur.Status.VM)
			g.Expect(cur.Status.TerminationReason).To(Equal(sandboxv1alpha1.TerminationIdleTimeout))
		}).WithTimeout(20 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
		idle := time.Since(running)
		t.Logf("Running → Stopped (IdleTimeout): %v", idle.Round(time.Millisecond))
		g.Expect(idle).To(BeNumerically(">=", 1500*time.Millisecond), "not before the timeout (less the phase's polling lag)")
		g.Expect(k8sClient.Delete(ctx, s)).To(Succeed())
		g.Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &sandboxv1alpha1.Sandbox{}))
		}).WithTimeout(15 * time.Second).Should(BeTrue())
	})
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// A zombie (state Z) is gone for this purpose.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || !bytes.HasPrefix(bytes.TrimSpace(b[i+1:]), []byte("Z"))
}
