package nodeagent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/utils/exec"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/access"
	"github.com/microvm-dev/sandbox-operator/internal/devimage"
	"github.com/microvm-dev/sandbox-operator/internal/vmm/vmtest"
)

// TestAccessServerExecsInTheGuest drives the agent's access server the way
// the manager does — mutual TLS with a certificate from the access client
// CA, the agent's certificate pinned from SandboxNode status.access — with
// client-go's SPDY remotecommand executor, into a real microVM: output,
// exit codes and a 4 MiB stdin round trip; a client without the manager's
// certificate is refused.
func TestAccessServerExecsInTheGuest(t *testing.T) {
	kernel, modules := vmtest.Prereqs(t, "mkfs.ext4")
	g := NewWithT(t)
	work := t.TempDir()
	initBin := buildSandboxInit(t, work)
	files, err := devimage.Busybox("")
	g.Expect(err).NotTo(HaveOccurred())
	img, err := devimage.Image(files, v1.Config{Cmd: []string{"/bin/sh", "-c", "echo started as $(id -un); echo to stderr >&2; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done"}})
	g.Expect(err).NotTo(HaveOccurred())
	reg, err := devimage.Serve("127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = reg.Close() })
	ref, err := reg.Push("access/busybox:1", img)
	g.Expect(err).NotTo(HaveOccurred())
	stateDir, err := os.MkdirTemp("", "nx")
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = os.RemoveAll(stateDir) })

	ctx := context.Background()
	const node, ns = "node-access", "access"
	g.Expect(k8sClient.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}})).To(Succeed())
	g.Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	ca, err := access.EnsureClientCA(ctx, k8sClient, "sandbox-system")
	g.Expect(err).NotTo(HaveOccurred())
	mgrPair, err := ca.ManagerClientCert()
	g.Expect(err).NotTo(HaveOccurred())

	args := testArgs(node)
	args.AllowEmulation, args.Labels = true, map[string]string{"pool": "access"}
	args.Reserve = Reserve{CPUs: -8}
	args.StateDir = stateDir
	args.KernelPath, args.SandboxInitPath, args.GuestModulesDir = kernel, initBin, modules
	args.AccessAddr = "127.0.0.1:0"
	runManager(t)
	stop := runAgent(t, args)
	defer stop()

	s := &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: "box", Namespace: ns},
		Spec: sandboxv1alpha1.SandboxSpec{
			Image: ref, Registry: &sandboxv1alpha1.RegistryOptions{Insecure: true},
			Resources:    sandboxv1alpha1.SandboxResources{CPUs: 1, MemoryMiB: 256},
			NodeSelector: map[string]string{"pool": "access"},
			StopPolicy:   sandboxv1alpha1.StopPolicy{GracePeriodSeconds: ptr.To[int64](2)},
		},
	}
	g.Expect(k8sClient.Create(ctx, s)).To(Succeed())
	defer func() {
		_ = k8sClient.Delete(ctx, s)
		g.Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &sandboxv1alpha1.Sandbox{}) }).
			WithTimeout(30 * time.Second).ShouldNot(Succeed())
	}()
	g.Eventually(func(g Gomega) {
		cur := &sandboxv1alpha1.Sandbox{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), cur)).To(Succeed())
		g.Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
		s = cur
	}).WithTimeout(60 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
	sn := sandboxNode(g, node)
	g.Expect(sn.Status.Access).NotTo(BeNil(), "the agent publishes its access endpoint")

	restFor := func(pair *access.KeyPair) *rest.Config {
		c := &rest.Config{Host: "https://" + sn.Status.Access.Endpoint,
			TLSClientConfig: rest.TLSClientConfig{CAData: []byte(sn.Status.Access.Certificate), ServerName: "127.0.0.1"}}
		if pair != nil {
			c.CertData, c.KeyData = pair.CertPEM, pair.KeyPEM
		}
		return c
	}
	run := func(cfg *rest.Config, stdin []byte, cmd ...string) (string, string, error) {
		q := url.Values{"command": cmd, "output": {"1"}, "error": {"1"}}
		if stdin != nil {
			q.Set("input", "1")
		}
		u := &url.URL{Scheme: "https", Host: sn.Status.Access.Endpoint, Path: access.AgentPath(string(s.UID), "exec"), RawQuery: q.Encode()}
		ex, err := remotecommand.NewSPDYExecutor(cfg, "POST", u)
		if err != nil {
			return "", "", err
		}
		var out, errb bytes.Buffer
		opts := remotecommand.StreamOptions{Stdout: &out, Stderr: &errb}
		if stdin != nil {
			opts.Stdin = bytes.NewReader(stdin)
		}
		err = ex.StreamWithContext(ctx, opts)
		return out.String(), errb.String(), err
	}
	mgr := restFor(&mgrPair)

	out, _, err := run(mgr, nil, "/bin/sh", "-c", "echo hello from $(hostname); echo oops >&2")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(Equal("hello from box\n"))

	_, errOut, err := run(mgr, nil, "/bin/sh", "-c", "echo failing >&2; exit 3")
	var exitErr utilexec.ExitError
	g.Expect(errors.As(err, &exitErr)).To(BeTrue(), "%v", err)
	g.Expect(exitErr.ExitStatus()).To(Equal(3))
	g.Expect(errOut).To(Equal("failing\n"))

	payload := bytes.Repeat([]byte("0123456789abcdef"), 256*1024) // 4 MiB
	out, _, err = run(mgr, payload, "/bin/sh", "-c", "sha256sum | cut -d' ' -f1")
	g.Expect(err).NotTo(HaveOccurred())
	sum := sha256.Sum256(payload)
	g.Expect(strings.TrimSpace(out)).To(Equal(hex.EncodeToString(sum[:])), "stdin streamed through the guest intact")

	// Files, over plain HTTP requests (the manager's proxy passes them
	// through): a 10 MiB write and read back, stat, list, mkdir and clear
	// errors.
	mgrTLS, err := rest.TLSConfigFor(mgr)
	g.Expect(err).NotTo(HaveOccurred())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: mgrTLS}}
	fileOp := func(method string, q url.Values, body io.Reader) (int, []byte) {
		u := &url.URL{Scheme: "https", Host: sn.Status.Access.Endpoint, Path: access.AgentPath(string(s.UID), "files"), RawQuery: q.Encode()}
		req, err := http.NewRequest(method, u.String(), body)
		g.Expect(err).NotTo(HaveOccurred())
		resp, err := hc.Do(req)
		g.Expect(err).NotTo(HaveOccurred())
		defer func() { _ = resp.Body.Close() }()
		b, err := io.ReadAll(resp.Body)
		g.Expect(err).NotTo(HaveOccurred())
		return resp.StatusCode, b
	}
	big := bytes.Repeat([]byte("sandbox-files-"), 10<<20/14)
	code, body := fileOp(http.MethodPost, url.Values{"op": {"write"}, "path": {"/tmp/big.bin"}}, bytes.NewReader(big))
	g.Expect(code).To(Equal(http.StatusOK), "%s", body)
	code, body = fileOp(http.MethodGet, url.Values{"op": {"read"}, "path": {"/tmp/big.bin"}}, nil)
	g.Expect(code).To(Equal(http.StatusOK))
	g.Expect(sha256.Sum256(body)).To(Equal(sha256.Sum256(big)), "10 MiB round trip")
	code, body = fileOp(http.MethodGet, url.Values{"op": {"stat"}, "path": {"/tmp/big.bin"}}, nil)
	g.Expect(code).To(Equal(http.StatusOK))
	g.Expect(string(body)).To(ContainSubstring(fmt.Sprintf(`"size":%d`, len(big))))
	code, _ = fileOp(http.MethodPost, url.Values{"op": {"mkdir"}, "path": {"/tmp/a/b"}, "recursive": {"true"}}, nil)
	g.Expect(code).To(Equal(http.StatusOK))
	code, body = fileOp(http.MethodGet, url.Values{"op": {"list"}, "path": {"/tmp/a"}}, nil)
	g.Expect(code).To(Equal(http.StatusOK))
	g.Expect(string(body)).To(ContainSubstring(`"name":"b"`))
	code, body = fileOp(http.MethodGet, url.Values{"op": {"read"}, "path": {"/no/such/file"}}, nil)
	g.Expect(code).To(Equal(http.StatusNotFound), "%s", body)
	g.Expect(string(body)).To(ContainSubstring("/no/such/file"))
	code, _ = fileOp(http.MethodGet, url.Values{"op": {"write"}, "path": {"/tmp/x"}}, nil)
	g.Expect(code).To(Equal(http.StatusMethodNotAllowed), "changes need POST (RBAC create)")

	// Logs: the main process's output, kept on the node; tail, timestamps
	// and follow.
	logURL := func(q url.Values) string {
		return (&url.URL{Scheme: "https", Host: sn.Status.Access.Endpoint, Path: access.AgentPath(string(s.UID), "log"), RawQuery: q.Encode()}).String()
	}
	g.Eventually(func(g Gomega) {
		resp, err := hc.Get(logURL(nil))
		g.Expect(err).NotTo(HaveOccurred())
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		// stdout and stderr are separate pipes: their relative order is not kept.
		g.Expect(string(b)).To(And(ContainSubstring("started as root\n"), ContainSubstring("to stderr\n"), ContainSubstring("tick 1\n")))
	}).WithTimeout(10*time.Second).Should(Succeed(), func() string {
		raw, _ := os.ReadFile(filepath.Join(stateDir, "vms", string(s.UID), "logs", "output.log"))
		console, _ := os.ReadFile(filepath.Join(stateDir, "vms", string(s.UID), "console.log"))
		return "output.log:\n" + string(raw) + "\nconsole:\n" + string(console)
	})
	resp, err := hc.Get(logURL(url.Values{"tailLines": {"1"}, "timestamps": {"true"}}))
	g.Expect(err).NotTo(HaveOccurred())
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	g.Expect(string(b)).To(MatchRegexp(`^\d{4}-\d\d-\d\dT[0-9:.]+Z tick \d+\n$`), "one line, timestamped")
	fctx, fcancel := context.WithTimeout(ctx, 3500*time.Millisecond)
	freq, err := http.NewRequestWithContext(fctx, http.MethodGet, logURL(url.Values{"follow": {"true"}, "tailLines": {"0"}}), nil)
	g.Expect(err).NotTo(HaveOccurred())
	resp, err = hc.Do(freq)
	g.Expect(err).NotTo(HaveOccurred())
	followed, _ := io.ReadAll(resp.Body) // until fctx ends
	_ = resp.Body.Close()
	fcancel()
	g.Expect(strings.Count(string(followed), "tick ")).To(BeNumerically(">=", 2), "lines written while following arrive live: %q", followed)

	// The guest's metrics on the agent's Prometheus registry, labelled by
	// the Sandbox.
	g.Eventually(func(g Gomega) {
		families, err := ctrlmetrics.Registry.Gather()
		g.Expect(err).NotTo(HaveOccurred())
		found := map[string]float64{}
		for _, f := range families {
			for _, m := range f.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["namespace"] == ns && labels["name"] == "box" {
					found[f.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
		g.Expect(found).To(HaveKeyWithValue("sandbox_guest_memory_total_bytes", BeNumerically(">", 100<<20)))
		g.Expect(found).To(HaveKeyWithValue("sandbox_guest_cpu_seconds_total", BeNumerically(">", 0)))
		g.Expect(found).To(HaveKeyWithValue("sandbox_guest_uptime_seconds", BeNumerically(">", 0)))
	}).WithTimeout(10 * time.Second).Should(Succeed())

	// Without the manager's client certificate the TLS handshake fails.
	_, _, err = run(restFor(nil), nil, "true")
	g.Expect(err).To(MatchError(ContainSubstring("certificate required")))
}
