package access

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// echoBackend stands in for the node agent behind the access API in this
// test of the aggregation path: it answers with the user and target the
// server authorized.
type echoBackend struct{}

func (echoBackend) Serve(w http.ResponseWriter, _ *http.Request, t Target) {
	_, _ = fmt.Fprintf(w, "%s %s/%s/%s", t.User.Name, t.Namespace, t.Name, t.Subresource)
}

// frontProxyClient is the certificate the aggregation layer presents
// (startAggregator configures it; a test uses it to act as the proxy).
var frontProxyClient KeyPair

// schemaAPIService is the APIService's kind, read as unstructured.
var schemaAPIService = schema.GroupVersionKind{Group: "apiregistration.k8s.io", Version: "v1", Kind: "APIService"}

// startAggregator starts a kube-apiserver (envtest) configured for API
// aggregation: a front-proxy CA and client certificate, and the request
// header names, published in kube-system/extension-apiserver-authentication.
func startAggregator(t *testing.T) (*envtest.Environment, *rest.Config, client.Client) {
	t.Helper()
	g := NewWithT(t)
	dir := t.TempDir()
	frontCA, err := NewCA("front-proxy-ca", time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	proxyClient, err := frontCA.IssueClient("front-proxy-client", nil, time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	frontProxyClient = proxyClient
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		g.Expect(os.WriteFile(p, b, 0o600)).To(Succeed())
		return p
	}
	env := &envtest.Environment{BinaryAssetsDirectory: filepath.Join("..", "..", "bin", "k8s")}
	env.ControlPlane.GetAPIServer().Configure().
		Set("requestheader-client-ca-file", write("front-ca.crt", frontCA.CertPEM)).
		Set("requestheader-allowed-names", "front-proxy-client").
		Set("requestheader-username-headers", "X-Remote-User").
		Set("requestheader-group-headers", "X-Remote-Group").
		Set("requestheader-extra-headers-prefix", "X-Remote-Extra-").
		Set("proxy-client-cert-file", write("proxy.crt", proxyClient.CertPEM)).
		Set("proxy-client-key-file", write("proxy.key", proxyClient.KeyPEM))
	cfg, err := env.Start()
	g.Expect(err).NotTo(HaveOccurred(), "starting envtest (run `make control-plane`)")
	t.Cleanup(func() { _ = env.Stop() })
	admin, err := client.New(cfg, client.Options{})
	g.Expect(err).NotTo(HaveOccurred())
	return env, cfg, admin
}

// freePort returns a loopback TCP port nothing listens on (yet).
func freePort(g Gomega) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestAggregatedAPIAuthorizesWithTheCallersIdentity runs the access server
// behind a real kube-apiserver's aggregation layer (front-proxy client
// certificate, APIService, a Service pointing at the server): a user that
// RBAC allows sandboxes/exec reaches it with their identity; one without is
// refused with 403 by the API server; a request that bypasses the API
// server has no trusted identity.
func TestAggregatedAPIAuthorizesWithTheCallersIdentity(t *testing.T) {
	g := NewWithT(t)
	env, cfg, admin := startAggregator(t)
	proxyClient := frontProxyClient
	ctx := context.Background()

	// The access server, with a serving certificate for the Service name
	// the aggregator verifies.
	servingCA, err := NewCA("access-serving-ca", time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	serving, err := servingCA.IssueServer("sandbox-access", []string{"sandbox-access.sandbox-system.svc", "localhost", "127.0.0.1"}, time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	servingCert, err := serving.TLSCertificate()
	g.Expect(err).NotTo(HaveOccurred())
	var rh RequestHeader
	g.Eventually(func() error { rh, err = LoadRequestHeader(ctx, admin); return err }).WithTimeout(30 * time.Second).Should(Succeed())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	srv := &http.Server{
		Handler:           &Server{Authn: rh, Authz: SubjectAccessReviews{Client: admin}, Backend: echoBackend{}},
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{servingCert}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: rh.ClientCAs, MinVersion: tls.VersionTLS12},
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	// Register it: an ExternalName Service (the aggregator dials
	// localhost:<port>) and the APIService.
	g.Expect(admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sandbox-system"}})).To(Succeed())
	g.Expect(admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team"}})).To(Succeed())
	g.Expect(admin.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "sandbox-access", Namespace: "sandbox-system"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost",
			Ports: []corev1.ServicePort{{Port: int32(port), TargetPort: intstr.FromInt32(int32(port))}}},
	})).To(Succeed())
	apiService := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
		"metadata": map[string]any{"name": Version + "." + Group},
		"spec": map[string]any{
			"group": Group, "version": Version,
			"service":              map[string]any{"namespace": "sandbox-system", "name": "sandbox-access", "port": int64(port)},
			"caBundle":             base64.StdEncoding.EncodeToString(servingCA.CertPEM),
			"groupPriorityMinimum": int64(1000), "versionPriority": int64(15),
		},
	}}
	g.Expect(admin.Create(ctx, apiService)).To(Succeed())
	g.Eventually(func(g Gomega) {
		cur := &unstructured.Unstructured{}
		cur.SetGroupVersionKind(apiService.GroupVersionKind())
		g.Expect(admin.Get(ctx, client.ObjectKey{Name: apiService.GetName()}, cur)).To(Succeed())
		conds, _, _ := unstructured.NestedSlice(cur.Object, "status", "conditions")
		g.Expect(conds).To(ContainElement(And(HaveKeyWithValue("type", "Available"), HaveKeyWithValue("status", "True"))), "%v", conds)
	}).WithTimeout(60 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())

	t.Run("every manager replica serves with a certificate the one caBundle verifies", func(t *testing.T) {
		g := NewWithT(t)
		first, err := EnsureServingCA(ctx, admin, "sandbox-system")
		g.Expect(err).NotTo(HaveOccurred())
		second, err := EnsureServingCA(ctx, admin, "sandbox-system")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(second.CertPEM).To(Equal(first.CertPEM), "a second replica loads the stored serving CA")
		pair, err := second.IssueServer("sandbox-access", []string{"sandbox-access.sandbox-system.svc"}, time.Hour)
		g.Expect(err).NotTo(HaveOccurred())
		leaf, err := pair.TLSCertificate()
		g.Expect(err).NotTo(HaveOccurred())
		cert, err := x509.ParseCertificate(leaf.Certificate[0])
		g.Expect(err).NotTo(HaveOccurred())
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(first.CertPEM) // the APIService's caBundle, written by the first replica
		_, err = cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "sandbox-access.sandbox-system.svc"})
		g.Expect(err).NotTo(HaveOccurred())
	})

	t.Run("the access client CA is created once and published", func(t *testing.T) {
		g := NewWithT(t)
		ca1, err := EnsureClientCA(ctx, admin, "sandbox-system")
		g.Expect(err).NotTo(HaveOccurred())
		ca2, err := EnsureClientCA(ctx, admin, "sandbox-system")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(ca2.CertPEM).To(Equal(ca1.CertPEM), "the second manager start reuses the stored CA")
		cm := &corev1.ConfigMap{}
		g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: "sandbox-system", Name: ClientCAName}, cm)).To(Succeed())
		g.Expect(cm.Data[ClientCACertKey]).To(Equal(string(ca1.CertPEM)))
		pair, err := ca2.ManagerClientCert()
		g.Expect(err).NotTo(HaveOccurred())
		leaf, err := pair.TLSCertificate()
		g.Expect(err).NotTo(HaveOccurred())
		cert, err := x509.ParseCertificate(leaf.Certificate[0])
		g.Expect(err).NotTo(HaveOccurred())
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM([]byte(cm.Data[ClientCACertKey]))
		_, err = cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		g.Expect(err).NotTo(HaveOccurred(), "an agent trusting the published CA accepts the manager's certificate")
	})

	// alice may exec in namespace team; bob may not.
	g.Expect(admin.Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "exec", Namespace: "team"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{Group}, Resources: []string{"sandboxes/exec"}, Verbs: []string{"get", "create"}}}})).To(Succeed())
	g.Expect(admin.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "alice-exec", Namespace: "team"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "exec"},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: "alice", APIGroup: "rbac.authorization.k8s.io"}}})).To(Succeed())
	as := func(name string) *http.Client {
		u, err := env.AddUser(envtest.User{Name: name}, nil)
		g.Expect(err).NotTo(HaveOccurred())
		hc, err := rest.HTTPClientFor(u.Config())
		g.Expect(err).NotTo(HaveOccurred())
		return hc
	}
	get := func(hc *http.Client, path string) (int, string) {
		resp, err := hc.Get(strings.TrimSuffix(cfg.Host, "/") + path)
		g.Expect(err).NotTo(HaveOccurred())
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	exec := "/apis/" + Group + "/" + Version + "/namespaces/team/sandboxes/box/exec"
	alice, bob := as("alice"), as("bob")

	code, body := get(alice, exec)
	g.Expect(code).To(Equal(http.StatusOK), body)
	g.Expect(body).To(Equal("alice team/box/exec"), "the server saw alice's identity through the front proxy")

	code, body = get(bob, exec)
	g.Expect(code).To(Equal(http.StatusForbidden), body)
	g.Expect(body).To(ContainSubstring(`User \"bob\" cannot get resource \"sandboxes/exec\"`), "the API server's own RBAC refused it")

	code, body = get(alice, "/apis/"+Group+"/"+Version+"/namespaces/team/sandboxes/box/log")
	g.Expect(code).To(Equal(http.StatusForbidden), "alice has exec, not log: %s", body)

	// Discovery through the API server lists the subresources.
	code, body = get(alice, "/apis/"+Group+"/"+Version)
	g.Expect(code).To(Equal(http.StatusOK), body)
	g.Expect(body).To(ContainSubstring(`"sandboxes/exec"`))

	// Straight to the server, without the front proxy's certificate, the
	// headers are not trusted.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(servingCA.CertPEM)
	direct := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d%s", port, exec), nil)
	g.Expect(err).NotTo(HaveOccurred())
	req.Header.Set("X-Remote-User", "alice")
	resp, err := direct.Do(req)
	g.Expect(err).NotTo(HaveOccurred())
	_ = resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusUnauthorized))

	// With the front proxy's certificate (as if the API server's RBAC had
	// been bypassed by a misconfiguration), the server's own
	// SubjectAccessReview still refuses bob and admits alice.
	proxyCert, err := proxyClient.TLSCertificate()
	g.Expect(err).NotTo(HaveOccurred())
	asProxy := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{proxyCert}, MinVersion: tls.VersionTLS12}}}
	for user, want := range map[string]int{"bob": http.StatusForbidden, "alice": http.StatusOK} {
		req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d%s", port, exec), nil)
		g.Expect(err).NotTo(HaveOccurred())
		req.Header.Set("X-Remote-User", user)
		resp, err := asProxy.Do(req)
		g.Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		g.Expect(resp.StatusCode).To(Equal(want), user)
	}
}

