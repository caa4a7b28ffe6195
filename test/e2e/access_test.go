//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/utils/exec"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/access"
)

// accessServiceName is the Service in front of the manager's access API
// (the manager's --access-service default); the e2e suite makes it an
// ExternalName Service to localhost, the way aggregation reaches a server
// on loopback.
const accessServiceName = "sandbox-access"

// apiServiceGVK is the kind of the access API's registration.
var apiServiceGVK = schema.GroupVersionKind{Group: "apiregistration.k8s.io", Version: "v1", Kind: "APIService"}

// AccessSpecInput is the input of accessSpecs.
type AccessSpecInput struct {
	// Namespace holds Sandbox; the specs grant alice sandboxes/exec there
	// (a Role and a RoleBinding they create).
	Namespace string
	// Sandbox is Running on a real node agent while these specs run: exec
	// needs phase Running. The specs only run commands in it.
	Sandbox string
	// Hostname is the Sandbox's runtime.hostname (what `hostname` prints).
	Hostname string
	// Manager returns the manager process serving the access API
	// (--access-bind-address, registering the APIService itself).
	Manager func() *process
	// Agent returns the node agent of a node (serving its access endpoint,
	// --access-bind-address).
	Agent func(node string) *agentProcess
	// Timing records a measured duration in the suite's timing report.
	Timing func(what string, d time.Duration)
	// StdinBytes is how much stdin the streaming spec sends through
	// sha256sum in the guest.
	StdinBytes int
	// TTYRows and TTYCols are the terminal size the tty spec's
	// TerminalSizeQueue reports (`stty size` must print them).
	TTYRows, TTYCols uint16
	// ExecRoundTrips is how many `exec -- true` the latency measurement
	// runs (the median is reported).
	ExecRoundTrips int
}

