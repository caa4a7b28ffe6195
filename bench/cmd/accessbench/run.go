package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/access"
	"github.com/microvm-dev/sandbox-operator/internal/devimage"
	"github.com/microvm-dev/sandbox-operator/pkg/client/clientset/versioned"
)

const (
	leaseNamespace = "sandbox-system"
	benchNamespace = "accessbench"
	nodeName       = "accessbench-node"
	sandboxName    = "bench"
	// accessServiceName is the manager's --access-service default.
	accessServiceName = "sandbox-access"
)

// idleCmd keeps the sandbox Running and idle.
var idleCmd = []string{"/bin/sh", "-c", "sleep 36000"}

// bench is one run's state.
type bench struct {
	cfg     config
	root    string
	work    string
	started time.Time
	elapsed time.Duration

	env        *envtest.Environment
	adminCfg   *rest.Config
	kube       kubernetes.Interface
	sbx        versioned.Interface
	ctrl       client.Client
	kubeconfig string
	k8sVersion string

	plugin   string
	sandbox  *sandboxv1alpha1.Sandbox
	endpoint string
	agentCfg *rest.Config // the manager's client certificate, trusting the agent's
	agentHC  *http.Client

	// samples, milliseconds
	direct, ws, binary, procStart []float64
	// MiB/s
	upPlugin, upDirect, downPlugin, downDirect []float64
	// seconds per copy
	upPluginS, upDirectS, downPluginS, downDirectS []float64
	bootMs                                         float64
	tmpFS                                          string
	machine                                        string
}

