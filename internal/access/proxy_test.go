package access

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// standInAgent is a TLS server standing in for a node agent's access
// server in the proxy's tests (the agent's real one is tested with the
// agent): it requires a client certificate from clientCA, echoes what it
// received, and on "Upgrade: echo" hijacks the connection and echoes
// bytes, as exec streams do.
func standInAgent(t *testing.T, clientCA *CA) (*httptest.Server, string, []byte) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "echo" {
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Upgrade", "echo")
			w.WriteHeader(http.StatusSwitchingProtocols)
			conn, buf, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer func() { _ = conn.Close() }()
			_ = buf.Flush()
			_, _ = io.Copy(conn, buf)
			return
		}
		var hdrs []string
		for _, h := range []string{"Authorization", "X-Remote-User", HeaderUser, HeaderSandbox} {
			hdrs = append(hdrs, h+"="+r.Header.Get(h))
		}
		_, _ = fmt.Fprintf(w, "%s?%s %s cn=%s", r.URL.Path, r.URL.RawQuery, strings.Join(hdrs, ","), r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	pool := x509.NewCertPool()
	pool.AddCert(clientCA.Cert)
	// Its own certificate (httptest's built-in one is the same for every
	// server, and the proxy pins certificates).
	self, err := NewCA("agent", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := self.IssueServer("agent", []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pair.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, strings.TrimPrefix(srv.URL, "https://"), pair.CertPEM
}

func TestAgentProxy(t *testing.T) {
	g := NewWithT(t)
	clientCA, err := NewCA("access-client-ca", time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	mgrCert, err := NewRotatingCert(func() (KeyPair, error) { return clientCA.IssueClient("sandbox-manager", nil, time.Hour) })
	g.Expect(err).NotTo(HaveOccurred())
	_, endpoint, certPEM := standInAgent(t, clientCA)
	agentPEM := string(certPEM)
	other, _, _ := standInAgent(t, clientCA)

	scheme := runtime.NewScheme()
	g.Expect(sandboxv1alpha1.AddToScheme(scheme)).To(Succeed())
	sbx := func(name, node string, phase sandboxv1alpha1.SandboxPhase) *sandboxv1alpha1.Sandbox {
		return &sandboxv1alpha1.Sandbox{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team", UID: types.UID("uid-" + name)},
			Status: sandboxv1alpha1.SandboxStatus{NodeName: node, Phase: phase}}
	}
	node := func(name string, acc *sandboxv1alpha1.NodeAccess) *sandboxv1alpha1.SandboxNode {
		return &sandboxv1alpha1.SandboxNode{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: sandboxv1alpha1.SandboxNodeStatus{Access: acc}}
	}
	// A fake client holds the objects: the proxy only reads them.
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(
		sbx("box", "n1", sandboxv1alpha1.PhaseRunning),
		sbx("stopped", "n1", sandboxv1alpha1.PhaseStopped),
		sbx("noaccess", "n2", sandboxv1alpha1.PhaseRunning),
		sbx("impostor", "n3", sandboxv1alpha1.PhaseRunning),
		sbx("unplaced", "", ""),
		node("n1", &sandboxv1alpha1.NodeAccess{Endpoint: endpoint, Certificate: agentPEM}),
		node("n2", nil),
		// n3's endpoint is another server than the certificate pinned.
		node("n3", &sandboxv1alpha1.NodeAccess{Endpoint: strings.TrimPrefix(other.URL, "https://"), Certificate: agentPEM}),
	).Build()

	serve := func(p *AgentProxy, name, sub string, hdr http.Header) (int, string) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/x?command=id&command=-u&tty=true", nil)
		for k, v := range hdr {
			req.Header[k] = v
		}
		p.Serve(rec, req, Target{Namespace: "team", Name: name, Subresource: sub, User: User{Name: "alice"}})
		return rec.Code, rec.Body.String()
	}
	p := &AgentProxy{Client: c, ClientCert: mgrCert}

	code, body := serve(p, "box", "exec", http.Header{"Authorization": {"Bearer secret"}, "X-Remote-User": {"alice"}})
	g.Expect(code).To(Equal(http.StatusOK), body)
	g.Expect(body).To(Equal("/v1/sandboxes/uid-box/exec?command=id&command=-u&tty=1 Authorization=,X-Remote-User=,X-Sandbox-User=alice,X-Sandbox-Name=team/box cn=sandbox-manager"),
		"by UID, the stream options in the kubelet's form, credentials and front-proxy headers dropped, the manager's certificate presented")

	code, body = serve(p, "stopped", "exec", nil)
	g.Expect(code).To(Equal(http.StatusBadRequest))
	g.Expect(body).To(ContainSubstring("sandbox stopped is Stopped, not Running"))
	code, _ = serve(p, "stopped", "log", nil)
	g.Expect(code).To(Equal(http.StatusOK), "logs stay readable after the VM stopped")

	code, body = serve(p, "unplaced", "log", nil)
	g.Expect(code).To(Equal(http.StatusBadRequest))
	g.Expect(body).To(ContainSubstring("not placed on a node"))
	code, body = serve(p, "gone", "exec", nil)
	g.Expect(code).To(Equal(http.StatusNotFound), body)
	code, body = serve(p, "noaccess", "exec", nil)
	g.Expect(code).To(Equal(http.StatusServiceUnavailable))
	g.Expect(body).To(ContainSubstring("does not serve the access API"))
	code, body = serve(p, "impostor", "exec", nil)
	g.Expect(code).To(Equal(http.StatusServiceUnavailable))
	g.Expect(body).To(ContainSubstring("presented a certificate other than the one in its SandboxNode status"))

	otherCA, err := NewCA("not-the-client-ca", time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	strangerCert, err := NewRotatingCert(func() (KeyPair, error) { return otherCA.IssueClient("stranger", nil, time.Hour) })
	g.Expect(err).NotTo(HaveOccurred())
	code, body = serve(&AgentProxy{Client: c, ClientCert: strangerCert}, "box", "exec", nil)
	g.Expect(code).To(Equal(http.StatusServiceUnavailable), "the agent refuses a client certificate from another CA: %s", body)

	// A connection upgrade (as websocket and SPDY exec streams use) passes
	// through the proxy in both directions.
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.Serve(w, r, Target{Namespace: "team", Name: "box", Subresource: "exec", User: User{Name: "alice"}})
	}))
	defer front.Close()
	conn, err := net.Dial("tcp", strings.TrimPrefix(front.URL, "http://"))
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = conn.Close() }()
	_, err = fmt.Fprintf(conn, "GET /exec HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	g.Expect(err).NotTo(HaveOccurred())
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(resp.StatusCode).To(Equal(http.StatusSwitchingProtocols))
	_, err = conn.Write([]byte("ping over the upgraded stream"))
	g.Expect(err).NotTo(HaveOccurred())
	got := make([]byte, len("ping over the upgraded stream"))
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadFull(br, got)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(got)).To(Equal("ping over the upgraded stream"))
}
