//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/utils/exec"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/access"
)

// NetworkSpecInput is the input of networkSpecs.
type NetworkSpecInput struct {
	// Namespace holds the Sandboxes.
	Namespace string
	// Public is a Running Sandbox with the default network (the "public"
	// egress profile); Offline one with network.enabled: false.
	Public, Offline string
	// Apply applies a Sandbox named name with the spec body (YAML under
	// spec:, after image) and waits for it to run; it returns its node.
	Apply func(name, body string) string
	// Delete deletes a Sandbox and waits until it is gone.
	Delete func(name string)
	// Agent is the node agent of a node.
	Agent func(node string) *agentProcess
	// Timing records a measured duration in the suite's timing report.
	Timing func(what string, d time.Duration)
	// EgressCA is the test's CA that the node agents trust for the secrets
	// proxy's upstreams (--egress-ca-bundle); the test's HTTPS server has
	// a certificate from it.
	EgressCA func() *access.CA
}

// testNetns is a network namespace of the test's own, linked to the host
// by a veth pair: the host end has .1, the namespace end .2 and .3 — the
// "private addresses" the egress policy guards. Nothing else is reached.
type testNetns struct {
	name, hostIf   string
	host, a, b     string // 10.99.N.1, .2, .3
	server         *exec.Cmd
	serverContents string
	nettool        string
}

func newTestNetns() *testNetns {
	GinkgoHelper()
	n := os.Getpid()%200 + 20
	t := &testNetns{name: fmt.Sprintf("sbxe2e%d", os.Getpid()), hostIf: fmt.Sprintf("sbxe2e%d", n),
		host: fmt.Sprintf("10.99.%d.1", n), a: fmt.Sprintf("10.99.%d.2", n), b: fmt.Sprintf("10.99.%d.3", n)}
	run := func(args ...string) {
		GinkgoHelper()
		out, err := exec.Command("ip", args...).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "ip %s: %s", strings.Join(args, " "), out)
	}
	_ = exec.Command("ip", "netns", "del", t.name).Run()
	_ = exec.Command("ip", "link", "del", t.hostIf).Run()
	run("netns", "add", t.name)
	run("link", "add", t.hostIf, "type", "veth", "peer", "name", "inner", "netns", t.name)
	run("addr", "add", t.host+"/24", "dev", t.hostIf)
	run("link", "set", t.hostIf, "up")
	run("-n", t.name, "addr", "add", t.a+"/24", "dev", "inner")
	run("-n", t.name, "addr", "add", t.b+"/24", "dev", "inner")
	run("-n", t.name, "link", "set", "inner", "up")
	run("-n", t.name, "link", "set", "lo", "up")

	// The image's nettool (static Go) is the namespace's client: the
	// host's busybox wget crashes there (glibc's NSS in a static binary).
	nt, err := buildNettool()
	Expect(err).NotTo(HaveOccurred())
	t.nettool = filepath.Join(GinkgoT().TempDir(), "nettool")
	Expect(os.WriteFile(t.nettool, nt, 0o755)).To(Succeed())

	// busybox httpd in the namespace, on every address of it, port 8080.
	dir := GinkgoT().TempDir()
	t.serverContents = "hello from the test namespace"
	Expect(os.WriteFile(filepath.Join(dir, "index.html"), []byte(t.serverContents), 0o644)).To(Succeed())
	_, bb, err := staticBusybox() // the image's busybox: httpd in the namespace
	Expect(err).NotTo(HaveOccurred())
	t.server = exec.Command("ip", "netns", "exec", t.name, bb, "httpd", "-f", "-p", "8080", "-h", dir)
	Expect(t.server.Start()).To(Succeed())
	Eventually(func() error { _, err := t.get("http://" + t.a + ":8080/"); return err }).Should(Succeed())
	return t
}

// get fetches url from inside the namespace with nettool.
func (t *testNetns) get(url string) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", t.name, t.nettool, "get", url).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	return string(out), nil
}

func (t *testNetns) close() {
	if t.server != nil && t.server.Process != nil {
		_ = t.server.Process.Kill()
		_ = t.server.Wait()
	}
	_ = exec.Command("ip", "link", "del", t.hostIf).Run()
	_ = exec.Command("ip", "netns", "del", t.name).Run()
}

