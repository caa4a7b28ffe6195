package egressproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"go.uber.org/goleak"

	"github.com/microvm-dev/sandbox-operator/internal/access"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	placeholder = "$SANDBOX_SECRET_API_TOKEN"
	realValue   = "sk-real-0123456789"
)

var (
	httpsDst = netip.MustParseAddrPort("203.0.113.10:443")
	httpDst  = netip.MustParseAddrPort("203.0.113.20:80")
)

// seen is a request as the upstream received it.
type seen struct {
	Host, RawQuery, Body, RemoteAddr string
	Header                           http.Header
}

// upstream is a test server that records what it receives.
type upstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.reqs = append(u.reqs, seen{Host: r.Host, RawQuery: r.URL.RawQuery, Body: string(body), RemoteAddr: r.RemoteAddr, Header: r.Header.Clone()})
	u.mu.Unlock()
	_, _ = io.WriteString(w, "hello from upstream")
}

func (u *upstream) seen() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.reqs...)
}

// newUpstream starts an upstream; with ca, it serves TLS with a
// certificate for names.
func newUpstream(t *testing.T, ca *access.CA, names ...string) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewUnstartedServer(u)
	u.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshakes tests cause
	if ca == nil {
		u.srv.Start()
	} else {
		kp, err := ca.IssueServer("upstream", names, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := kp.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		u.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		u.srv.StartTLS()
	}
	t.Cleanup(u.srv.Close)
	return u
}

// env is a proxy between a guest client and upstreams on loopback.
type env struct {
	proxy      *Proxy
	upstreamCA *access.CA
	guestRoots *x509.CertPool
	routes     map[string]string // dst → the upstream's listener

	mu         sync.Mutex
	violations []Violation
	handleErrs []error
}

func newEnv(t *testing.T, secrets ...Secret) *env {
	t.Helper()
	g := NewWithT(t)
	sandboxCA, err := access.NewCA("sandbox CA", time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	upstreamCA, err := access.NewCA("upstream CA", time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	e := &env{upstreamCA: upstreamCA, guestRoots: x509.NewCertPool(), routes: map[string]string{}}
	e.guestRoots.AddCert(sandboxCA.Cert)
	roots := x509.NewCertPool()
	roots.AddCert(upstreamCA.Cert)
	e.proxy = &Proxy{
		CA:      sandboxCA,
		Secrets: secrets,
		RootCAs: roots,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			to, ok := e.routes[addr]
			if !ok {
				return nil, errors.New("no route to " + addr)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, to)
		},
		OnViolation: func(v Violation) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.violations = append(e.violations, v)
		},
	}
	return e
}

// route sends the proxy's connections to dst to u.
func (e *env) route(dst netip.AddrPort, u *upstream) {
	e.routes[dst.String()] = u.srv.Listener.Addr().String()
}

func (e *env) reported() []Violation {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Violation(nil), e.violations...)
}

func (e *env) errs() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]error(nil), e.handleErrs...)
}

// guest returns a client whose every connection is a loopback socket pair
// whose far end Handle serves as a connection to dst; dials counts them.
func (e *env) guest(t *testing.T, dst netip.AddrPort) (c *http.Client, dials func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	n := 0
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: e.guestRoots},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			g, err := (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
			if err != nil {
				return nil, err
			}
			node, err := ln.Accept()
			if err != nil {
				_ = g.Close()
				return nil, err
			}
			mu.Lock()
			n++
			mu.Unlock()
			wg.Go(func() {
				if err := e.proxy.Handle(context.Background(), node, dst); err != nil {
					e.mu.Lock()
					e.handleErrs = append(e.handleErrs, err)
					e.mu.Unlock()
				}
			})
			return g, nil
		},
	}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		_ = ln.Close()
		wg.Wait()
	})
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}

