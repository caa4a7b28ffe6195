//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/standin"
	sandboxv1alpha1ac "github.com/microvm-dev/sandbox-operator/pkg/client/applyconfiguration/api/v1alpha1"
)

// kubectl runs the kubectl that hack/build-control-plane.sh built against
// the test cluster (as the admin user) and returns its stdout. The error
// carries stderr.
func kubectl(args ...string) (string, error) {
	full := append([]string{"--kubeconfig", kubeconfigPath}, args...)
	cmd := exec.Command(kubectlPath, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	fmt.Fprintf(GinkgoWriter, "$ kubectl %s\n", strings.Join(args, " "))
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// mustKubectl is kubectl that fails the spec on error.
func mustKubectl(args ...string) string {
	GinkgoHelper()
	out, err := kubectl(args...)
	Expect(err).NotTo(HaveOccurred())
	return out
}

// writeManifest writes YAML to a file in the suite's work directory, for
// `kubectl apply -f`.
func writeManifest(name, yaml string) string {
	GinkgoHelper()
	path := workDir + "/" + name
	Expect(os.WriteFile(path, []byte(yaml), 0o600)).To(Succeed())
	return path
}

// freeLoopbackAddr asks the kernel for an unused port on 127.0.0.1.
func freeLoopbackAddr() string {
	GinkgoHelper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// process is one of the operator's binaries (bin/manager, bin/node-agent)
// running as a separate OS process, the way it runs in a cluster (one
// process, its own caches), with stdout and stderr appended to one log
// file across restarts.
type process struct {
	// name says which process it is in messages ("the manager", "the node
	// agent of vm-a").
	name    string
	bin     string
	args    []string
	logPath string
	// healthAddr is the --health-probe-bind-address (readyz).
	healthAddr string
	// metricsAddr is the --metrics-bind-address (Prometheus, plain HTTP).
	metricsAddr string

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// start starts a new process with the same flags as before.
func (m *process) start() {
	GinkgoHelper()
	logFile, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	Expect(err).NotTo(HaveOccurred())
	fmt.Fprintf(logFile, "==== e2e: starting %s %s at %s\n", m.bin, strings.Join(m.args, " "), time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(m.bin, m.args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Don't outlive the test binary if it dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		Fail(fmt.Sprintf("failed to start %s: %v", m.name, err))
	}
	fmt.Fprintf(GinkgoWriter, "started %s, pid %d, log %s\n", m.name, cmd.Process.Pid, m.logPath)
	m.cmd, m.exited, m.waitErr = cmd, make(chan struct{}), nil
	exited := m.exited
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(logFile, "==== e2e: pid %d exited: %v at %s\n", cmd.Process.Pid, err, time.Now().Format(time.RFC3339Nano))
		_ = logFile.Close()
		m.waitErr = err
		close(exited)
	}()
}

// running reports whether the current process is still alive.
func (m *process) running() bool {
	if m == nil || m.cmd == nil {
		return false
	}
	select {
	case <-m.exited:
		return false
	default:
		return true
	}
}

// waitReady waits until the process answers /readyz. (Probes are served
// before leader election completes: readiness means the process is up,
// not that it leads; see leaderHolder.)
func (m *process) waitReady(timeout time.Duration) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		if !m.running() {
			StopTrying(fmt.Sprintf("%s exited during startup (%v); log:\n%s", m.name, m.waitErr, m.logTail(40))).Now()
		}
		resp, err := http.Get("http://" + m.healthAddr + "/readyz")
		g.Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	}).WithTimeout(timeout).WithPolling(200 * time.Millisecond).Should(Succeed())
}

// scrapeMetrics returns the manager's Prometheus metrics page.
func (m *process) scrapeMetrics(g Gomega) string {
	resp, err := http.Get("http://" + m.metricsAddr + "/metrics")
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = resp.Body.Close() }()
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	b, err := io.ReadAll(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	return string(b)
}

// forbiddenLines returns the lines of the process's log where the API
// server refused it something, except those matching an entry of known.
func (m *process) forbiddenLines(known ...[]string) []string {
	GinkgoHelper()
	b, err := os.ReadFile(m.logPath)
	Expect(err).NotTo(HaveOccurred())
	var out []string
lines:
	for line := range strings.SplitSeq(string(b), "\n") {
		if !strings.Contains(line, "forbidden") {
			continue
		}
	entries:
		for _, k := range known {
			for _, sub := range k {
				if !strings.Contains(line, sub) {
					continue entries
				}
			}
			continue lines
		}
		out = append(out, line)
	}
	return out
}

// kill sends SIGKILL and waits for the process to be gone: a crash, with
// no chance to release the leader Lease.
func (m *process) kill() {
	GinkgoHelper()
	Expect(m.running()).To(BeTrue(), "%s is not running", m.name)
	Expect(m.cmd.Process.Signal(syscall.SIGKILL)).To(Succeed())
	Eventually(m.exited).WithTimeout(10 * time.Second).Should(BeClosed())
}

// stop sends SIGTERM and waits up to grace; then it kills the process and
// reports that.
func (m *process) stop(grace time.Duration) error {
	if !m.running() {
		return nil
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
		return m.waitErr
	case <-time.After(grace):
		_ = m.cmd.Process.Kill()
		<-m.exited
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", m.name, grace)
	}
}

// logTail returns the last n lines of the process's log.
func (m *process) logTail(n int) string {
	b, err := os.ReadFile(m.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", m.logPath, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// leaderHolder returns the holder of the manager's leader election Lease
// ("" when there is none or nobody holds it).
func leaderHolder(ctx context.Context, g Gomega) string {
	l := &coordinationv1.Lease{}
	err := k8sClient.Get(ctx, client.ObjectKey{Namespace: leaseNamespace, Name: leaderElectionID}, l)
	if apierrors.IsNotFound(err) {
		return ""
	}
	g.Expect(err).NotTo(HaveOccurred())
	return ptr.Deref(l.Spec.HolderIdentity, "")
}

// nodeAgents stands in for the node agents' heartbeats (internal/standin):
// it renews each node's Lease every leaseRenewEvery until told to stop
// renewing that node (the node is then lost once the Lease expires and the
// manager's grace passes).
type nodeAgents struct {
	mu       sync.Mutex
	renewing map[string]bool
	cancel   context.CancelFunc
	done     chan struct{}
}

func startNodeAgents(nodes ...string) *nodeAgents {
	ctx, cancel := context.WithCancel(context.Background())
	a := &nodeAgents{renewing: map[string]bool{}, cancel: cancel, done: make(chan struct{})}
	for _, n := range nodes {
		a.renewing[n] = true
	}
	go func() {
		defer GinkgoRecover()
		defer close(a.done)
		standin.KeepRenewing(ctx, k8sClient, leaseNamespace, a.live, leaseRenewEvery, func(err error) {
			fmt.Fprintf(GinkgoWriter, "stand-in agent: %v\n", err)
		})
	}()
	return a
}

// live lists the nodes whose Leases are still renewed.
func (a *nodeAgents) live() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for n, ok := range a.renewing {
		if ok {
			out = append(out, n)
		}
	}
	return out
}

// stopRenewing simulates the loss of a node: its agent stops heartbeating.
func (a *nodeAgents) stopRenewing(node string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.renewing[node] = false
}

// stop ends all renewals and waits for the goroutine.
func (a *nodeAgents) stop() {
	if a == nil {
		return
	}
	a.cancel()
	<-a.done
}

// registerNodes creates the SandboxNodes with `kubectl apply -f` (the
// administrator's part: name and labels), then reports their status and
// creates their Leases through the API, as a node agent does
// (standin.Register): status is a subresource, which applying the main
// resource does not write.
func registerNodes(ctx context.Context, nodes ...string) {
	GinkgoHelper()
	var yaml strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&yaml, `---
apiVersion: sandbox.microvm.dev/v1alpha1
kind: SandboxNode
metadata:
  name: %[1]s
  labels:
    kubernetes.io/hostname: %[1]s
`, n)
	}
	mustKubectl("apply", "-f", writeManifest("sandboxnodes.yaml", yaml.String()))

	for _, n := range nodes {
		Expect(standin.Register(ctx, k8sClient, leaseNamespace, standin.Node{
			Name:          n,
			Allocatable:   sandboxv1alpha1.NodeResources{CPUs: nodeCPUs, MemoryMiB: nodeMemoryMiB, Sandboxes: nodeSlots},
			Agent:         "test/e2e",
			LeaseDuration: nodeLeaseDuration,
		})).To(Succeed())
	}
	// kubectl apply set the labels; Register kept them.
	for _, n := range nodes {
		sn := &sandboxv1alpha1.SandboxNode{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: n}, sn)).To(Succeed())
		Expect(sn.Labels).To(HaveKeyWithValue("kubernetes.io/hostname", n))
		Expect(meta.IsStatusConditionTrue(sn.Status.Conditions, sandboxv1alpha1.NodeConditionReady)).To(BeTrue())
	}
}

