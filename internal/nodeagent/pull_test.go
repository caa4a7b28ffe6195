package nodeagent

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/vmm/vmtest"
)

// pullRegistry is one in-memory registry served twice: open (anonymous,
// for pushing test images) and locked (HTTP Basic auth, answering 401 with
// a Basic challenge and the registry API's UNAUTHORIZED error otherwise,
// as Docker's distribution does). It records when each repository's
// manifests were asked for.
type pullRegistry struct {
	open, locked string // hosts

	mu    sync.Mutex
	asked map[string][]time.Time // repository → manifest request times
}

func servePullRegistry(t *testing.T, user, password string) *pullRegistry {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	pr := &pullRegistry{asked: map[string][]time.Time{}}
	record := func(r *http.Request) {
		if repo, _, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v2/"), "/manifests/"); ok {
			pr.mu.Lock()
			pr.asked[repo] = append(pr.asked[repo], time.Now())
			pr.mu.Unlock()
		}
	}
	open := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record(r)
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(open.Close)
	locked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record(r)
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(locked.Close)
	pr.open = strings.TrimPrefix(open.URL, "http://")
	pr.locked = strings.TrimPrefix(locked.URL, "http://")
	return pr
}

// manifestRequests returns when repo's manifests were asked for.
func (pr *pullRegistry) manifestRequests(repo string) []time.Time {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return append([]time.Time(nil), pr.asked[repo]...)
}

// closedPort returns a 127.0.0.1 address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// dockerConfigSecret is a kubernetes.io/dockerconfigjson Secret holding
// user and password for host.
func dockerConfigSecret(t *testing.T, namespace, name, host, user, password string) *corev1.Secret {
	t.Helper()
	doc, err := json.Marshal(map[string]any{"auths": map[string]any{host: map[string]string{"username": user, "password": password}}})
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: doc},
	}
}