// do sends req and returns the status and body.
func do(t *testing.T, c *http.Client, req *http.Request) (int, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("request to %s failed: %v", req.URL, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func newRequest(t *testing.T, method, url, body string) *http.Request {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func apiToken(hosts ...string) Secret {
	return Secret{Name: "API_TOKEN", Placeholder: placeholder, Value: []byte(realValue), AllowedHosts: hosts, Headers: true, BasicAuth: true}
}

func TestABearerPlaceholderToAnAllowedHostArrivesAsTheRealValue(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, apiToken("allowed.test"))
	u := newUpstream(t, e.upstreamCA, "allowed.test", "other.test")
	e.route(httpsDst, u)
	c, _ := e.guest(t, httpsDst)

	req := newRequest(t, http.MethodGet, "https://allowed.test/v1/models", "")
	req.Header.Set("Authorization", "Bearer "+placeholder)
	req.Header.Set("X-Api-Key", placeholder)
	status, body := do(t, c, req)

	g.Expect(status).To(Equal(http.StatusOK))
	g.Expect(body).To(Equal("hello from upstream"))
	got := u.seen()
	g.Expect(got).To(HaveLen(1))
	g.Expect(got[0].Header.Get("Authorization")).To(Equal("Bearer " + realValue))
	g.Expect(got[0].Header.Get("X-Api-Key")).To(Equal(realValue))
	g.Expect(got[0].Host).To(Equal("allowed.test"))
	g.Expect(e.reported()).To(BeEmpty())
}

func TestAPlaceholderToAnotherHostIsBlockedAndReported(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, apiToken("allowed.test"))
	u := newUpstream(t, e.upstreamCA, "allowed.test", "other.test")
	e.route(httpsDst, u)
	c, _ := e.guest(t, httpsDst)

	req := newRequest(t, http.MethodPost, "https://other.test/exfiltrate", "some body")
	req.Header.Set("Authorization", "Bearer "+placeholder)
	status, body := do(t, c, req)

	g.Expect(status).To(Equal(http.StatusForbidden))
	g.Expect(body).To(ContainSubstring("API_TOKEN"))
	g.Expect(body).To(ContainSubstring("other.test"))
	g.Expect(body).NotTo(ContainSubstring(realValue))
	g.Expect(u.seen()).To(BeEmpty())
	v := e.reported()
	g.Expect(v).To(HaveLen(1))
	g.Expect(v[0].Secret).To(Equal("API_TOKEN"))
	g.Expect(v[0].Host).To(Equal("other.test"))
	g.Expect(v[0].Dst).To(Equal(httpsDst))
	g.Expect(v[0].Where).To(Equal("header Authorization"))
	g.Expect(v[0].Time).NotTo(BeZero())
}

func TestBasicAuthCredentialsAreSubstituted(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, apiToken("allowed.test"))
	u := newUpstream(t, e.upstreamCA, "allowed.test")
	e.route(httpsDst, u)
	c, _ := e.guest(t, httpsDst)

	req := newRequest(t, http.MethodGet, "https://allowed.test/", "")
	req.SetBasicAuth("user", placeholder)
	status, _ := do(t, c, req)

	g.Expect(status).To(Equal(http.StatusOK))
	got := u.seen()
	g.Expect(got).To(HaveLen(1))
	g.Expect(got[0].Header.Get("Authorization")).To(Equal("Basic " + base64.StdEncoding.EncodeToString([]byte("user:"+realValue))))
}

func TestBasicAuthToAnotherHostIsAViolation(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, apiToken("allowed.test"))
	u := newUpstream(t, e.upstreamCA, "other.test")
	e.route(httpsDst, u)
	c, _ := e.guest(t, httpsDst)

	req := newRequest(t, http.MethodGet, "https://other.test/", "")
	req.SetBasicAuth(placeholder, "x")
	status, _ := do(t, c, req)

	g.Expect(status).To(Equal(http.StatusForbidden))
	g.Expect(u.seen()).To(BeEmpty())
	g.Expect(e.reported()).To(ConsistOf(HaveField("Where", "basic auth")))
}

func TestARequestWithoutPlaceholdersToAnotherHostPassesUntouched(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, apiToken("allowed.test"))
	u := newUpstream(t, e.upstreamCA, "other.test")
	e.route(httpsDst, u)
	c, _ := e.guest(t, httpsDst)

	req := newRequest(t, http.MethodPost, "https://other.test/upload?a=1&b=%24x", "payload")
	req.Header.Set("Authorization", "Bearer something-else")
	req.Header.Set("User-Agent", "guest/1.0")
	req.Header.Add("X-Multi", "one")
	req.Header.Add("X-Multi", "two")
	status, body := do(t, c, req)

	g.Expect(status).To(Equal(http.StatusOK))
	g.Expect(body).To(Equal("hello from upstream"))
	got := u.seen()
	g.Expect(got).To(HaveLen(1))
	g.Expect(got[0].Header.Get("Authorization")).To(Equal("Bearer something-else"))
	g.Expect(got[0].Header.Get("User-Agent")).To(Equal("guest/1.0"))
	g.Expect(got[0].Header.Values("X-Multi")).To(Equal([]string{"one", "two"}))
	g.Expect(got[0].RawQuery).To(Equal("a=1&b=%24x"))
	g.Expect(got[0].Body).To(Equal("payload"))
	g.Expect(e.reported()).To(BeEmpty())
}