// getSandbox reads a Sandbox in namespace default straight from the API
// server.
func getSandbox(ctx context.Context, g Gomega, name string) *sandboxv1alpha1.Sandbox {
	s := &sandboxv1alpha1.Sandbox{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: sampleNamespace, Name: name}, s)).To(Succeed())
	return s
}

func sandboxGone(ctx context.Context, name string) bool {
	err := k8sClient.Get(ctx, client.ObjectKey{Namespace: sampleNamespace, Name: name}, &sandboxv1alpha1.Sandbox{})
	return apierrors.IsNotFound(err)
}

func condition(s *sandboxv1alpha1.Sandbox, t string) metav1.Condition {
	if c := meta.FindStatusCondition(s.Status.Conditions, t); c != nil {
		return *c
	}
	return metav1.Condition{}
}

// agentReportsRunning applies the node agent's observation "the current
// run's VM is up" to a sandbox: server-side apply of status.vm under the
// agent's field manager, tagged with the run and node the manager chose.
func agentReportsRunning(ctx context.Context, name string) {
	GinkgoHelper()
	cur := getSandbox(ctx, Default, name)
	Expect(cur.Status.NodeName).NotTo(BeEmpty(), "sandbox %s is not placed", name)
	vm := sandboxv1alpha1ac.VMStatus().
		WithRun(cur.Status.Run).
		WithNodeName(cur.Status.NodeName).
		WithState(sandboxv1alpha1.VMRunning).
		WithAccelerator(sandboxv1alpha1.AcceleratorTCG).
		WithPID(4242).
		WithBootedAt(metav1.Now())
	ac := sandboxv1alpha1ac.Sandbox(name, sampleNamespace).WithStatus(sandboxv1alpha1ac.SandboxStatus().WithVM(vm))
	Expect(k8sClient.Status().Apply(ctx, ac, client.FieldOwner(sandboxv1alpha1.NodeAgentFieldOwner), client.ForceOwnership)).To(Succeed())
}