// testDNS serves A records for the test's names on 127.0.0.1 (UDP).
func testDNS(answers map[string]string) (addr string, stop func()) {
	GinkgoHelper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		ip, ok := answers[strings.TrimSuffix(strings.ToLower(q.Name), ".")]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.ParseIP(ip)})
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	return pc.LocalAddr().String(), func() { _ = srv.Shutdown() }
}

// sandboxExec runs cmd in a sandbox through the access API as the admin,
// with client-go's websocket executor; code is the command's exit code.
func sandboxExec(namespace, name string, cmd ...string) (stdout, stderr string, code int) {
	GinkgoHelper()
	stdout, stderr, code, err := trySandboxExec(namespace, name, cmd...)
	if err != nil {
		Fail(fmt.Sprintf("exec %v in %s: %v (stdout %q, stderr %q)", cmd, name, err, stdout, stderr))
	}
	return stdout, stderr, code
}

// trySandboxExec is sandboxExec returning a stream failure (other than the
// command's exit code) as err.
func trySandboxExec(namespace, name string, cmd ...string) (stdout, stderr string, code int, err error) {
	GinkgoHelper()
	cfg := testEnv.Config
	q := url.Values{"command": cmd, "stdout": {"true"}, "stderr": {"true"}}
	u := fmt.Sprintf("%s/apis/%s/%s/namespaces/%s/sandboxes/%s/exec?%s", strings.TrimSuffix(cfg.Host, "/"),
		access.Group, access.Version, namespace, name, q.Encode())
	ex, err := remotecommand.NewWebSocketExecutor(cfg, http.MethodGet, u)
	Expect(err).NotTo(HaveOccurred())
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errb})
	var exitErr utilexec.ExitError
	if errors.As(err, &exitErr) {
		code, err = exitErr.ExitStatus(), nil
	}
	return out.String(), errb.String(), code, err
}

// guestGet fetches url with the image's nettool (Go's HTTP client and
// resolver, 10 s timeout); errors are on stderr.
func guestGet(namespace, name, u string) (body, stderr string, code int) {
	GinkgoHelper()
	return sandboxExec(namespace, name, "nettool", "get", u)
}

// metricValue finds a sample's value in a Prometheus text exposition: the
// metric name with every label in labels.
func metricValue(exposition, metric string, labels map[string]string) (float64, bool) {
	for _, line := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		ok := true
		for k, v := range labels {
			if !strings.Contains(line, k+`="`+v+`"`) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		return v, err == nil
	}
	return 0, false
}