func TestAHostHeaderThatDiffersFromTheServerNameIsAViolation(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, apiToken("allowed.test"))
	u := newUpstream(t, e.upstreamCA, "allowed.test", "other.test")
	e.route(httpsDst, u)
	c, _ := e.guest(t, httpsDst)

	req := newRequest(t, http.MethodGet, "https://allowed.test/", "") // SNI allowed.test
	req.Host = "other.test"
	req.Header.Set("Authorization", "Bearer "+placeholder)
	status, body := do(t, c, req)

	g.Expect(status).To(Equal(http.StatusForbidden))
	g.Expect(body).To(ContainSubstring("differs from the TLS server name"))
	g.Expect(u.seen()).To(BeEmpty())
	v := e.reported()
	g.Expect(v).To(HaveLen(1))
	g.Expect(v[0].Host).To(Equal("other.test"))
}

func TestAnUpstreamCertificateThatDoesNotMatchTheServerNameFailsTheRequest(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, apiToken("allowed.test"))
	impostor := newUpstream(t, e.upstreamCA, "other.test") // at the address, but not allowed.test
	e.route(httpsDst, impostor)
	c, _ := e.guest(t, httpsDst)

	req := newRequest(t, http.MethodGet, "https://allowed.test/", "")
	req.Header.Set("Authorization", "Bearer "+placeholder)
	status, body := do(t, c, req)

	g.Expect(status).To(Equal(http.StatusBadGateway))
	g.Expect(body).To(ContainSubstring("allowed.test"))
	g.Expect(body).NotTo(ContainSubstring(realValue))
	g.Expect(impostor.seen()).To(BeEmpty())
	g.Eventually(e.errs).Should(ContainElement(MatchError(ContainSubstring("certificate"))))
}

func TestPlainHTTPCarriesASecretOnlyToAnAddressResolvedForAnAllowedHost(t *testing.T) {
	for _, tc := range []struct {
		name    string
		names   []string
		allowed bool
	}{
		{name: "the resolver answered allowed.test with the address", names: []string{"allowed.test."}, allowed: true},
		{name: "the resolver answered another name with the address", names: []string{"other.test"}},
		{name: "the resolver never answered the address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			e := newEnv(t, apiToken("allowed.test"))
			e.proxy.NamesOf = func(a netip.Addr) []string {
				if a == httpDst.Addr() {
					return tc.names
				}
				return nil
			}
			u := newUpstream(t, nil)
			e.route(httpDst, u)
			c, _ := e.guest(t, httpDst)

			req := newRequest(t, http.MethodGet, "http://allowed.test/", "")
			req.Header.Set("Authorization", "Bearer "+placeholder)
			status, _ := do(t, c, req)

			if tc.allowed {
				g.Expect(status).To(Equal(http.StatusOK))
				g.Expect(u.seen()).To(ConsistOf(HaveField("Header", HaveKeyWithValue("Authorization", []string{"Bearer " + realValue}))))
				g.Expect(e.reported()).To(BeEmpty())
			} else {
				g.Expect(status).To(Equal(http.StatusForbidden))
				g.Expect(u.seen()).To(BeEmpty())
				g.Expect(e.reported()).To(ConsistOf(HaveField("Reason", ContainSubstring("resolver did not answer"))))
			}
		})
	}
}

func TestKeepAliveRequestsShareOneConnection(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, apiToken("allowed.test"))
	u := newUpstream(t, e.upstreamCA, "allowed.test")
	e.route(httpsDst, u)
	c, dials := e.guest(t, httpsDst)

	for _, method := range []string{http.MethodPost, http.MethodHead, http.MethodGet} {
		body := ""
		if method == http.MethodPost {
			body = "body"
		}
		req := newRequest(t, method, "https://allowed.test/", body)
		req.Header.Set("Authorization", "Bearer "+placeholder)
		status, got := do(t, c, req)
		g.Expect(status).To(Equal(http.StatusOK))
		if method != http.MethodHead {
			g.Expect(got).To(Equal("hello from upstream"))
		}
	}

	g.Expect(dials()).To(Equal(1))
	got := u.seen()
	g.Expect(got).To(HaveLen(3))
	for _, r := range got {
		g.Expect(r.RemoteAddr).To(Equal(got[0].RemoteAddr))
		g.Expect(r.Header.Get("Authorization")).To(Equal("Bearer " + realValue))
	}
}