// TestAggregatedAPIServesAMountedCertificate runs the manager's access
// Runnable with --access-cert-dir as the chart's cert-manager option mounts
// it (a kubernetes.io/tls Secret: tls.crt, tls.key, ca.crt) behind a real
// kube-apiserver: the APIService gets that CA, requests through the
// aggregation layer reach the server, and a renewed certificate written to
// the directory is served without a restart.
func TestAggregatedAPIServesAMountedCertificate(t *testing.T) {
	g := NewWithT(t)
	env, cfg, admin := startAggregator(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	const ns, svcName = "sandbox-system", "sandbox-access"
	svcHost := svcName + "." + ns + ".svc"

	// What cert-manager writes into the Secret: a leaf for the Service's
	// name and the CA that issued it.
	issuer, err := NewCA("cert-manager-issuer", time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	dir := t.TempDir()
	writeLeaf := func() *x509.Certificate {
		pair, err := issuer.IssueServer("sandbox-access", []string{svcHost}, time.Hour)
		g.Expect(err).NotTo(HaveOccurred())
		// A Secret volume swaps its files in at once; rename does too.
		for name, b := range map[string][]byte{CertDirCertFile: pair.CertPEM, CertDirKeyFile: pair.KeyPEM, CertDirCAFile: issuer.CertPEM} {
			tmp := filepath.Join(dir, "."+name)
			g.Expect(os.WriteFile(tmp, b, 0o600)).To(Succeed())
			g.Expect(os.Rename(tmp, filepath.Join(dir, name))).To(Succeed())
		}
		leaf, err := pair.TLSCertificate()
		g.Expect(err).NotTo(HaveOccurred())
		cert, err := x509.ParseCertificate(leaf.Certificate[0])
		g.Expect(err).NotTo(HaveOccurred())
		return cert
	}
	first := writeLeaf()

	t.Run("registering the APIService without ca.crt says how to let cert-manager fill it", func(t *testing.T) {
		g := NewWithT(t)
		r := &Runnable{Client: admin, Opts: Options{Namespace: ns, ServiceName: svcName, RegisterAPIService: true, CertDir: t.TempDir()}}
		_, err := r.servingCertificate(ctx)
		g.Expect(err).To(MatchError(ContainSubstring("tls.crt")), "no certificate at all")
		empty := t.TempDir()
		g.Expect(os.Link(filepath.Join(dir, CertDirCertFile), filepath.Join(empty, CertDirCertFile))).To(Succeed())
		g.Expect(os.Link(filepath.Join(dir, CertDirKeyFile), filepath.Join(empty, CertDirKeyFile))).To(Succeed())
		r.Opts.CertDir = empty
		_, err = r.servingCertificate(ctx)
		g.Expect(err).To(MatchError(ContainSubstring("--access-register-apiservice=false")))
	})

	port := freePort(g)
	g.Expect(admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	g.Expect(admin.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svcName, Namespace: ns},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost",
			Ports: []corev1.ServicePort{{Port: int32(port), TargetPort: intstr.FromInt32(int32(port))}}},
	})).To(Succeed())
	r := &Runnable{Client: admin, Reader: admin, Opts: Options{
		BindAddress: fmt.Sprintf("127.0.0.1:%d", port), Namespace: ns, ServiceName: svcName,
		RegisterAPIService: true, CertDir: dir,
	}}
	done := make(chan error, 1)
	go func() { done <- r.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the access API stopped with %v", err)
		}
	})

	apiService := &unstructured.Unstructured{}
	apiService.SetGroupVersionKind(schemaAPIService)
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, client.ObjectKey{Name: Version + "." + Group}, apiService)).To(Succeed())
		caBundle, _, _ := unstructured.NestedString(apiService.Object, "spec", "caBundle")
		g.Expect(caBundle).To(Equal(base64.StdEncoding.EncodeToString(issuer.CertPEM)), "the caBundle is the mounted ca.crt")
		conds, _, _ := unstructured.NestedSlice(apiService.Object, "status", "conditions")
		g.Expect(conds).To(ContainElement(And(HaveKeyWithValue("type", "Available"), HaveKeyWithValue("status", "True"))), "%v", conds)
	}).WithTimeout(60 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
	g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: ServingCAName}, &corev1.Secret{})).
		To(MatchError(ContainSubstring("not found")), "no self-made serving CA next to a mounted certificate")

	u, err := env.AddUser(envtest.User{Name: "alice"}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	hc, err := rest.HTTPClientFor(u.Config())
	g.Expect(err).NotTo(HaveOccurred())
	discovery := func(g Gomega) {
		resp, err := hc.Get(strings.TrimSuffix(cfg.Host, "/") + "/apis/" + Group + "/" + Version)
		g.Expect(err).NotTo(HaveOccurred())
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		g.Expect(resp.StatusCode).To(Equal(http.StatusOK), string(b))
		g.Expect(string(b)).To(ContainSubstring(`"sandboxes/exec"`))
	}
	g.Eventually(discovery).WithTimeout(30*time.Second).Should(Succeed(), "the aggregation layer reaches the server over the mounted certificate")

	served := func() *big.Int {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(issuer.CertPEM)
		conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{RootCAs: pool, ServerName: svcHost, MinVersion: tls.VersionTLS12})
		if err != nil {
			return nil
		}
		defer func() { _ = conn.Close() }()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber
	}
	g.Expect(served()).To(Equal(first.SerialNumber))
	renewed := writeLeaf()
	g.Expect(renewed.SerialNumber).NotTo(Equal(first.SerialNumber))
	g.Eventually(served).WithTimeout(30*time.Second).WithPolling(200*time.Millisecond).Should(Equal(renewed.SerialNumber),
		"the renewed certificate is served without a restart")
	g.Eventually(discovery).WithTimeout(10*time.Second).Should(Succeed(), "and the aggregation layer still verifies it")
}