// accessSpecs exercises the access API's exec path end to end, inside the
// ordered VM specs (it needs their manager, agents and a Running sandbox):
// a user's client-go executor → kube-apiserver (authentication, RBAC on
// subresources.sandbox.microvm.dev sandboxes/exec, aggregation with the
// front-proxy certificate) → the manager's access API (SubjectAccessReview,
// websocket v5 translated to SPDY, mutual TLS with the pinned agent
// certificate) → the node agent's access server → the guest's exec session.
func accessSpecs(input AccessSpecInput) {
	ctx := context.Background()
	var (
		aliceCfg, bobCfg *rest.Config
		sbx              *sandboxv1alpha1.Sandbox
		nodeAccess       *sandboxv1alpha1.NodeAccess
	)
	execPath := func() string {
		return fmt.Sprintf("/apis/%s/%s/namespaces/%s/sandboxes/%s/exec", access.Group, access.Version, input.Namespace, input.Sandbox)
	}
	// execURL is the public exec URL (PodExecOptions' parameters) on the
	// API server.
	execURL := func(cfg *rest.Config, cmd []string, stdin, tty bool) string {
		q := url.Values{"command": cmd, "stdout": {"true"}}
		if stdin {
			q.Set("stdin", "true")
		}
		if tty {
			q.Set("tty", "true")
		} else {
			q.Set("stderr", "true")
		}
		return strings.TrimSuffix(cfg.Host, "/") + execPath() + "?" + q.Encode()
	}
	// run runs cmd through the API server with client-go's websocket
	// executor (v5.channel.k8s.io), as cfg's user.
	run := func(cfg *rest.Config, cmd []string, stdin io.Reader, tty *remotecommand.TerminalSize) (stdout, stderr string, err error) {
		ex, err := remotecommand.NewWebSocketExecutor(cfg, http.MethodGet, execURL(cfg, cmd, stdin != nil, tty != nil))
		if err != nil {
			return "", "", err
		}
		var out, errb bytes.Buffer
		opts := remotecommand.StreamOptions{Stdin: stdin, Stdout: &out, Tty: tty != nil}
		if tty != nil {
			opts.TerminalSizeQueue = &onceSize{size: tty}
		} else {
			opts.Stderr = &errb
		}
		runCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		err = ex.StreamWithContext(runCtx, opts)
		return out.String(), errb.String(), err
	}
	requireSetup := func() {
		GinkgoHelper()
		Expect(aliceCfg).NotTo(BeNil(), "the access API's setup (BeforeAll) failed")
	}

	Describe("the access API: exec through the kube-apiserver's aggregation", func() {
		BeforeAll(func() {
			mgr := input.Manager()
			By("seeing the manager serve the access API")
			Eventually(func() bool { return mgr.logContains("Serving the access API") }).
				WithTimeout(30*time.Second).Should(BeTrue(), func() string { return "the manager's log:\n" + mgr.logTail(40) })

			By("waiting for the APIService " + access.Version + "." + access.Group + " (registered by the manager) to be Available")
			waitStart := time.Now()
			Eventually(func(g Gomega) {
				as := &unstructured.Unstructured{}
				as.SetGroupVersionKind(apiServiceGVK)
				g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: access.Version + "." + access.Group}, as)).To(Succeed())
				svc, _, _ := unstructured.NestedString(as.Object, "spec", "service", "name")
				g.Expect(svc).To(Equal(accessServiceName))
				ca, _, _ := unstructured.NestedString(as.Object, "spec", "caBundle")
				g.Expect(ca).NotTo(BeEmpty(), "the manager's serving CA")
				conds, _, _ := unstructured.NestedSlice(as.Object, "status", "conditions")
				g.Expect(conds).To(ContainElement(And(HaveKeyWithValue("type", "Available"), HaveKeyWithValue("status", "True"))), "%v", conds)
			}).WithTimeout(60 * time.Second).Should(Succeed())
			input.Timing("access: APIService Available (wait from the access specs' start)", time.Since(waitStart))

			By("reading " + input.Sandbox + " (Running) and its node's access endpoint from SandboxNode status.access")
			Eventually(func(g Gomega) {
				sbx = &sandboxv1alpha1.Sandbox{}
				g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: input.Namespace, Name: input.Sandbox}, sbx)).To(Succeed())
				g.Expect(sbx.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
				sn := &sandboxv1alpha1.SandboxNode{}
				g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: sbx.Status.NodeName}, sn)).To(Succeed())
				g.Expect(sn.Status.Access).NotTo(BeNil(), "the agent of %s publishes no access endpoint", sn.Name)
				g.Expect(sn.Status.Access.Endpoint).To(HavePrefix("127.0.0.1:"))
				g.Expect(sn.Status.Access.Certificate).To(ContainSubstring("BEGIN CERTIFICATE"))
				nodeAccess = sn.Status.Access
			}).Should(Succeed())
			Expect(input.Agent(sbx.Status.NodeName).logContains("Serving the access API", nodeAccess.Endpoint)).To(BeTrue(),
				"the agent's log names the endpoint it published")

			By("granting alice sandboxes/exec in " + input.Namespace + " (Role and RoleBinding); bob gets nothing")
			Expect(k8sClient.Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "sandbox-exec", Namespace: input.Namespace},
				Rules: []rbacv1.PolicyRule{{APIGroups: []string{access.Group}, Resources: []string{"sandboxes/exec"}, Verbs: []string{"get", "create"}}}})).To(Succeed())
			Expect(k8sClient.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "alice-sandbox-exec", Namespace: input.Namespace},
				RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "sandbox-exec"},
				Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: "alice", APIGroup: rbacv1.GroupName}}})).To(Succeed())
			for name, cfg := range map[string]**rest.Config{"alice": &aliceCfg, "bob": &bobCfg} {
				u, err := testEnv.AddUser(envtest.User{Name: name}, nil)
				Expect(err).NotTo(HaveOccurred())
				*cfg = u.Config()
			}
			// RBAC reaches the authorizer through an informer: wait for it.
			cs, err := kubernetes.NewForConfig(aliceCfg)
			Expect(err).NotTo(HaveOccurred())
			Eventually(func(g Gomega) {
				r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
					Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
						Namespace: input.Namespace, Verb: "get", Group: access.Group, Resource: "sandboxes", Subresource: "exec", Name: input.Sandbox}}},
					metav1.CreateOptions{})
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(r.Status.Allowed).To(BeTrue())
			}).Should(Succeed())
		})

		It("runs alice's command with client-go's websocket executor: stdout and stderr apart, exit code 3 as an ExitError", func() {
			requireSetup()
			start := time.Now()
			out, errOut, err := run(aliceCfg, []string{"/bin/sh", "-c", "echo out from $(hostname); echo err from $(whoami) >&2"}, nil, nil)
			input.Timing("access: first exec through the API server", time.Since(start))
			Expect(err).NotTo(HaveOccurred(), "stdout %q, stderr %q", out, errOut)
			Expect(out).To(Equal("out from " + input.Hostname + "\n"))
			Expect(errOut).To(Equal("err from app\n"), "stderr, apart from stdout (exec runs as runtime.user app)")

			out, errOut, err = run(aliceCfg, []string{"/bin/sh", "-c", "echo before exit; echo failing >&2; exit 3"}, nil, nil)
			var exitErr utilexec.ExitError
			Expect(errors.As(err, &exitErr)).To(BeTrue(), "want a k8s.io/utils/exec.ExitError, got %T: %v", err, err)
			Expect(exitErr.ExitStatus()).To(Equal(3))
			Expect(out).To(Equal("before exit\n"))
			Expect(errOut).To(Equal("failing\n"))
		})

		It(fmt.Sprintf("streams %d MiB of stdin through sha256sum in the guest and back intact", input.StdinBytes>>20), func() {
			requireSetup()
			payload := make([]byte, input.StdinBytes)
			_, _ = rand.NewChaCha8([32]byte{'e', '2', 'e'}).Read(payload)
			sum := sha256.Sum256(payload)
			start := time.Now()
			out, errOut, err := run(aliceCfg, []string{"sha256sum"}, bytes.NewReader(payload), nil)
			took := time.Since(start)
			input.Timing(fmt.Sprintf("access: %d MiB stdin → sha256sum → stdout", input.StdinBytes>>20), took)
			Expect(err).NotTo(HaveOccurred(), "stderr %q", errOut)
			Expect(strings.Fields(out)).To(HaveExactElements(hex.EncodeToString(sum[:]), "-"), "stdout %q", out)
			fmt.Fprintf(GinkgoWriter, "stdin throughput: %.1f MiB/s\n", float64(input.StdinBytes)/(1<<20)/took.Seconds())
		})

		It(fmt.Sprintf("runs a tty exec at the TerminalSizeQueue's size: stty size prints %d %d", input.TTYRows, input.TTYCols), func() {
			requireSetup()
			size := &remotecommand.TerminalSize{Height: input.TTYRows, Width: input.TTYCols}
			want := fmt.Sprintf("%d %d\r\n", input.TTYRows, input.TTYCols)
			By("reading the size after a second: the TerminalSizeQueue's size reaches the pty")
			out, _, err := run(aliceCfg, []string{"/bin/sh", "-c", "sleep 1; stty size"}, nil, size)
			Expect(err).NotTo(HaveOccurred(), "output %q", out)
			Expect(out).To(Equal(want), "a pty's output (ONLCR: \\r\\n)")

			By("reading it at once, ten times: the pty has the size before the command runs")
			// Not a resize that may or may not win the race with the command.
			for i := range 10 {
				out, _, err := run(aliceCfg, []string{"stty", "size"}, nil, size)
				Expect(err).NotTo(HaveOccurred(), "try %d: output %q", i+1, out)
				Expect(out).To(Equal(want), "try %d: the pty's initial size (24 80 is the guest's default)", i+1)
			}
		})

		It("refuses bob (no RBAC) with 403 Forbidden from the API server", func() {
			requireSetup()
			_, _, err := run(bobCfg, []string{"true"}, nil, nil)
			// client-go's k8s.io/streaming httpstream.UpgradeFailureError,
			// whose Cause (the API server's Status) it does not unwrap.
			Expect(err).To(MatchError(And(
				ContainSubstring("unable to upgrade streaming request"),
				ContainSubstring(fmt.Sprintf(`%q is forbidden: User "bob" cannot get resource "sandboxes/exec" in API group %q in the namespace %q`,
					input.Sandbox, access.Group, input.Namespace)))))

			By("GETting the exec URL with bob's client")
			hc, err := rest.HTTPClientFor(bobCfg)
			Expect(err).NotTo(HaveOccurred())
			resp, err := hc.Get(execURL(bobCfg, []string{"true"}, false, false))
			Expect(err).NotTo(HaveOccurred())
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			Expect(resp.StatusCode).To(Equal(http.StatusForbidden), "%s", body)
			status := &metav1.Status{}
			Expect(json.Unmarshal(body, status)).To(Succeed(), "%s", body)
			Expect(status.Reason).To(Equal(metav1.StatusReasonForbidden))
			Expect(status.Message).To(ContainSubstring(`User "bob" cannot get resource "sandboxes/exec"`))
		})

		It("refuses a direct TLS connection to the node agent's access endpoint without the manager's client certificate", func() {
			requireSetup()
			u := (&url.URL{Scheme: "https", Host: nodeAccess.Endpoint, Path: access.AgentPath(string(sbx.UID), "exec"),
				RawQuery: url.Values{"command": {"true"}, "output": {"1"}}.Encode()}).String()
			pool := x509.NewCertPool()
			Expect(pool.AppendCertsFromPEM([]byte(nodeAccess.Certificate))).To(BeTrue())
			// post presents cert (if any) whatever CAs the server asks for
			// (Go's client would otherwise send none that the server's
			// CertificateRequest does not name).
			post := func(cert *tls.Certificate) error {
				cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
				if cert != nil {
					cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
				}
				hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
				defer hc.CloseIdleConnections()
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
				Expect(err).NotTo(HaveOccurred())
				resp, err := hc.Do(req)
				if err != nil {
					return err
				}
				_ = resp.Body.Close()
				return fmt.Errorf("answered %s", resp.Status)
			}

			By("connecting without a client certificate (trusting the agent's published certificate)")
			err := post(nil)
			Expect(err).To(HaveOccurred())
			Expect(err.Error()).To(ContainSubstring("certificate required"))

			By("connecting with a client certificate from another CA")
			stranger, err := access.NewCA("not-the-access-client-ca", time.Hour)
			Expect(err).NotTo(HaveOccurred())
			pair, err := stranger.IssueClient("sandbox-manager", nil, time.Hour)
			Expect(err).NotTo(HaveOccurred())
			cert, err := pair.TLSCertificate()
			Expect(err).NotTo(HaveOccurred())
			err = post(&cert)
			Expect(err).To(HaveOccurred())
			Expect(err.Error()).To(MatchRegexp("bad certificate|unknown certificate authority"))

			By("checking that the same URL works with a certificate from the access client CA (the manager's)")
			ca, err := access.EnsureClientCA(ctx, k8sClient, leaseNamespace) // reads the CA the manager made
			Expect(err).NotTo(HaveOccurred())
			mgrPair, err := ca.ManagerClientCert()
			Expect(err).NotTo(HaveOccurred())
			ex, err := remotecommand.NewSPDYExecutor(&rest.Config{Host: "https://" + nodeAccess.Endpoint, TLSClientConfig: rest.TLSClientConfig{
				CAData: []byte(nodeAccess.Certificate), CertData: mgrPair.CertPEM, KeyData: mgrPair.KeyPEM}}, http.MethodPost, mustParseURL(u))
			Expect(err).NotTo(HaveOccurred())
			var out bytes.Buffer
			Expect(ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out})).To(Succeed())
		})

		It(fmt.Sprintf("times %d round trips of exec -- true through the API server", input.ExecRoundTrips), func() {
			requireSetup()
			var rtts []time.Duration
			for range input.ExecRoundTrips {
				start := time.Now()
				_, errOut, err := run(aliceCfg, []string{"true"}, nil, nil)
				rtts = append(rtts, time.Since(start))
				Expect(err).NotTo(HaveOccurred(), "stderr %q", errOut)
			}
			slices.Sort(rtts)
			median := rtts[len(rtts)/2]
			if len(rtts)%2 == 0 {
				median = (rtts[len(rtts)/2-1] + rtts[len(rtts)/2]) / 2
			}
			input.Timing(fmt.Sprintf("access: exec -- true round trip (median of %d)", len(rtts)), median)
			fmt.Fprintf(GinkgoWriter, "exec -- true round trips: min %v, median %v, max %v\n",
				rtts[0].Round(time.Millisecond), median.Round(time.Millisecond), rtts[len(rtts)-1].Round(time.Millisecond))
			Expect(median).To(BeNumerically("<", 5*time.Second), "all: %v", rtts)
		})
	})
}

// onceSize is a TerminalSizeQueue that reports one size.
type onceSize struct {
	size *remotecommand.TerminalSize
	sent bool
}

// Next implements remotecommand.TerminalSizeQueue: the size, then nil (no
// more resizes).
func (q *onceSize) Next() *remotecommand.TerminalSize {
	if q.sent {
		return nil
	}
	q.sent = true
	return q.size
}

// freeLoopbackPort asks the kernel for an unused port on 127.0.0.1.
func freeLoopbackPort() int {
	GinkgoHelper()
	_, port, err := net.SplitHostPort(freeLoopbackAddr())
	Expect(err).NotTo(HaveOccurred())
	var p int
	_, err = fmt.Sscan(port, &p)
	Expect(err).NotTo(HaveOccurred())
	return p
}

func mustParseURL(s string) *url.URL {
	GinkgoHelper()
	u, err := url.Parse(s)
	Expect(err).NotTo(HaveOccurred())
	return u
}