func TestWildcardAllowedHostsMatchNamesBelowTheDomain(t *testing.T) {
	for _, tc := range []struct {
		host    string
		allowed bool
	}{
		{host: "api.example.test", allowed: true},
		{host: "a.b.example.test", allowed: true},
		{host: "example.test"},
		{host: "badexample.test"},
	} {
		t.Run(tc.host, func(t *testing.T) {
			g := NewWithT(t)
			e := newEnv(t, apiToken("*.example.test"))
			u := newUpstream(t, e.upstreamCA, tc.host)
			e.route(httpsDst, u)
			c, _ := e.guest(t, httpsDst)

			req := newRequest(t, http.MethodGet, "https://"+tc.host+"/", "")
			req.Header.Set("Authorization", "Bearer "+placeholder)
			status, _ := do(t, c, req)

			if tc.allowed {
				g.Expect(status).To(Equal(http.StatusOK))
				g.Expect(u.seen()).To(ConsistOf(HaveField("Header", HaveKeyWithValue("Authorization", []string{"Bearer " + realValue}))))
			} else {
				g.Expect(status).To(Equal(http.StatusForbidden))
				g.Expect(u.seen()).To(BeEmpty())
			}
		})
	}
}

func TestQueryAndBodyAreSubstitutedOnlyWhenTheSecretAsks(t *testing.T) {
	g := NewWithT(t)
	both := apiToken("allowed.test")
	both.QueryParams, both.Body = true, true
	headersOnly := Secret{Name: "OTHER", Placeholder: "$SANDBOX_SECRET_OTHER", Value: []byte("other-value"), AllowedHosts: []string{"allowed.test"}, Headers: true}
	e := newEnv(t, both, headersOnly)
	u := newUpstream(t, e.upstreamCA, "allowed.test")
	e.route(httpsDst, u)
	c, _ := e.guest(t, httpsDst)

	req := newRequest(t, http.MethodPost, "https://allowed.test/x?key="+placeholder+"&o=$SANDBOX_SECRET_OTHER&plain=1",
		`{"token":"`+placeholder+`","other":"$SANDBOX_SECRET_OTHER"}`)
	status, _ := do(t, c, req)

	g.Expect(status).To(Equal(http.StatusOK))
	got := u.seen()
	g.Expect(got).To(HaveLen(1))
	g.Expect(got[0].RawQuery).To(Equal("key=" + realValue + "&o=$SANDBOX_SECRET_OTHER&plain=1"))
	g.Expect(got[0].Body).To(Equal(`{"token":"` + realValue + `","other":"$SANDBOX_SECRET_OTHER"}`))
	g.Expect(got[0].Header.Get("Content-Length")).To(Equal(strconv.Itoa(len(got[0].Body))))
}

func TestAChunkedBodyBehindExpectContinueIsSubstituted(t *testing.T) {
	g := NewWithT(t)
	s := apiToken("allowed.test")
	s.Body = true
	e := newEnv(t, s)
	u := newUpstream(t, e.upstreamCA, "allowed.test")
	e.route(httpsDst, u)
	c, _ := e.guest(t, httpsDst)
	c.Transport.(*http.Transport).ExpectContinueTimeout = time.Minute // the proxy must answer 100

	req := newRequest(t, http.MethodPut, "https://allowed.test/", "")
	req.Body = io.NopCloser(io.MultiReader(strings.NewReader("a="), strings.NewReader(placeholder))) // unknown length: chunked
	req.Header.Set("Expect", "100-continue")
	status, _ := do(t, c, req)

	g.Expect(status).To(Equal(http.StatusOK))
	got := u.seen()
	g.Expect(got).To(HaveLen(1))
	g.Expect(got[0].Body).To(Equal("a=" + realValue))
}

func TestABodyPlaceholderToAnotherHostIsAViolation(t *testing.T) {
	g := NewWithT(t)
	s := apiToken("allowed.test")
	s.Body = true
	e := newEnv(t, s)
	u := newUpstream(t, e.upstreamCA, "other.test")
	e.route(httpsDst, u)
	c, _ := e.guest(t, httpsDst)

	status, _ := do(t, c, newRequest(t, http.MethodPost, "https://other.test/", "token="+placeholder))

	g.Expect(status).To(Equal(http.StatusForbidden))
	g.Expect(u.seen()).To(BeEmpty())
	g.Expect(e.reported()).To(ConsistOf(HaveField("Where", "body")))
}