// TestPullFailuresAreConditions runs the manager and a node agent against
// registries that cannot serve the image: an unknown repository and an
// unknown tag, a registry that does not listen, a wrong pull secret and a
// missing one. Each ends in ImageReady False/ErrImagePull with the cause in
// its message while the sandbox waits in Starting and the agent retries
// with backoff; none crashes the sandbox or the agent, and fixing the pull
// secret lets the next retry pull and boot the VM.
func TestPullFailuresAreConditions(t *testing.T) {
	began := time.Now()
	kernel, modules := vmtest.Prereqs(t, "mkfs.ext4")
	initBin := buildSandboxInit(t, t.TempDir())

	const user, password = "puller", "right-pass"
	reg := servePullRegistry(t, user, password)
	pushImage(t, reg.open+"/small:v1", []imageFile{{name: "hello.txt", mode: 0o644, data: []byte("hello\n")}})
	refused := closedPort(t)

	// Unix socket paths are limited to 107 bytes: a short state dir.
	stateDir, err := os.MkdirTemp("", "np")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(stateDir) })

	ctx := context.Background()
	const node, ns = "node-pull", "pulls"
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
	// Placement holds whole vCPUs and the test host may have two: a
	// negative reserve makes room for the five sandboxes that never boot
	// next to the one that does.
	args.Reserve = Reserve{CPUs: -8}
	runManager(t)
	stop := runAgent(t, args)
	defer stop()

	newSandbox := func(n, img string, pullSecrets ...string) *sandboxv1alpha1.Sandbox {
		s := &sandboxv1alpha1.Sandbox{
			ObjectMeta: metav1.ObjectMeta{Name: n, Namespace: ns},
			Spec: sandboxv1alpha1.SandboxSpec{
				Image:        img,
				Resources:    sandboxv1alpha1.SandboxResources{CPUs: 1, MemoryMiB: 256},
				Registry:     &sandboxv1alpha1.RegistryOptions{Insecure: true},
				StopPolicy:   sandboxv1alpha1.StopPolicy{GracePeriodSeconds: ptr.To[int64](2)},
				NodeSelector: map[string]string{"kubernetes.io/hostname": node},
			},
		}
		for _, p := range pullSecrets {
			s.Spec.ImagePullSecrets = append(s.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: p})
		}
		return s
	}
	get := func(g Gomega, s *sandboxv1alpha1.Sandbox) *sandboxv1alpha1.Sandbox {
		cur := &sandboxv1alpha1.Sandbox{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), cur)).To(Succeed())
		return cur
	}
	// pullFailed checks that s waits in Starting on a failed pull whose
	// message holds each of want, and returns the message.
	pullFailed := func(g Gomega, s *sandboxv1alpha1.Sandbox, want ...string) string {
		cur := get(g, s)
		c := condition(cur, sandboxv1alpha1.ConditionImageReady)
		g.Expect(c.Status).To(Equal(metav1.ConditionFalse), "ImageReady: %+v", c)
		g.Expect(c.Reason).To(Equal(sandboxv1alpha1.ReasonErrImagePull))
		for _, w := range want {
			g.Expect(c.Message).To(ContainSubstring(w))
		}
		g.Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStarting), "vm: %+v", cur.Status.VM)
		g.Expect(cur.Status.VM).NotTo(BeNil())
		g.Expect(cur.Status.VM.State).To(Equal(sandboxv1alpha1.VMPulling))
		g.Expect(condition(cur, sandboxv1alpha1.ConditionReady).Reason).To(Equal(sandboxv1alpha1.ReasonStarting))
		return c.Message
	}

	g := NewWithT(t)
	wrong := dockerConfigSecret(t, ns, "creds", reg.locked, user, "wrong-pass")
	g.Expect(k8sClient.Create(ctx, wrong)).To(Succeed())
	missing := newSandbox("missing", reg.open+"/nope/missing:1")
	noTag := newSandbox("notag", reg.open+"/small:nope")
	unreachable := newSandbox("refused", refused+"/x/y:1")
	badSecret := newSandbox("badauth", reg.locked+"/small:v1", "creds")
	// Not small:v1: once badauth pulled it, the node's cache would serve
	// that tag under IfNotPresent without asking the registry.
	noSecret := newSandbox("nosecret", reg.locked+"/private:v1", "nosuch")
	all := []*sandboxv1alpha1.Sandbox{missing, noTag, unreachable, badSecret, noSecret}
	created := time.Now()
	for _, s := range all {
		g.Expect(k8sClient.Create(ctx, s)).To(Succeed())
	}
	// Runs before the agent stops: the booted VM must not outlive the test.
	defer func() {
		for _, s := range all {
			_ = k8sClient.Delete(ctx, s)
		}
		for _, s := range all {
			g.Eventually(func() bool {
				return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &sandboxv1alpha1.Sandbox{}))
			}).WithTimeout(20*time.Second).Should(BeTrue(), "%s is deleted", s.Name)
		}
	}()

	t.Run("a wrong pull secret is unauthorized until it is fixed", func(t *testing.T) {
		g := NewWithT(t)
		var msg string
		g.Eventually(func(g Gomega) {
			msg = pullFailed(g, badSecret, "UNAUTHORIZED", "authentication required")
		}).WithTimeout(20 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
		t.Logf("wrong pull secret (after %v): %s", time.Since(created).Round(time.Millisecond), msg)
		g.Expect(msg).NotTo(ContainSubstring("wrong-pass"), "no credentials in the status")

		fixed := dockerConfigSecret(t, ns, "creds", reg.locked, user, password)
		cur := &corev1.Secret{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(wrong), cur)).To(Succeed())
		cur.Data = fixed.Data
		g.Expect(k8sClient.Update(ctx, cur)).To(Succeed())
		fixedAt := time.Now()
		g.Eventually(func(g Gomega) {
			cur := get(g, badSecret)
			g.Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning), "vm: %+v, conditions: %+v", cur.Status.VM, cur.Status.Conditions)
			c := condition(cur, sandboxv1alpha1.ConditionImageReady)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.Reason).To(Equal(sandboxv1alpha1.ReasonImagePulled))
			g.Expect(cur.Status.ImageDigest).To(HavePrefix("sha256:"))
		}).WithTimeout(60 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
		t.Logf("secret fixed → phase Running: %v", time.Since(fixedAt).Round(time.Millisecond))
	})

	t.Run("the other failures wait in Starting with the cause", func(t *testing.T) {
		for _, tc := range []struct {
			s    *sandboxv1alpha1.Sandbox
			want []string
		}{
			// The registry's own words: an unknown repository, then an
			// unknown tag of a known one.
			{s: missing, want: []string{"image not found", "nope/missing:1", "NAME_UNKNOWN"}},
			{s: noTag, want: []string{"image not found", "small:nope", "MANIFEST_UNKNOWN"}},
			{s: unreachable, want: []string{"connection refused", refused}},
			{s: noSecret, want: []string{"UNAUTHORIZED", `pull secret "nosuch" not found`}},
		} {
			g := NewWithT(t)
			var msg string
			g.Eventually(func(g Gomega) {
				msg = pullFailed(g, tc.s, tc.want...)
			}).WithTimeout(20 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
			t.Logf("%s: ImageReady: %s (Ready: %q)", tc.s.Name, msg,
				condition(get(g, tc.s), sandboxv1alpha1.ConditionReady).Message)
		}
	})

	t.Run("a failed pull is retried with backoff and the condition stays", func(t *testing.T) {
		g := NewWithT(t)
		first := condition(get(g, missing), sandboxv1alpha1.ConditionImageReady)
		g.Consistently(func(g Gomega) {
			g.Expect(pullFailed(g, missing, "NAME_UNKNOWN")).To(Equal(first.Message))
			g.Expect(condition(get(g, missing), sandboxv1alpha1.ConditionImageReady).LastTransitionTime).To(Equal(first.LastTransitionTime))
		}).WithTimeout(2 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
		// The backoff starts at 1s and doubles: attempts further and
		// further apart, a handful over the test, not a hot loop.
		var asked []time.Time
		var gaps []time.Duration
		g.Eventually(func(g Gomega) {
			asked, gaps = reg.manifestRequests("nope/missing"), nil
			for i := 1; i < len(asked); i++ {
				gaps = append(gaps, asked[i].Sub(asked[i-1]).Round(time.Millisecond))
			}
			g.Expect(len(asked)).To(BeNumerically(">=", 3), "retried")
			g.Expect(gaps[len(gaps)-1]).To(BeNumerically(">=", 2*time.Second), "the backoff grows")
		}).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
		t.Logf("manifest requests for nope/missing: %d in %v, gaps %v",
			len(asked), asked[len(asked)-1].Sub(asked[0]).Round(time.Millisecond), gaps)
		g.Expect(len(asked)).To(BeNumerically("<=", 12), "retries back off")
	})

	t.Run("the agent survived", func(t *testing.T) {
		g := NewWithT(t)
		ready := meta.FindStatusCondition(sandboxNode(g, node).Status.Conditions, sandboxv1alpha1.NodeConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Status).To(Equal(metav1.ConditionTrue), "SandboxNode %s: %+v", node, ready)
		for _, s := range all {
			cur := get(g, s)
			g.Expect(cur.Status.Phase).NotTo(Equal(sandboxv1alpha1.PhaseCrashed), "%s", s.Name)
			g.Expect(cur.Status.Run).To(Equal(int32(1)), "%s: never restarted", s.Name)
		}
	})
	t.Logf("test body: %v", time.Since(began).Round(time.Millisecond))
}