// agentConfirmsDeletion removes the node agent's finalizer, as the agent
// does once the VM, its disk and its journal are gone.
func agentConfirmsDeletion(ctx context.Context, name string) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		cur := getSandbox(ctx, g, name)
		g.Expect(controllerutil.RemoveFinalizer(cur, sandboxv1alpha1.NodeAgentFinalizer)).To(BeTrue(), "no node-agent finalizer on %s", name)
		g.Expect(k8sClient.Update(ctx, cur)).To(Succeed())
	}).Should(Succeed())
}

// dumpDiagnostics prints what a failed spec needs to be debugged: the logs
// of procs (the manager, node agents), the Sandboxes, SandboxNodes, Leases
// and events.
func dumpDiagnostics(procs ...*process) {
	w := GinkgoWriter
	fmt.Fprintf(w, "\n======== diagnostics for %q ========\n", CurrentSpecReport().FullText())
	for _, p := range procs {
		if p != nil {
			fmt.Fprintf(w, "---- log of %s (last 150 lines of %s) ----\n%s\n", p.name, p.logPath, p.logTail(150))
		}
	}
	for _, args := range [][]string{
		{"get", "sbx", "-A", "-o", "wide"},
		{"get", "sbx", "-A", "-o", "yaml"},
		{"describe", "sbx", "-A"},
		{"get", "sandboxnodes", "-o", "yaml"},
		{"get", "leases", "-n", leaseNamespace, "-o", "yaml"},
		{"get", "events", "-A"},
	} {
		out, err := kubectl(args...)
		if err != nil {
			out += "\n" + err.Error()
		}
		fmt.Fprintf(w, "---- kubectl %s ----\n%s\n", strings.Join(args, " "), out)
	}
	fmt.Fprintf(w, "======== end of diagnostics ========\n")
}

// errIfMissing returns an error naming how to build path when it is absent.
func errIfMissing(path, how string) error {
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s not found: %s", path, how)
		}
		return err
	}
	return nil
}