func TestAGuestOfferingOnlyHTTP2IsSplicedToTheRealServer(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, apiToken("allowed.test"))
	ln, err := tls.Listen("tcp", "127.0.0.1:0", upstreamTLS(t, e.upstreamCA, "allowed.test", "h2"))
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = ln.Close() }()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_ = c.(*tls.Conn).Handshake()
			_ = c.Close()
		}
	}()
	e.routes[httpsDst.String()] = ln.Addr().String()

	guest, node := pipe(t)
	done := make(chan error, 1)
	go func() { done <- e.proxy.Handle(context.Background(), node, httpsDst) }()
	roots := x509.NewCertPool()
	roots.AddCert(e.upstreamCA.Cert)
	tc := tls.Client(guest, &tls.Config{ServerName: "allowed.test", RootCAs: roots, NextProtos: []string{"h2"}})
	g.Expect(tc.Handshake()).To(Succeed()) // the upstream's own certificate
	g.Expect(tc.ConnectionState().NegotiatedProtocol).To(Equal("h2"))
	_ = tc.Close()
	g.Eventually(done).Should(Receive(BeNil()))
}

func TestOtherProtocolsAreSplicedUnchanged(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, apiToken("allowed.test"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = ln.Close() }()
	go func() { // echo
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.Copy(c, c)
			_ = c.Close()
		}
	}()
	e.routes[httpsDst.String()] = ln.Addr().String()

	guest, node := pipe(t)
	done := make(chan error, 1)
	go func() { done <- e.proxy.Handle(context.Background(), node, httpsDst) }()
	msg := "\x00binary " + placeholder
	_, err = io.WriteString(guest, msg)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(guest.(*net.TCPConn).CloseWrite()).To(Succeed())
	echo, err := io.ReadAll(guest)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(echo)).To(Equal(msg))
	g.Eventually(done).Should(Receive(BeNil()))
	g.Expect(e.reported()).To(BeEmpty())
}

func TestIntercepts(t *testing.T) {
	for _, tc := range []struct {
		name    string
		proxy   *Proxy
		port    uint16
		matches bool
	}{
		{name: "HTTPS with secrets", proxy: &Proxy{Secrets: []Secret{apiToken("a.test")}}, port: 443, matches: true},
		{name: "HTTP with secrets", proxy: &Proxy{Secrets: []Secret{apiToken("a.test")}}, port: 80, matches: true},
		{name: "another port with secrets", proxy: &Proxy{Secrets: []Secret{apiToken("a.test")}}, port: 22},
		{name: "HTTPS without secrets", proxy: &Proxy{}, port: 443},
		{name: "a configured port", proxy: &Proxy{Secrets: []Secret{apiToken("a.test")}, Ports: []uint16{8443}}, port: 8443, matches: true},
		{name: "a default port when others are configured", proxy: &Proxy{Secrets: []Secret{apiToken("a.test")}, Ports: []uint16{8443}}, port: 443},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(tc.proxy.Intercepts(netip.AddrPortFrom(httpsDst.Addr(), tc.port))).To(Equal(tc.matches))
		})
	}
}

// upstreamTLS is a server TLS config with a certificate for name.
func upstreamTLS(t *testing.T, ca *access.CA, name string, protos ...string) *tls.Config {
	t.Helper()
	kp, err := ca.IssueServer(name, []string{name}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := kp.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: protos}
}

// pipe is a loopback TCP connection's two ends.
func pipe(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a, b
}

func TestAnUpgradedConnectionIsSplicedAfterTheSwitch(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, apiToken("allowed.test"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = ln.Close() }()
	upstreamSaw := make(chan string, 1)
	go func() { // answers 101, then echoes
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		upstreamSaw <- req.Header.Get("Authorization")
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		_, _ = io.Copy(c, br)
	}()
	e.routes[httpDst.String()] = ln.Addr().String()
	e.proxy.NamesOf = func(netip.Addr) []string { return []string{"allowed.test"} }

	guest, node := pipe(t)
	done := make(chan error, 1)
	go func() { done <- e.proxy.Handle(context.Background(), node, httpDst) }()
	_, err = io.WriteString(guest, "GET /ws HTTP/1.1\r\nHost: allowed.test\r\nAuthorization: Bearer "+placeholder+"\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	g.Expect(err).NotTo(HaveOccurred())
	gr := bufio.NewReader(guest)
	resp, err := http.ReadResponse(gr, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(resp.StatusCode).To(Equal(http.StatusSwitchingProtocols))
	g.Expect(<-upstreamSaw).To(Equal("Bearer " + realValue))

	frame := "frames are not inspected: " + placeholder
	_, err = io.WriteString(guest, frame)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(guest.(*net.TCPConn).CloseWrite()).To(Succeed())
	echo, err := io.ReadAll(gr)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(echo)).To(Equal(frame))
	g.Eventually(done).Should(Receive(BeNil()))
}