// networkSpecs declares the networking specs: egress under the default
// profile and under explicit rules (CIDR, domain via a test DNS server),
// denials in the agent's metrics, a published port from the node and
// through the Service's EndpointSlice, and a sandbox without a NIC. All
// traffic goes to 127.0.0.1 or to the test's own network namespace.
func networkSpecs(input NetworkSpecInput) {
	ctx := context.Background()
	ns := input.Namespace
	var (
		tn         *testNetns
		nodeSrv    *httptest.Server
		nodePort   string
		dnsAddr    string
		stopDNS    func()
		allowNode  string
		publicNode string
	)
	const allowed = "netallow"

	Describe("networking: egress policy, DNS, published ports", func() {
		BeforeAll(func() {
			By("making a network namespace with a veth pair and busybox httpd on its two addresses, a DNS server and an HTTP server on 127.0.0.1")
			tn = newTestNetns()
			DeferCleanup(tn.close)
			nodeSrv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, "hello from the node's loopback")
			}))
			DeferCleanup(nodeSrv.Close)
			_, nodePort, _ = net.SplitHostPort(strings.TrimPrefix(nodeSrv.URL, "http://"))
			dnsAddr, stopDNS = testDNS(map[string]string{"allowed.test": tn.b, "denied.test": tn.b,
				"api.allowed.test": tn.host, "api.other.test": tn.host})
			DeferCleanup(stopDNS)
			s := &sandboxv1alpha1.Sandbox{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: input.Public}, s)).To(Succeed())
			publicNode = s.Status.NodeName
		})

		It("keeps the default profile's sandbox off the node's loopback and off private addresses, and counts the denials in the agent's metrics", func() {
			By("seeing eth0 in the guest, configured by the node: 10.0.2.15, resolver 10.0.2.3")
			out, _, code := sandboxExec(ns, input.Public, "ls", "/sys/class/net")
			Expect(code).To(BeZero())
			Expect(strings.Fields(out)).To(ConsistOf("eth0", "lo"))
			out, _, _ = sandboxExec(ns, input.Public, "cat", "/etc/resolv.conf")
			Expect(out).To(ContainSubstring("nameserver 10.0.2.3"))

			start := time.Now()
			_, errOut, code := guestGet(ns, input.Public, "http://10.0.2.2:"+nodePort+"/")
			input.Timing("network: denied connection → wget fails", time.Since(start))
			Expect(code).NotTo(BeZero(), "the node's loopback (127.0.0.1:%s at the gateway) must be refused: %s", nodePort, errOut)
			Expect(errOut).To(ContainSubstring("refused"))
			_, errOut, code = guestGet(ns, input.Public, "http://"+tn.a+":8080/")
			Expect(code).NotTo(BeZero(), "a private address must be refused: %s", errOut)
			Expect(errOut).To(ContainSubstring("refused"))

			By("reading the denials in the Sandbox's status.network (reported within a few seconds)")
			Eventually(func(g Gomega) {
				sb := &sandboxv1alpha1.Sandbox{}
				g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: input.Public}, sb)).To(Succeed())
				g.Expect(sb.Status.Network).NotTo(BeNil())
				g.Expect(sb.Status.Network.DeniedTotal).To(BeNumerically(">=", 2))
				g.Expect(sb.Status.Network.RecentDenials).To(ContainElement(And(
					HaveField("Class", "group:Private"), HaveField("Protocol", "TCP"), HaveField("Destination", tn.a+":8080"),
					HaveField("Reason", ContainSubstring(tn.a)))))
			}).WithTimeout(20 * time.Second).Should(Succeed())

			By("reading the denials from the agent's Prometheus endpoint")
			agent := input.Agent(publicNode)
			Eventually(func(g Gomega) {
				m := agent.scrapeMetrics(g)
				loop, ok := metricValue(m, "sandbox_network_denied_total", map[string]string{"name": input.Public, "class": "group:Host"})
				g.Expect(ok).To(BeTrue(), "no denial of the node (the gateway is the node: group Host) for %s in:\n%s", input.Public, grepLines(m, "sandbox_network"))
				g.Expect(loop).To(BeNumerically(">=", 1))
				priv, ok := metricValue(m, "sandbox_network_denied_total", map[string]string{"name": input.Public, "class": "group:Private"})
				g.Expect(ok).To(BeTrue(), "no private-range denial in:\n%s", grepLines(m, "sandbox_network"))
				g.Expect(priv).To(BeNumerically(">=", 1))
			}).Should(Succeed())
		})

		It("gives a sandbox with network.enabled: false no network interface at all", func() {
			out, _, code := sandboxExec(ns, input.Offline, "ls", "/sys/class/net")
			Expect(code).To(BeZero())
			Expect(strings.Fields(out)).To(Equal([]string{"lo"}))
			s := &sandboxv1alpha1.Sandbox{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: input.Offline}, s)).To(Succeed())
			Expect(s.Status.Conditions).To(ContainElement(And(
				HaveField("Type", sandboxv1alpha1.ConditionNetworkReady), HaveField("Reason", sandboxv1alpha1.ReasonNetworkDisabled))))
		})

		It("lets explicit rules through — 127.0.0.1, a private /32, a domain answered by the test's DNS server — and denies a denied domain", func() {
			hostPort := freePortOn(tn.host)
			By(fmt.Sprintf("applying %s: defaultEgress Deny; allow 127.0.0.1/32 TCP, %s/32, domain allowed.test; deny domain denied.test; DNS %s; port 8080 published on %s:%d", allowed, tn.a, dnsAddr, tn.host, hostPort))
			start := time.Now()
			DeferCleanup(func() {
				if CurrentSpecReport().Failed() {
					input.Delete(allowed) // it holds a node's CPU; the last spec deletes it otherwise
				}
			})
			allowNode = input.Apply(allowed, fmt.Sprintf(`  resources:
    cpus: 1
    memoryMiB: 256
  runtime:
    entrypoint: ["/bin/sh", "-c"]
    cmd:
    - mkdir -p /tmp/www && echo hello-from-the-guest > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www
  network:
    ports:
    - name: http
      guestPort: 8080
      hostPort: %d
      hostIP: %s
    policy:
      defaultEgress: Deny
      rules:
      - action: Allow
        destination: {cidr: 127.0.0.1/32}
        protocols: [TCP]
      - action: Allow
        destination: {cidr: %s/32}
      - action: Deny
        destination: {domain: denied.test}
      - action: Allow
        destination: {domain: allowed.test}
    dns:
      nameservers: [%q]
`, hostPort, tn.host, tn.a, dnsAddr))
			input.Timing("network: apply "+allowed+" → Running", time.Since(start))

			body, errOut, code := guestGet(ns, allowed, "http://10.0.2.2:"+nodePort+"/")
			Expect(code).To(BeZero(), "127.0.0.1 is allowed: %s", errOut)
			Expect(body).To(Equal("hello from the node's loopback"))
			body, errOut, code = guestGet(ns, allowed, "http://"+tn.a+":8080/")
			Expect(code).To(BeZero(), "%s/32 is allowed: %s", tn.a, errOut)
			Expect(body).To(Equal(tn.serverContents))
			_, _, code = guestGet(ns, allowed, "http://"+tn.b+":8080/")
			Expect(code).NotTo(BeZero(), "%s is not allowed by address", tn.b)
			body, errOut, code = guestGet(ns, allowed, "http://allowed.test:8080/")
			Expect(code).To(BeZero(), "allowed.test (%s) is allowed by the domain rule: %s", tn.b, errOut)
			Expect(body).To(Equal(tn.serverContents))
			_, errOut, code = guestGet(ns, allowed, "http://denied.test:8080/")
			Expect(code).NotTo(BeZero())
			Expect(errOut).To(ContainSubstring("no such host"), "denied.test gets NXDOMAIN")

			agent := input.Agent(allowNode)
			Eventually(func(g Gomega) {
				m := agent.scrapeMetrics(g)
				v, ok := metricValue(m, "sandbox_network_denied_total", map[string]string{"name": allowed, "class": "dns"})
				g.Expect(ok).To(BeTrue(), "no DNS denial in:\n%s", grepLines(m, "sandbox_network"))
				g.Expect(v).To(BeNumerically(">=", 1))
				v, ok = metricValue(m, "sandbox_network_denied_total", map[string]string{"name": allowed, "class": "default"})
				g.Expect(ok).To(BeTrue())
				g.Expect(v).To(BeNumerically(">=", 1))
			}).Should(Succeed())
		})

		It("serves the guest's HTTP server on the published port, from the node and through the Service's EndpointSlice address", func() {
			Expect(allowNode).NotTo(BeEmpty(), "the rules spec did not start "+allowed)
			s := &sandboxv1alpha1.Sandbox{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: allowed}, s)).To(Succeed())
			Expect(s.Status.Ports).To(HaveLen(1))
			p := s.Status.Ports[0]
			Expect(p.HostIP).To(Equal(tn.host))
			Expect(p.GuestPort).To(Equal(int32(8080)))
			endpoint := net.JoinHostPort(p.HostIP, strconv.Itoa(int(p.HostPort)))

			By("GET http://" + endpoint + "/ from the node")
			start := time.Now()
			resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + endpoint + "/")
			Expect(err).NotTo(HaveOccurred())
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			input.Timing("network: published port, first GET from the node", time.Since(start))
			Expect(string(b)).To(Equal("hello-from-the-guest\n"))

			By("finding the Service and its EndpointSlice, and fetching from the slice's address inside the test namespace")
			svc := &corev1.Service{}
			Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: allowed}, svc) }).Should(Succeed())
			Expect(svc.Spec.Selector).To(BeEmpty())
			Expect(svc.Spec.Ports).To(ContainElement(HaveField("Port", int32(8080))))
			var addr string
			var port int32
			Eventually(func(g Gomega) {
				slices := &discoveryv1.EndpointSliceList{}
				g.Expect(k8sClient.List(ctx, slices, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: allowed})).To(Succeed())
				g.Expect(slices.Items).To(HaveLen(1))
				es := slices.Items[0]
				g.Expect(es.Endpoints).To(HaveLen(1))
				g.Expect(es.Endpoints[0].Addresses).To(HaveLen(1))
				g.Expect(es.Endpoints[0].Conditions.Ready).To(HaveValue(BeTrue()))
				g.Expect(es.Ports).To(HaveLen(1))
				addr, port = es.Endpoints[0].Addresses[0], *es.Ports[0].Port
			}).Should(Succeed())
			Expect(addr).To(Equal(tn.host))
			out, err := tn.get(fmt.Sprintf("http://%s/", net.JoinHostPort(addr, strconv.Itoa(int(port)))))
			Expect(err).NotTo(HaveOccurred(), out)
			Expect(out).To(Equal("hello-from-the-guest\n"))
		})

		It("substitutes a secret's placeholder in an HTTPS request to its allowed host only; the value is nowhere in the guest", func() {
			const secretName, value = "e2e-api-token", "real-token-8c1f27d9"
			const secretSandbox = "netsecret"
			By("serving HTTPS on " + tn.host + ":443 as api.allowed.test and api.other.test (a certificate from the test's CA, which the agents trust)")
			pair, err := input.EgressCA().IssueServer("e2e-upstream", []string{"api.allowed.test", "api.other.test"}, time.Hour)
			Expect(err).NotTo(HaveOccurred())
			cert, err := pair.TLSCertificate()
			Expect(err).NotTo(HaveOccurred())
			var seen syncBuffer
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = fmt.Fprintf(&seen, "%s auth=%q key=%q\n", r.Host, r.Header.Get("Authorization"), r.Header.Get("X-Key"))
				_, _ = io.WriteString(w, "ok")
			}))
			ln, err := net.Listen("tcp", net.JoinHostPort(tn.host, "443"))
			Expect(err).NotTo(HaveOccurred())
			srv.Listener = ln
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			srv.StartTLS()
			DeferCleanup(srv.Close)

			mustKubectl("create", "secret", "generic", secretName, "-n", ns, "--from-literal=token="+value)
			DeferCleanup(func() { input.Delete(secretSandbox) }) // also after a failure: it holds a node's CPU
			input.Apply(secretSandbox, fmt.Sprintf(`  resources:
    cpus: 1
    memoryMiB: 256
  network:
    policy:
      defaultEgress: Deny
      rules:
      - action: Allow
        destination: {cidr: %s/32}
        protocols: [TCP]
        ports: [{start: 443}]
    dns:
      nameservers: [%q]
    secrets:
    - envVar: API_TOKEN
      secretKeyRef: {name: %s, key: token}
      allowedHosts: [api.allowed.test]
    - envVar: TRIPWIRE
      secretKeyRef: {name: %s, key: token}
      allowedHosts: [api.allowed.test]
      onViolation: BlockAndTerminate
`, tn.host, dnsAddr, secretName, secretName))

			By("seeing the placeholder, not the value, in the guest's environment")
			out, _, code := sandboxExec(ns, secretSandbox, "sh", "-c", "echo $API_TOKEN")
			Expect(code).To(BeZero())
			Expect(strings.TrimSpace(out)).To(Equal("$SANDBOX_SECRET_API_TOKEN"))

			By("sending it to api.allowed.test: the server receives the real value")
			out, errOut, code := sandboxExec(ns, secretSandbox, "sh", "-c", `nettool get https://api.allowed.test/ "Authorization: Bearer $API_TOKEN"`)
			Expect(code).To(BeZero(), "stderr: %s", errOut)
			Expect(out).To(Equal("ok"))
			Expect(seen.String()).To(Equal(fmt.Sprintf("api.allowed.test auth=%q key=\"\"\n", "Bearer "+value)))

			By("sending it to api.other.test: blocked with 403 by the node, the server sees nothing")
			_, errOut, code = sandboxExec(ns, secretSandbox, "sh", "-c", `nettool get https://api.other.test/ "Authorization: Bearer $API_TOKEN"`)
			Expect(code).NotTo(BeZero())
			Expect(errOut).To(And(ContainSubstring("403"), ContainSubstring("API_TOKEN")))
			Expect(seen.String()).NotTo(ContainSubstring("api.other.test"))
			By("a request without the placeholder to api.other.test passes")
			out, errOut, code = sandboxExec(ns, secretSandbox, "nettool", "get", "https://api.other.test/")
			Expect(code).To(BeZero(), "stderr: %s", errOut)
			Expect(out).To(Equal("ok"))

			By("grepping the guest's environment and filesystem for the value")
			out, _, _ = sandboxExec(ns, secretSandbox, "env")
			Expect(out).To(ContainSubstring("API_TOKEN="))
			Expect(out).NotTo(ContainSubstring(value))
			// Regular files only (-type f): a FIFO or socket would block grep.
			out, errOut, _ = sandboxExec(ns, secretSandbox, "sh", "-c",
				"find / -xdev -type f -size -4M -exec grep -l "+value+" {} + ; echo searched")
			Expect(out).To(HaveSuffix("searched\n"), "stderr: %s", errOut)
			Expect(out).To(Equal("searched\n"), "files holding the value")

			Eventually(func(g Gomega) {
				m := input.Agent(getNode(ns, secretSandbox)).scrapeMetrics(g)
				v, ok := metricValue(m, "sandbox_network_denied_total", map[string]string{"name": secretSandbox, "class": "secret"})
				g.Expect(ok).To(BeTrue(), "no secret violation in:\n%s", grepLines(m, "sandbox_network"))
				g.Expect(v).To(BeNumerically(">=", 1))
			}).Should(Succeed())
			By("seeing a SecretBlocked Warning event on the Sandbox (onViolation BlockAndLog, the default)")
			Eventually(func(g Gomega) {
				evs := &eventsv1.EventList{}
				g.Expect(k8sClient.List(ctx, evs, client.InNamespace(ns))).To(Succeed())
				var found bool
				for _, e := range evs.Items {
					if e.Regarding.Name == secretSandbox && e.Reason == "SecretBlocked" {
						found = true
						g.Expect(e.Type).To(Equal(corev1.EventTypeWarning))
						g.Expect(e.Note).To(And(ContainSubstring("API_TOKEN"), ContainSubstring("api.other.test"), Not(ContainSubstring(value))))
					}
				}
				g.Expect(found).To(BeTrue(), "no SecretBlocked event for %s", secretSandbox)
			}).Should(Succeed())

			By("sending TRIPWIRE (onViolation BlockAndTerminate) to api.other.test: the sandbox stops with terminationReason PolicyViolation")
			// The stop may end the exec session before it reports (the VM goes).
			_, _, code, err = trySandboxExec(ns, secretSandbox, "sh", "-c", `nettool get https://api.other.test/ "X-Key: $TRIPWIRE"`)
			Expect(err != nil || code != 0).To(BeTrue(), "the request must fail")
			Eventually(func(g Gomega) {
				sb := &sandboxv1alpha1.Sandbox{}
				g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: secretSandbox}, sb)).To(Succeed())
				g.Expect(sb.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStopped))
				g.Expect(sb.Status.TerminationReason).To(Equal(sandboxv1alpha1.TerminationPolicyViolation))
			}).WithTimeout(60 * time.Second).Should(Succeed())
			Expect(strings.Count(seen.String(), "api.other.test")).To(Equal(1), "only the request without a placeholder reached api.other.test: %s", seen.String())
			Expect(seen.String()).To(ContainSubstring(`api.other.test auth="" key=""`))
			input.Delete(secretSandbox)
		})

		It("deletes "+allowed+" with its Service and EndpointSlice", func() {
			input.Delete(allowed)
			Eventually(func(g Gomega) {
				slices := &discoveryv1.EndpointSliceList{}
				g.Expect(k8sClient.List(ctx, slices, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: allowed})).To(Succeed())
				g.Expect(slices.Items).To(BeEmpty())
				err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: allowed}, &corev1.Service{})
				g.Expect(err).To(HaveOccurred())
			}).WithTimeout(30 * time.Second).Should(Succeed())
		})
	})
}

func getNode(namespace, name string) string {
	GinkgoHelper()
	s := &sandboxv1alpha1.Sandbox{}
	Expect(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: namespace, Name: name}, s)).To(Succeed())
	return s.Status.NodeName
}

// freePortOn returns a TCP port free on addr.
func freePortOn(addr string) int {
	GinkgoHelper()
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	Expect(err).NotTo(HaveOccurred())
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