func run(ctx context.Context, c config) (err error) {
	b := &bench{cfg: c, started: time.Now()}
	if b.root, err = filepath.Abs(c.root); err != nil {
		return err
	}
	if !filepath.IsAbs(c.out) {
		b.cfg.out = filepath.Join(b.root, c.out)
	}
	for _, bin := range []string{"manager", "node-agent", "sandbox-init", "kubectl-sandbox"} {
		if _, err := os.Stat(filepath.Join(b.root, "bin", bin)); err != nil {
			return fmt.Errorf("bin/%s is missing: run `make build`", bin)
		}
	}
	b.plugin = filepath.Join(b.root, "bin", "kubectl-sandbox")
	// Short: the agent's unix socket paths under the state dir must stay
	// within 107 bytes.
	if b.work, err = os.MkdirTemp("", "ab-"); err != nil {
		return err
	}
	defer func() {
		if c.keepWork || err != nil {
			logf("kept the work dir %s (manager.log, node-agent.log, state/)", b.work)
			return
		}
		_ = os.RemoveAll(b.work)
	}()

	if err := b.startCluster(); err != nil {
		return err
	}
	defer func() {
		if err := b.env.Stop(); err != nil {
			logf("stopping envtest: %v", err)
		}
	}()
	for _, ns := range []string{leaseNamespace, benchNamespace} {
		if _, err := b.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	// The aggregator reaches the manager's access API on loopback through
	// an ExternalName Service (as test/e2e does).
	if _, err := b.kube.CoreV1().Services(leaseNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: accessServiceName, Namespace: leaseNamespace},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost",
			Ports: []corev1.ServicePort{{Port: int32(port), TargetPort: intstr.FromInt32(int32(port))}}},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}

	files, err := devimage.Busybox("")
	if err != nil {
		return fmt.Errorf("%w (install busybox-static: hack/setup.sh)", err)
	}
	img, err := devimage.Image(files, v1.Config{Cmd: idleCmd, Env: []string{"PATH=/bin"}})
	if err != nil {
		return err
	}
	reg, err := devimage.Serve("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer func() { _ = reg.Close() }()
	ref, err := reg.Push("accessbench/busybox:v1", img)
	if err != nil {
		return err
	}

	mgr, err := startProcess("manager", filepath.Join(b.root, "bin", "manager"), filepath.Join(b.work, "manager.log"),
		"--kubeconfig="+b.kubeconfig, "--leader-elect=false", "--lease-namespace="+leaseNamespace,
		"--metrics-bind-address=0", "--health-probe-bind-address=0",
		fmt.Sprintf("--access-bind-address=127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	defer func() {
		if err := mgr.stop(15 * time.Second); err != nil {
			logf("%v", err)
		}
	}()
	stateDir := filepath.Join(b.work, "state")
	agent, err := startProcess("node agent", filepath.Join(b.root, "bin", "node-agent"), filepath.Join(b.work, "node-agent.log"),
		"--kubeconfig="+b.kubeconfig, "--node-name="+nodeName, "--lease-namespace="+leaseNamespace,
		"--allow-emulation", "--accelerator="+c.accelerator, "--reserve-cpus=0",
		"--state-dir="+stateDir, "--kernel="+filepath.Join(b.root, "bin", "guest", "vmlinux"),
		"--sandbox-init="+filepath.Join(b.root, "bin", "sandbox-init"), "--guest-modules="+filepath.Join(b.root, "bin", "guest", "modules"),
		"--metrics-bind-address=0", "--health-probe-bind-address=0",
		"--access-bind-address=127.0.0.1:0")
	if err != nil {
		return err
	}
	defer func() {
		// Delete the Sandbox first (the agent stops its VM), then stop
		// the agent and kill whatever VM it left.
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = b.sbx.SandboxV1alpha1().Sandboxes(benchNamespace).Delete(dctx, sandboxName, metav1.DeleteOptions{})
		for dctx.Err() == nil {
			if _, err := b.sbx.SandboxV1alpha1().Sandboxes(benchNamespace).Get(dctx, sandboxName, metav1.GetOptions{}); err != nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err := agent.stop(20 * time.Second); err != nil {
			logf("%v", err)
		}
		if n := killAgentVMs(stateDir); n > 0 {
			logf("killed %d VM(s) the node agent left running", n)
		}
	}()
	if err := mgr.waitLog(ctx, "Serving the access API", 60*time.Second); err != nil {
		return err
	}
	if err := b.waitNodeReady(ctx, agent); err != nil {
		return err
	}

	logf("creating Sandbox %s/%s (%s, %d MiB) and waiting for Running", benchNamespace, sandboxName, ref, c.memoryMiB)
	start := time.Now()
	if _, err := b.sbx.SandboxV1alpha1().Sandboxes(benchNamespace).Create(ctx, &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: sandboxName, Namespace: benchNamespace},
		Spec: sandboxv1alpha1.SandboxSpec{
			Image:      ref,
			Resources:  sandboxv1alpha1.SandboxResources{CPUs: 1, MemoryMiB: int32(c.memoryMiB)},
			Registry:   &sandboxv1alpha1.RegistryOptions{Insecure: true},
			StopPolicy: sandboxv1alpha1.StopPolicy{GracePeriodSeconds: ptr.To[int64](2)},
		},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if err := poll(ctx, 3*time.Minute, func() (bool, error) {
		s, err := b.sbx.SandboxV1alpha1().Sandboxes(benchNamespace).Get(ctx, sandboxName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if s.Status.Phase == sandboxv1alpha1.PhaseCrashed {
			return false, fmt.Errorf("the Sandbox crashed: %+v", s.Status)
		}
		b.sandbox = s
		return s.Status.Phase == sandboxv1alpha1.PhaseRunning, nil
	}); err != nil {
		return fmt.Errorf("the Sandbox is not Running: %w (see %s)", err, b.work)
	}
	b.bootMs = msOf(time.Since(start))
	logf("Sandbox Running after %.0f ms (uid %s, node %s)", b.bootMs, b.sandbox.UID, b.sandbox.Status.NodeName)

	if err := b.setupDirect(ctx); err != nil {
		return err
	}
	// The APIService becomes Available and RBAC, discovery and the
	// aggregator's proxy settle: wait until an exec through the API server
	// works.
	if err := poll(ctx, 2*time.Minute, func() (bool, error) {
		return b.execWS(ctx) == nil, nil
	}); err != nil {
		return fmt.Errorf("exec through the API server never worked: %w (last: %v)", err, b.execWS(ctx))
	}
	if err := b.measureExec(ctx); err != nil {
		return err
	}
	if err := b.measureFiles(ctx); err != nil {
		return err
	}
	b.elapsed = time.Since(b.started)
	b.machine = machineString()
	r := b.report()
	r.print()
	if err := r.write(b.cfg.out); err != nil {
		return err
	}
	logf("wrote %s and %s", filepath.Join(b.cfg.out, "results.json"), filepath.Join(b.cfg.out, "results.md"))
	return nil
}

// startCluster starts envtest's kube-apiserver with the aggregation layer
// configured (as test/e2e and internal/access/aggregation_test.go do).
func (b *bench) startCluster() error {
	scheme := k8sruntime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = sandboxv1alpha1.AddToScheme(scheme)
	b.env = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(b.root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: filepath.Join(b.root, "bin", "k8s"),
		Scheme:                scheme,
	}
	frontCA, err := access.NewCA("accessbench-front-proxy-ca", 24*time.Hour)
	if err != nil {
		return err
	}
	proxyClient, err := frontCA.IssueClient("front-proxy-client", nil, 24*time.Hour)
	if err != nil {
		return err
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(b.work, name)
		_ = os.WriteFile(p, data, 0o600)
		return p
	}
	b.env.ControlPlane.GetAPIServer().Configure().
		Set("requestheader-client-ca-file", write("front-proxy-ca.crt", frontCA.CertPEM)).
		Set("requestheader-allowed-names", "front-proxy-client").
		Set("requestheader-username-headers", "X-Remote-User").
		Set("requestheader-group-headers", "X-Remote-Group").
		Set("requestheader-extra-headers-prefix", "X-Remote-Extra-").
		Set("proxy-client-cert-file", write("front-proxy-client.crt", proxyClient.CertPEM)).
		Set("proxy-client-key-file", write("front-proxy-client.key", proxyClient.KeyPEM))
	start := time.Now()
	if _, err := b.env.Start(); err != nil {
		return fmt.Errorf("failed to start envtest (run `make control-plane`): %w", err)
	}
	fail := func(err error) error {
		_ = b.env.Stop()
		return err
	}
	// One admin user (system:masters) for everything: the manager, the
	// agent, the plugin and the in-process clients, as in `make dev`.
	user, err := b.env.AddUser(envtest.User{Name: "accessbench-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fail(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fail(err)
	}
	b.kubeconfig = filepath.Join(b.work, "kubeconfig")
	if err := os.WriteFile(b.kubeconfig, kc, 0o600); err != nil {
		return fail(err)
	}
	b.adminCfg = rest.CopyConfig(user.Config())
	b.adminCfg.UserAgent = "accessbench"
	if b.kube, err = kubernetes.NewForConfig(b.adminCfg); err != nil {
		return fail(err)
	}
	if b.sbx, err = versioned.NewForConfig(b.adminCfg); err != nil {
		return fail(err)
	}
	if b.ctrl, err = client.New(b.adminCfg, client.Options{Scheme: scheme}); err != nil {
		return fail(err)
	}
	if v, err := b.kube.Discovery().ServerVersion(); err == nil {
		b.k8sVersion = v.GitVersion
	}
	logf("control plane up in %s (kube-apiserver %s, aggregation layer configured)", time.Since(start).Round(time.Millisecond), b.k8sVersion)
	return nil
}

func (b *bench) waitNodeReady(ctx context.Context, agent *process) error {
	return poll(ctx, 90*time.Second, func() (bool, error) {
		if !agent.alive() {
			return false, fmt.Errorf("the node agent exited (%v); see %s", agent.waitErr, agent.logPath)
		}
		sn, err := b.sbx.SandboxV1alpha1().SandboxNodes().Get(ctx, nodeName, metav1.GetOptions{})
		return err == nil && meta.IsStatusConditionTrue(sn.Status.Conditions, sandboxv1alpha1.NodeConditionReady) &&
			sn.Status.Access != nil && sn.Status.Access.Endpoint != "", nil
	})
}

// setupDirect reads the node's access endpoint and certificate from
// SandboxNode status.access and the access client CA the manager created,
// and issues the manager's client certificate from it: what the manager
// itself presents to the agent.
func (b *bench) setupDirect(ctx context.Context) error {
	sn, err := b.sbx.SandboxV1alpha1().SandboxNodes().Get(ctx, b.sandbox.Status.NodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if sn.Status.Access == nil {
		return errors.New("the SandboxNode publishes no access endpoint")
	}
	b.endpoint = sn.Status.Access.Endpoint
	// Wait for the manager's Secret rather than create one first.
	if err := poll(ctx, time.Minute, func() (bool, error) {
		_, err := b.kube.CoreV1().Secrets(leaseNamespace).Get(ctx, access.ClientCAName, metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("the manager did not create the Secret %s/%s: %w", leaseNamespace, access.ClientCAName, err)
	}
	ca, err := access.EnsureClientCA(ctx, b.ctrl, leaseNamespace)
	if err != nil {
		return err
	}
	pair, err := ca.ManagerClientCert()
	if err != nil {
		return err
	}
	b.agentCfg = &rest.Config{Host: "https://" + b.endpoint, TLSClientConfig: rest.TLSClientConfig{
		CAData: []byte(sn.Status.Access.Certificate), CertData: pair.CertPEM, KeyData: pair.KeyPEM}}
	tlsCfg, err := rest.TLSConfigFor(b.agentCfg)
	if err != nil {
		return err
	}
	b.agentHC = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	logf("node access endpoint %s; manager client certificate issued from the manager's CA", b.endpoint)
	return nil
}

// execDirect runs `true` straight on the node agent's access endpoint with
// client-go's SPDY executor, as the manager's proxy does.
func (b *bench) execDirect(ctx context.Context) error {
	u := &url.URL{Scheme: "https", Host: b.endpoint, Path: access.AgentPath(string(b.sandbox.UID), "exec"),
		RawQuery: url.Values{"command": {"true"}, "output": {"1"}, "error": {"1"}}.Encode()}
	ex, err := remotecommand.NewSPDYExecutor(b.agentCfg, http.MethodPost, u)
	if err != nil {
		return err
	}
	var out, errb bytes.Buffer
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := ex.StreamWithContext(rctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errb}); err != nil {
		return fmt.Errorf("%w (stderr %q)", err, errb.String())
	}
	return nil
}

// execWS runs `true` through the kube-apiserver with client-go's websocket
// executor (v5.channel.k8s.io), in this process.
func (b *bench) execWS(ctx context.Context) error {
	q := url.Values{"command": {"true"}, "stdout": {"true"}, "stderr": {"true"}}
	u := strings.TrimSuffix(b.adminCfg.Host, "/") + fmt.Sprintf("/apis/%s/%s/namespaces/%s/sandboxes/%s/exec",
		access.Group, access.Version, benchNamespace, sandboxName) + "?" + q.Encode()
	ex, err := remotecommand.NewWebSocketExecutor(b.adminCfg, http.MethodGet, u)
	if err != nil {
		return err
	}
	var out, errb bytes.Buffer
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := ex.StreamWithContext(rctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errb}); err != nil {
		return fmt.Errorf("%w (stderr %q)", err, errb.String())
	}
	return nil
}

// pluginCmd runs bin/kubectl-sandbox with the admin kubeconfig.
func (b *bench) pluginCmd(ctx context.Context, args ...string) error {
	all := append([]string{"--kubeconfig=" + b.kubeconfig, "-n", benchNamespace}, args...)
	cmd := exec.CommandContext(ctx, b.plugin, all...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kubectl-sandbox %s: %w: %s", strings.Join(args, " "), err, out.String())
	}
	return nil
}

func (b *bench) execBinary(ctx context.Context) error {
	return b.pluginCmd(ctx, "exec", sandboxName, "--", "true")
}

// procStartOnce runs the plugin binary's `--help`: a process start and
// exit with no API call, to size what the binary's exec timings include.
func (b *bench) procStartOnce(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, b.plugin, "--help")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	return cmd.Run()
}

func timeIt(f func() error) (float64, error) {
	start := time.Now()
	err := f()
	return msOf(time.Since(start)), err
}

func (b *bench) measureExec(ctx context.Context) error {
	type path struct {
		name string
		f    func(context.Context) error
		out  *[]float64
	}
	paths := []path{
		{"direct", b.execDirect, &b.direct},
		{"websocket", b.execWS, &b.ws},
		{"binary", b.execBinary, &b.binary},
		{"proc-start", b.procStartOnce, &b.procStart},
	}
	logf("warm-up: 2 untimed runs of each exec path")
	for range 2 {
		for _, p := range paths {
			if err := p.f(ctx); err != nil {
				return fmt.Errorf("warm-up %s: %w", p.name, err)
			}
		}
	}
	logf("timing %d exec -- true of each path, interleaved (the first path rotates)", b.cfg.runs)
	for i := range b.cfg.runs {
		for j := range paths {
			p := paths[(i+j)%len(paths)]
			ms, err := timeIt(func() error { return p.f(ctx) })
			if err != nil {
				return fmt.Errorf("run %d %s: %w", i+1, p.name, err)
			}
			*p.out = append(*p.out, ms)
		}
	}
	return nil
}

// fileOp is one request to the agent's files endpoint.
func (b *bench) fileOp(ctx context.Context, method string, q url.Values, body io.Reader, sink io.Writer) error {
	u := &url.URL{Scheme: "https", Host: b.endpoint, Path: access.AgentPath(string(b.sandbox.UID), "files"), RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return err
	}
	resp, err := b.agentHC.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s %s: %s: %s", method, q.Get("op"), resp.Status, msg)
	}
	if sink == nil {
		sink = io.Discard
	}
	_, err = io.Copy(sink, resp.Body)
	return err
}

func (b *bench) measureFiles(ctx context.Context) error {
	size := b.cfg.fileMiB << 20
	payload := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{'a', 'c', 'c', 'e', 's', 's'}).Read(payload)
	want := sha256.Sum256(payload)
	local := filepath.Join(b.work, "payload.bin")
	if err := os.WriteFile(local, payload, 0o600); err != nil {
		return err
	}
	mib := float64(size) / (1 << 20)
	remotePlugin, remoteDirect := "/tmp/accessbench-plugin.bin", "/tmp/accessbench-direct.bin"

	pluginUp := func() error {
		return b.pluginCmd(ctx, "cp", local, sandboxName+":"+remotePlugin)
	}
	pluginDown := func() error {
		dst := filepath.Join(b.work, "down-plugin.bin")
		_ = os.Remove(dst)
		if err := b.pluginCmd(ctx, "cp", sandboxName+":"+remotePlugin, dst); err != nil {
			return err
		}
		return checkFile(dst, want)
	}
	directUp := func() error {
		return b.fileOp(ctx, http.MethodPost, url.Values{"op": {"write"}, "path": {remoteDirect}}, bytes.NewReader(payload), nil)
	}
	directDown := func() error {
		h := sha256.New()
		if err := b.fileOp(ctx, http.MethodGet, url.Values{"op": {"read"}, "path": {remoteDirect}}, nil, h); err != nil {
			return err
		}
		if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
			return fmt.Errorf("direct read: sha256 %x, want %x", got, want)
		}
		return nil
	}
	// Where the copies land: /tmp's filesystem in the guest.
	var mounts bytes.Buffer
	if err := b.fileOp(ctx, http.MethodGet, url.Values{"op": {"read"}, "path": {"/proc/mounts"}}, nil, &mounts); err == nil {
		for l := range strings.SplitSeq(mounts.String(), "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[1] == "/tmp" {
				b.tmpFS = f[2]
			}
		}
	}
	if b.tmpFS == "" {
		b.tmpFS = "not a mount point (the writable layer)"
	}
	logf("/tmp in the guest: %s", b.tmpFS)
	logf("copying %d MiB: %d runs of each (plugin cp up/down, direct write/read), sha256 checked", b.cfg.fileMiB, b.cfg.fileRuns)
	for i := range b.cfg.fileRuns {
		steps := []struct {
			name     string
			f        func() error
			mibs, ss *[]float64
		}{
			{"plugin upload", pluginUp, &b.upPlugin, &b.upPluginS},
			{"direct upload", directUp, &b.upDirect, &b.upDirectS},
		}
		downs := []struct {
			name     string
			f        func() error
			mibs, ss *[]float64
		}{
			{"plugin download", pluginDown, &b.downPlugin, &b.downPluginS},
			{"direct download", directDown, &b.downDirect, &b.downDirectS},
		}
		if i%2 == 1 {
			steps[0], steps[1] = steps[1], steps[0]
			downs[0], downs[1] = downs[1], downs[0]
		}
		for _, s := range append(steps, downs...) {
			ms, err := timeIt(s.f)
			if err != nil {
				return fmt.Errorf("copy run %d, %s: %w", i+1, s.name, err)
			}
			*s.mibs = append(*s.mibs, mib/(ms/1000))
			*s.ss = append(*s.ss, ms/1000)
			logf("  run %d %s: %.2f s (%.1f MiB/s)", i+1, s.name, ms/1000, mib/(ms/1000))
		}
		// The plugin's download checked the plugin's upload end to end:
		// also check the plugin's upload through the direct read.
		if i == 0 {
			h := sha256.New()
			if err := b.fileOp(ctx, http.MethodGet, url.Values{"op": {"read"}, "path": {remotePlugin}}, nil, h); err != nil {
				return err
			}
			if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
				return fmt.Errorf("the plugin's upload: sha256 %x, want %x", got, want)
			}
		}
	}
	return nil
}

func checkFile(path string, want [32]byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
		return fmt.Errorf("%s: sha256 %x, want %x", path, got, want)
	}
	return nil
}

func poll(ctx context.Context, timeout time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := f()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func machineString() string {
	model := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "?"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	load := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = strings.Join(f[:3], " ")
		}
	}
	return fmt.Sprintf("%d CPUs (%s), Linux %s, %s, load average at the end %s", runtime.NumCPU(), model, kernel, runtime.Version(), load)
}
