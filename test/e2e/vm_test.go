//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/access"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

const (
	// poolLabel marks the Nodes of the real node agents; the agents copy
	// their Node's labels onto their SandboxNodes, and every VM Sandbox
	// selects it, so that none lands on a stand-in node (no VMs boot there).
	poolLabel = "e2e.sandbox.microvm.dev/pool"
	poolValue = "microvm"
	// hostnameLabel pins a Sandbox to one node (a Node label the agent
	// copies).
	hostnameLabel = "kubernetes.io/hostname"
	// nodeAgentServiceAccount is the node agents' ServiceAccount (the
	// chart's nodeAgent.serviceAccount.name, as config/rbac/node-agent
	// names it).
	nodeAgentServiceAccount = "sandbox-node-agent"
)

// NodeAgentVMSpecInput is the input of NodeAgentVMSpec.
type NodeAgentVMSpecInput struct {
	// Namespace holds the spec's Sandboxes and Secret; the spec creates it.
	Namespace string
	// Nodes names the node agents' nodes: exactly two (the spec places
	// Sandboxes on both, and kills one agent while the other runs VMs).
	// The spec creates their Node objects.
	Nodes []string
	// BootTimeout bounds apply → Running of one VM: a TCG boot takes 3-5 s
	// on 2 cores; the pull, the disks and three processes' reconciles add
	// to it.
	BootTimeout time.Duration
	// CrashDeadline is the longest a QEMU killed with SIGKILL may take to
	// show as phase Crashed in a client's watch.
	CrashDeadline time.Duration
	// RestartBackoff is the manager's --restart-backoff. Keep it over a
	// second: a run's stoppedAt is its VM's exitedAt, which the agent
	// reports in whole seconds, so with a shorter backoff the restart of a
	// crashed run is due in the very pass that records the crash, and no
	// client ever sees phase Crashed.
	RestartBackoff time.Duration
	// LeaveDeadline bounds how long the run directory of a Sandbox that
	// left a node (moved to another, or gone while the node's agent was
	// down) may stay on it: the agent removes it when its cache loses the
	// Sandbox, or at start.
	LeaveDeadline time.Duration
	// StopGraceSeconds is the probe's stopPolicy.gracePeriodSeconds: the
	// agent kills a VM whose guest has not shut down after it (+5 s), so a
	// stop well within it went through the guest.
	StopGraceSeconds int64
}

var _ = NodeAgentVMSpec(NodeAgentVMSpecInput{
	Namespace:        "e2e-vms",
	Nodes:            []string{"vm-a", "vm-b"},
	BootTimeout:      90 * time.Second,
	CrashDeadline:    2 * time.Second, // the "within 2 s"
	RestartBackoff:   2 * time.Second,
	LeaveDeadline:    10 * time.Second,
	StopGraceSeconds: 30,
})

// NodeAgentVMSpec runs the node agents for real: one control plane, one
// manager and two node agents running as processes, with the VM runtime
// (QEMU under TCG here). The specs run in order; each builds on what the
// previous one left:
//
//	agents registered → probe (its entrypoint reports its configuration)
//	and crasher Running on different nodes → exec in probe through the
//	access API (accessSpecs: the kube-apiserver's aggregation, the manager,
//	probe's agent) → bin/kubectl-sandbox as alice in probe (pluginSpecs:
//	exec -it on a test pty, cp, ls/stat/mkdir/mv/rm, logs -f of probe's
//	"tick N" lines) → crasher's QEMU killed: Crashed,
//	then restarted → probe's agent killed and restarted: the VM is
//	re-adopted, and run directories left by Sandboxes that are not on the
//	node any more are swept → a new logs -f follows probe again → probe stopped through its guest → probe moved
//	to the other node for run 2: nothing of run 1 stays on the old node →
//	fails exits 3 → deletions leave nothing behind → no request was
//	refused under the chart's RBAC.
//
// The boots are few (probe twice, crasher twice, fails): each costs
// seconds of emulation on a 2-core machine. The leftovers the restarted
// agent sweeps are made by the test (a stand-in VM is a sleep), not booted.
//
// ContinueOnFailure: a spec that fails (say, one guest feature missing)
// does not hide the outcome of the later ones; those that depend on what
// failed fail too, with their own message.
func NodeAgentVMSpec(input NodeAgentVMSpecInput) bool {
	return Describe("sandbox-operator with node agents running microVMs", Ordered, ContinueOnFailure, func() {
		nodeAgentVMSpecs(input)
	})
}

// nodeAgentVMSpecs declares the specs of NodeAgentVMSpec (a function of
// its own to keep the nesting shallow).
func nodeAgentVMSpecs(input NodeAgentVMSpecInput) {
	vmNamespace, nodeNames := input.Namespace, input.Nodes
	probeGraceSeconds := input.StopGraceSeconds
	const (
		probe       = "probe"   // reports its configuration, then prints "tick N" every second; outlives an agent restart; stopped; moved
		crasher     = "crasher" // its QEMU is killed; restartPolicy OnFailure; deleted while running
		fails       = "fails"   // exits 3
		tokenSecret = "e2e-token"
		tokenValue  = "s3cr3t-e2e"
	)
	ctx := context.Background()

	var (
		egressCA *access.CA
		vmMgr    *process
		agentsOn map[string]*agentProcess
		reg      *httptest.Server
		img      testImage
		watch    *sandboxWatch
		failed   bool

		probeNode, otherNode string
		// accessPort is the manager's access API port on 127.0.0.1 (and
		// its ExternalName Service's).
		accessPort int
		// timings reported at the end (and as report entries).
		timingsMu sync.Mutex
		timings   []string
	)
	timing := func(what string, d time.Duration) {
		timingsMu.Lock()
		defer timingsMu.Unlock()
		line := fmt.Sprintf("%-55s %v", what, d.Round(time.Millisecond))
		timings = append(timings, line)
		AddReportEntry(what, d.Round(time.Millisecond).String())
		fmt.Fprintf(GinkgoWriter, "timing: %s\n", line)
	}
	sandboxYAML := func(name, body string) string {
		return fmt.Sprintf("apiVersion: sandbox.microvm.dev/v1alpha1\nkind: Sandbox\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  image: %s\n  registry:\n    insecure: true\n%s",
			name, vmNamespace, img.Ref, body)
	}
	getVMSandbox := func(g Gomega, name string) *sandboxv1alpha1.Sandbox {
		s := &sandboxv1alpha1.Sandbox{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: vmNamespace, Name: name}, s)).To(Succeed())
		return s
	}
	allAgents := func() []*process {
		procs := []*process{vmMgr}
		for _, n := range nodeNames {
			if a := agentsOn[n]; a != nil {
				procs = append(procs, a.process)
			}
		}
		return procs
	}

	BeforeAll(func() {
		Expect(nodeNames).To(HaveLen(2), "NodeAgentVMSpec needs two nodes")
		root, err := filepath.Abs(filepath.Join("..", "..")) // the test runs in test/e2e
		Expect(err).NotTo(HaveOccurred())
		agentBin := filepath.Join(root, "bin", "node-agent")
		initBin := filepath.Join(root, "bin", "sandbox-init")
		kernel := filepath.Join(root, "bin", "guest", "vmlinux")
		modules := filepath.Join(root, "bin", "guest", "modules")

		By("checking what the VM runtime needs: bin/node-agent, bin/sandbox-init, the guest kernel, QEMU, mkfs.ext4")
		for path, how := range map[string]string{
			agentBin: "run `make build`", initBin: "run `make build`",
			kernel: "run `make guest-kernel`", modules: "run `make guest-kernel`",
		} {
			if err := errIfMissing(path, how); err != nil {
				Fail(err.Error())
			}
		}
		for _, tool := range []string{vmm.DefaultQEMUBinary, "mkfs.ext4"} {
			if _, err := exec.LookPath(tool); err != nil {
				if _, serr := os.Stat("/usr/sbin/" + tool); serr != nil {
					Fail(fmt.Sprintf("%s not found (run hack/setup.sh): %v", tool, err))
				}
			}
		}

		By("seeing the node agents' identity from the Helm chart (applied by the suite): ServiceAccount " + nodeAgentServiceAccount)
		mustKubectl("get", "-n", leaseNamespace, "serviceaccount/"+nodeAgentServiceAccount, "validatingadmissionpolicy/sandbox-node-agent-restriction")

		By("building a busybox image from files on disk and pushing it to an in-memory registry on 127.0.0.1")
		reg = serveRegistry()
		img, err = pushTestImage(registryHost(reg))
		Expect(err).NotTo(HaveOccurred())
		fmt.Fprintf(GinkgoWriter, "test image: %s\n", img.Ref)

		By("creating Nodes vm-a and vm-b labelled " + poolLabel + "=" + poolValue + ", and namespace " + vmNamespace)
		var nodesYAML strings.Builder
		for _, n := range nodeNames {
			fmt.Fprintf(&nodesYAML, "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: %[1]s\n  labels:\n    %[2]s: %[1]s\n    %[3]s: %[4]s\n",
				n, hostnameLabel, poolLabel, poolValue)
		}
		fmt.Fprintf(&nodesYAML, "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n", vmNamespace)
		mustKubectl("apply", "-f", writeManifest("vm-nodes.yaml", nodesYAML.String()))

		By("creating each agent's Pod object (no kubelet: what its token is bound to) and minting its token (TokenRequest): the token names the node, which the chart's admission policy checks")
		agentKubeconfigs := map[string]string{}
		for _, n := range nodeNames {
			agentKubeconfigs[n] = tokenKubeconfig("node-agent-"+n, nodeAgentServiceAccount, agentPod(n))
		}

		accessPort = freeLoopbackPort()
		By("creating Service " + leaseNamespace + "/" + accessServiceName + " (ExternalName localhost, port " + fmt.Sprint(accessPort) +
			"): the kube-apiserver's aggregator reaches the manager's access API through it")
		Expect(k8sClient.Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: accessServiceName, Namespace: leaseNamespace},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost",
				Ports: []corev1.ServicePort{{Port: int32(accessPort), TargetPort: intstr.FromInt32(int32(accessPort))}}},
		})).To(Succeed())

		By("starting bin/manager as a process, as its ServiceAccount, with leader election and the access API")
		prevLeader := leaderHolder(ctx, Default)
		vmMgr = &process{
			name:        "the manager",
			bin:         managerBin,
			logPath:     filepath.Join(workDir, "manager-vms.log"),
			healthAddr:  freeLoopbackAddr(),
			metricsAddr: freeLoopbackAddr(),
		}
		vmMgr.args = []string{
			"--kubeconfig=" + managerKubeconfigPath,
			"--leader-elect=true",
			"--lease-namespace=" + leaseNamespace,
			"--leader-election-namespace=" + leaseNamespace,
			"--metrics-bind-address=" + vmMgr.metricsAddr,
			"--health-probe-bind-address=" + vmMgr.healthAddr,
			"--node-lost-grace=" + nodeLostGrace.String(),
			"--restart-backoff=" + input.RestartBackoff.String(),
			// --access-service defaults to sandbox-access and
			// --access-register-apiservice to true: the manager registers
			// the APIService with its serving CA.
			fmt.Sprintf("--access-bind-address=127.0.0.1:%d", accessPort),
		}
		vmMgr.start()
		vmMgr.waitReady(30 * time.Second)
		Eventually(func(g Gomega) {
			h := leaderHolder(ctx, g)
			g.Expect(h).NotTo(BeEmpty())
			g.Expect(h).NotTo(Equal(prevLeader))
		}).WithTimeout(60*time.Second).Should(Succeed(), "the manager did not take the leader election Lease")

		By("making the test's CA for HTTPS servers that sandboxes send secrets to (the agents' --egress-ca-bundle)")
		ca, caErr := access.NewCA("e2e egress upstream CA", time.Hour)
		Expect(caErr).NotTo(HaveOccurred())
		egressCA = ca
		egressBundle := filepath.Join(workDir, "egress-ca.crt")
		Expect(os.WriteFile(egressBundle, egressCA.CertPEM, 0o600)).To(Succeed())

		By("starting two node agents (bin/node-agent, QEMU with TCG) as processes, as their ServiceAccount")
		agentsOn = map[string]*agentProcess{}
		for _, n := range nodeNames {
			// Short: unix socket paths under it must stay within 107 bytes.
			stateDir, err := os.MkdirTemp("", "e2e-"+n+"-")
			Expect(err).NotTo(HaveOccurred())
			a := &agentProcess{node: n, stateDir: stateDir, process: &process{
				name:       "the node agent of " + n,
				bin:        agentBin,
				logPath:    filepath.Join(workDir, "node-agent-"+n+".log"),
				healthAddr: freeLoopbackAddr(),
				// Prometheus: the network specs read denials there.
				metricsAddr: freeLoopbackAddr(),
			}}
			a.args = []string{
				"--node-name=" + n,
				"--kubeconfig=" + agentKubeconfigs[n],
				"--lease-namespace=" + leaseNamespace,
				"--allow-emulation",
				"--accelerator=tcg",
				// Both agents share this machine's 2 CPUs: give each all of them.
				"--reserve-cpus=0",
				"--state-dir=" + stateDir,
				"--kernel=" + kernel,
				"--guest-modules=" + modules,
				"--sandbox-init=" + initBin,
				"--metrics-bind-address=" + a.metricsAddr,
				"--health-probe-bind-address=" + a.healthAddr,
				// Published in SandboxNode status.access (port 0: the one bound).
				"--access-bind-address=127.0.0.1:0",
				"--egress-ca-bundle=" + egressBundle,
			}
			agentsOn[n] = a
			a.start()
		}
		for _, n := range nodeNames {
			agentsOn[n].waitReady(60 * time.Second)
		}

		By("watching Sandboxes in " + vmNamespace + " with the generated informers (pkg/client/informers)")
		watch = startSandboxWatch(vmNamespace)
	})

	AfterEach(func() {
		if !CurrentSpecReport().Failed() {
			return
		}
		failed, anySpecFailed = true, true
		dumpDiagnostics(allAgents()...)
		w := GinkgoWriter
		for _, args := range [][]string{
			{"describe", "sbx", "-n", vmNamespace},
			{"get", "nodes", "--show-labels"},
		} {
			out, err := kubectl(args...)
			if err != nil {
				out += "\n" + err.Error()
			}
			fmt.Fprintf(w, "---- kubectl %s ----\n%s\n", strings.Join(args, " "), out)
		}
		if watch != nil {
			for _, n := range []string{probe, crasher, fails, "netallow", "netsecret"} {
				fmt.Fprintf(w, "---- what the watch saw of %s ----\n%s", n, watch.describe(n))
			}
		}
		for _, n := range nodeNames {
			a := agentsOn[n]
			if a == nil {
				continue
			}
			for _, uid := range vmDirs(a.stateDir) {
				dir := a.runDir(types.UID(uid))
				fmt.Fprintf(w, "---- %s (%s) ----\n%s\n---- console of %s ----\n%s\n", dir, dirListing(dir), uid, uid, a.console(types.UID(uid)))
			}
		}
		fmt.Fprintf(w, "======== end of VM diagnostics ========\n")
	})

	AfterAll(func() {
		watch.stop()
		// Nothing is left after a passing run; after a failure, delete what
		// is (the agents clean their VMs up), so that later containers
		// start clean.
		if failed && testEnv != nil {
			_, _ = kubectl("delete", "sbx", "--all", "-n", vmNamespace, "--wait=false")
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				list := &sandboxv1alpha1.SandboxList{}
				if err := k8sClient.List(ctx, list, client.InNamespace(vmNamespace)); err != nil || len(list.Items) == 0 {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			list := &sandboxv1alpha1.SandboxList{}
			if err := k8sClient.List(ctx, list, client.InNamespace(vmNamespace)); err == nil {
				for i := range list.Items {
					s := &list.Items[i]
					s.Finalizers = nil
					_ = k8sClient.Update(ctx, s)
				}
			}
		}
		var errs []string
		for _, n := range nodeNames {
			a := agentsOn[n]
			if a == nil {
				continue
			}
			if a.running() {
				By("stopping the node agent of " + n + " (SIGTERM)")
				if err := a.stop(20 * time.Second); err != nil {
					errs = append(errs, fmt.Sprintf("%s: %v; log:\n%s", a.name, err, a.logTail(30)))
				}
			}
			// A failed run may leave VMs: QEMU outlives its agent by design.
			killLeftoverVMs(a.stateDir)
			if failed || os.Getenv("E2E_KEEP_WORKDIR") != "" {
				fmt.Fprintf(GinkgoWriter, "keeping the state directory of %s: %s\n", n, a.stateDir)
			} else {
				_ = os.RemoveAll(a.stateDir)
			}
		}
		if vmMgr.running() {
			By("stopping the manager (SIGTERM)")
			if err := vmMgr.stop(15 * time.Second); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v; log:\n%s", vmMgr.name, err, vmMgr.logTail(30)))
			}
		}
		if reg != nil {
			reg.Close()
		}
		if testEnv != nil {
			// Without its manager the APIService is unavailable: remove it
			// and its Service, so that later containers' discovery (kubectl)
			// does not trip over it.
			apiService := &unstructured.Unstructured{}
			apiService.SetGroupVersionKind(apiServiceGVK)
			apiService.SetName(access.Version + "." + access.Group)
			for _, obj := range []client.Object{apiService,
				&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: accessServiceName, Namespace: leaseNamespace}}} {
				if err := k8sClient.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
					errs = append(errs, fmt.Sprintf("deleting %T %s: %v", obj, obj.GetName(), err))
				}
			}
		}
		timingsMu.Lock()
		fmt.Fprintf(GinkgoWriter, "VM timings:\n  %s\n", strings.Join(timings, "\n  "))
		timingsMu.Unlock()
		Expect(errs).To(BeEmpty(), "processes that did not stop cleanly")
	})

	It("registers a Ready SandboxNode and a Lease per agent, labelled from its Node", func() {
		for _, n := range nodeNames {
			Eventually(func(g Gomega) {
				sn := &sandboxv1alpha1.SandboxNode{}
				g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: n}, sn)).To(Succeed())
				ready := meta.FindStatusCondition(sn.Status.Conditions, sandboxv1alpha1.NodeConditionReady)
				g.Expect(ready).NotTo(BeNil())
				g.Expect(ready.Status).To(Equal(metav1.ConditionTrue), "Ready: %+v", ready)
				g.Expect(sn.Status.Accelerator).To(Equal(sandboxv1alpha1.AcceleratorTCG))
				g.Expect(sn.Status.Allocatable.CPUs).To(BeNumerically(">=", 1))
				g.Expect(sn.Labels).To(HaveKeyWithValue(poolLabel, poolValue))
				g.Expect(sn.Labels).To(HaveKeyWithValue(hostnameLabel, n))
				g.Expect(sn.OwnerReferences).To(ContainElement(And(
					HaveField("Kind", "Node"), HaveField("Name", n))))
				l := &coordinationv1.Lease{}
				g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: leaseNamespace, Name: n}, l)).To(Succeed())
				g.Expect(ptr.Deref(l.Spec.HolderIdentity, "")).To(Equal(n))
			}).Should(Succeed())
		}
		out := mustKubectl("get", "sandboxnodes", "-l", poolLabel+"="+poolValue, "-o", "name")
		Expect(strings.Fields(out)).To(ConsistOf("sandboxnode.sandbox.microvm.dev/vm-a", "sandboxnode.sandbox.microvm.dev/vm-b"))
	})

	It("boots Sandboxes applied with kubectl on both nodes, and runs the entrypoint as the spec configures it", func() {
		By("creating Secret " + tokenSecret + " with kubectl")
		mustKubectl("create", "secret", "generic", tokenSecret, "-n", vmNamespace, "--from-literal=token="+tokenValue)

		By("applying Sandbox probe with kubectl apply -f")
		// Each value is one word: the line parses as key=value pairs.
		probeYAML := sandboxYAML(probe, `  resources:
    cpus: 1
    memoryMiB: 256
  nodeSelector:
    `+poolLabel+`: `+poolValue+`
  restartPolicy: Never
  stopPolicy:
    gracePeriodSeconds: `+fmt.Sprint(probeGraceSeconds)+`
  runtime:
    entrypoint: ["/bin/sh", "-c"]
    cmd:
    - |
      echo "E2E user=$(id -u):$(id -g) whoami=$(whoami) host=$(hostname) pwd=$(pwd) env=$GREETING secret=$TOKEN nofile=$(ulimit -n)/$(ulimit -Hn) patch=$(cat /etc/e2e.txt) append=$(cat /etc/e2e-append.txt) link=$(readlink /etc/e2e-link) dir=$(test -d /srv/e2e/data && echo yes || echo no) script=$(hello)"
      i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 1; done
    workdir: /home/app
    user: app
    hostname: e2e-probe
    scripts:
      hello: "echo hi-from-script"
  env:
  - name: GREETING
    value: hello-e2e
  - name: TOKEN
    valueFrom:
      secretKeyRef:
        name: `+tokenSecret+`
        key: token
  rlimits:
  - resource: nofile
    soft: 321
    hard: 654
  patches:
  - type: Text
    path: /etc/e2e.txt
    content: patched-by-e2e
  - type: Append
    path: /etc/e2e-append.txt
    content: appended-by-e2e
  - type: Symlink
    path: /etc/e2e-link
    target: /etc/e2e.txt
  - type: Mkdir
    path: /srv/e2e/data
`)
		applied := time.Now()
		mustKubectl("apply", "-f", writeManifest("probe.yaml", probeYAML))
		placed := watch.waitFor(probe, applied, 30*time.Second, "placed", func(s *sandboxv1alpha1.Sandbox) bool {
			return s.Status.NodeName != ""
		})
		probeNode = placed.sandbox.Status.NodeName
		Expect(nodeNames).To(ContainElement(probeNode), "probe must land on a real agent's node")
		for _, n := range nodeNames {
			if n != probeNode {
				otherNode = n
			}
		}
		timing("probe: apply → placed", placed.at.Sub(applied))

		By("applying Sandbox crasher, pinned to the other node (" + otherNode + "), booting alongside")
		crasherApplied := time.Now()
		mustKubectl("apply", "-f", writeManifest("crasher.yaml", sandboxYAML(crasher, `  resources:
    cpus: 1
    memoryMiB: 256
  nodeSelector:
    `+poolLabel+`: `+poolValue+`
    `+hostnameLabel+`: `+otherNode+`
  restartPolicy: OnFailure
  network:
    enabled: false
`)))

		By("seeing probe Running through the watch")
		running := watch.waitPhase(probe, sandboxv1alpha1.PhaseRunning, applied, input.BootTimeout)
		timing("probe: apply → Running (watch)", running.at.Sub(applied))
		s := running.sandbox
		Expect(s.Status.NodeName).To(Equal(probeNode))
		Expect(s.Status.VM).NotTo(BeNil())
		Expect(s.Status.VM.State).To(Equal(sandboxv1alpha1.VMRunning))
		Expect(s.Status.VM.Accelerator).To(Equal(sandboxv1alpha1.AcceleratorTCG))
		Expect(s.Status.VM.PID).To(BeNumerically(">", 0))
		Expect(isQEMU(int(s.Status.VM.PID))).To(BeTrue(), "status.vm.pid %d is not a live QEMU", s.Status.VM.PID)
		if t := s.Status.Timings; t != nil {
			fmt.Fprintf(GinkgoWriter, "probe timings (ms): scheduled %v, image %v, rootfs %v, vmm %v, guest ready %v\n",
				ptr.Deref(t.ScheduledMillis, -1), ptr.Deref(t.ImagePulledMillis, -1), ptr.Deref(t.RootfsReadyMillis, -1),
				ptr.Deref(t.VMMStartedMillis, -1), ptr.Deref(t.GuestReadyMillis, -1))
		}
		a := agentsOn[probeNode]
		dir := a.runDir(s.UID)
		Expect(filepath.Join(dir, "journal.json")).To(BeAnExistingFile(), "the VM's journal on %s", probeNode)
		Expect(filepath.Join(dir, vmm.ProcessFile)).To(BeAnExistingFile())

		By("seeing crasher Running on " + otherNode + ": both agents run VMs")
		cr := watch.waitPhase(crasher, sandboxv1alpha1.PhaseRunning, crasherApplied, input.BootTimeout)
		timing("crasher: apply → Running (watch, booted alongside probe)", cr.at.Sub(crasherApplied))
		Expect(cr.sandbox.Status.NodeName).To(Equal(otherNode))
		Expect(isQEMU(int(cr.sandbox.Status.VM.PID))).To(BeTrue())
	})

	It("runs probe's entrypoint with the spec's user, hostname, workdir, env, Secret, rlimits, patches and scripts", func() {
		s := getVMSandbox(Default, probe)
		Expect(s.Status.NodeName).To(Equal(probeNode))
		a := agentsOn[probeNode]
		By("reading the entrypoint's output from probe's VM console on " + probeNode)
		var got map[string]string
		Eventually(func(g Gomega) {
			f, ok := markerFields(a.console(s.UID), "E2E")
			g.Expect(ok).To(BeTrue(), "no E2E line on the console yet")
			got = f
		}).WithTimeout(30*time.Second).Should(Succeed(), func() string { return "console:\n" + a.console(s.UID) })
		Expect(got).To(Equal(map[string]string{
			"user":   fmt.Sprintf("%d:%d", appUID, appGID), // runtime.user app, from the image's /etc/passwd
			"whoami": "app",
			"host":   "e2e-probe",      // runtime.hostname
			"pwd":    "/home/app",      // runtime.workdir
			"env":    "hello-e2e",      // env value
			"secret": tokenValue,       // env valueFrom secretKeyRef
			"nofile": "321/654",        // rlimits (soft/hard)
			"patch":  "patched-by-e2e", // Text patch
			"append": "appended-by-e2e",
			"link":   "/etc/e2e.txt", // Symlink patch
			"dir":    "yes",          // Mkdir patch
			"script": "hi-from-script",
		}), "the probe's view of its configuration; console:\n%s", a.console(s.UID))
	})

	accessSpecs(AccessSpecInput{
		Namespace:      vmNamespace,
		Sandbox:        probe,
		Hostname:       "e2e-probe",
		Manager:        func() *process { return vmMgr },
		Agent:          func(node string) *agentProcess { return agentsOn[node] },
		Timing:         timing,
		StdinBytes:     10 << 20,
		TTYRows:        30,
		TTYCols:        100,
		ExecRoundTrips: 10,
	})

	plugin := pluginSpecs(PluginSpecInput{Namespace: vmNamespace, Sandbox: probe, Timing: timing})

	networkSpecs(NetworkSpecInput{
		Namespace: vmNamespace, Public: probe, Offline: crasher, Timing: timing,
		EgressCA: func() *access.CA { return egressCA },
		Agent:    func(node string) *agentProcess { return agentsOn[node] },
		Apply: func(name, body string) string {
			GinkgoHelper()
			applied := time.Now()
			// On the VM nodes only (the stand-in nodes of other specs run no agent).
			body += "  nodeSelector:\n    " + poolLabel + ": " + poolValue + "\n"
			mustKubectl("apply", "-f", writeManifest(name+".yaml", sandboxYAML(name, body)))
			return watch.waitPhase(name, sandboxv1alpha1.PhaseRunning, applied, input.BootTimeout).sandbox.Status.NodeName
		},
		Delete: func(name string) {
			GinkgoHelper()
			mustKubectl("delete", "sbx", name, "-n", vmNamespace, "--timeout=60s", "--ignore-not-found")
		},
	})

	It("reports kill -9 of a VM's QEMU as Crashed within 2 s, with the crash in the Ready condition", func() {
		cur := watch.latest(crasher)
		Expect(cur).NotTo(BeNil())
		Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
		pid := int(cur.Status.VM.PID)
		Expect(isQEMU(pid)).To(BeTrue(), "status.vm.pid %d is not a live QEMU", pid)

		By(fmt.Sprintf("killing crasher's QEMU (pid %d) with SIGKILL", pid))
		killedAt := time.Now()
		Expect(syscall.Kill(pid, syscall.SIGKILL)).To(Succeed())
		crashed := watch.waitPhase(crasher, sandboxv1alpha1.PhaseCrashed, killedAt, 30*time.Second)
		took := crashed.at.Sub(killedAt)
		timing("crasher: kill -9 QEMU → Crashed (watch)", took)
		Expect(took).To(BeNumerically("<=", input.CrashDeadline), "kill → Crashed took %v; the watch saw:\n%s", took, watch.describe(crasher))
		s := crashed.sandbox
		Expect(s.Status.TerminationReason).To(Equal(sandboxv1alpha1.TerminationInternalError))
		Expect(s.Status.Run).To(Equal(int32(1)))
		ready := meta.FindStatusCondition(s.Status.Conditions, sandboxv1alpha1.ConditionReady)
		Expect(ready).NotTo(BeNil())
		Expect(ready.Status).To(Equal(metav1.ConditionFalse))
		Expect(ready.Reason).To(Equal(sandboxv1alpha1.ReasonCrashed))
		Expect(ready.Message).To(ContainSubstring("exited unexpectedly"), "the Ready condition should say why it crashed")
		Expect(processAlive(pid)).To(BeFalse())

		By("restarting it (restartPolicy OnFailure) in run 2 on its node, with a new QEMU")
		again := watch.waitFor(crasher, killedAt, input.BootTimeout, "Running in run 2", func(s *sandboxv1alpha1.Sandbox) bool {
			return s.Status.Run == 2 && s.Status.Phase == sandboxv1alpha1.PhaseRunning
		})
		timing("crasher: kill -9 QEMU → Running again (run 2)", again.at.Sub(killedAt))
		Expect(again.sandbox.Status.RestartCount).To(Equal(int32(1)))
		Expect(again.sandbox.Status.NodeName).To(Equal(otherNode))
		Expect(again.sandbox.Status.VM.PID).NotTo(Equal(int32(pid)))
		Expect(isQEMU(int(again.sandbox.Status.VM.PID))).To(BeTrue())
	})

	It("keeps a VM running through kill -9 of its node agent: the restarted agent re-adopts the same QEMU", func() {
		a := agentsOn[probeNode]
		cur := getVMSandbox(Default, probe)
		Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
		pid := int(cur.Status.VM.PID)
		run := cur.Status.Run
		Expect(isQEMU(pid)).To(BeTrue())

		By(fmt.Sprintf("watching QEMU (pid %d) every 20 ms from now on", pid))
		pollCtx, stopPoll := context.WithCancel(ctx)
		var diedAt time.Time
		polled := make(chan struct{})
		go func() {
			defer GinkgoRecover()
			defer close(polled)
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-pollCtx.Done():
					return
				case <-t.C:
					if !processAlive(pid) {
						diedAt = time.Now()
						return
					}
				}
			}
		}()
		defer stopPoll()

		By("killing the node agent of " + probeNode + " with SIGKILL")
		killedAt := time.Now()
		a.kill()
		// Should this spec fail before the restart, later ones still need
		// the agent (or they would all fail with NodeLost).
		DeferCleanup(func() {
			if !a.running() {
				a.start()
				a.waitReady(60 * time.Second)
			}
		})

		By("leaving the VM and the phase alone while no agent runs")
		Consistently(func(g Gomega) {
			g.Expect(processAlive(pid)).To(BeTrue())
			s := getVMSandbox(g, probe)
			g.Expect(s.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
		}, 3*time.Second).Should(Succeed())

		By("leaving, while the agent is down, two run directories of Sandboxes that are not on " + probeNode + ": " +
			"one whose journal names a Sandbox that does not exist, with a live stand-in VM (sleep) in its process.json, " +
			"and one without a journal, two minutes old")
		gone := makeLeftoverRun(a.stateDir, vmNamespace, "gone", true, 0)
		DeferCleanup(gone.cleanup)
		noJournal := makeLeftoverRun(a.stateDir, vmNamespace, "", false, 2*time.Minute)
		DeferCleanup(noJournal.cleanup)
		probeDir := a.runDir(cur.UID)
		probeFiles := dirListing(probeDir)

		By("restarting the agent with the same flags")
		restartedAt := time.Now()
		a.start()
		a.waitReady(60 * time.Second)
		Eventually(func() bool {
			return a.logContains("Re-adopted the VM of an earlier agent process", fmt.Sprintf(`"pid": %d`, pid))
		}).WithTimeout(30*time.Second).Should(BeTrue(), "the restarted agent did not re-adopt pid %d; log:\n%s", pid, a.logTail(40))
		timing("probe: agent restart → VM re-adopted (agent log)", time.Since(restartedAt))

		By("seeing the restarted agent kill the stand-in VM and remove both leftover directories")
		Eventually(func(g Gomega) {
			g.Expect(gone.killedBySIGKILL()).To(BeTrue(), "the stand-in VM (pid %d) was not killed", gone.pid())
			g.Expect(gone.dir).NotTo(BeADirectory())
			g.Expect(noJournal.dir).NotTo(BeADirectory())
		}).WithTimeout(input.LeaveDeadline).WithPolling(50*time.Millisecond).Should(Succeed(),
			func() string { return "the agent's log:\n" + a.logTail(40) })
		timing("agent restart → leftover runs swept (stand-in VM killed)", time.Since(restartedAt))
		Expect(a.logContains("Killing the VM of a Sandbox that left this node", fmt.Sprintf(`"pid": %d`, gone.pid()))).To(BeTrue(),
			"the agent's log should say why it killed pid %d", gone.pid())
		Expect(vmDirs(a.stateDir)).To(Equal([]string{string(cur.UID)}), "only probe's run directory stays on %s", probeNode)
		Expect(dirListing(probeDir)).To(Equal(probeFiles), "probe's run directory is left as it was")

		By("keeping the same VM Running in the same run")
		Consistently(func(g Gomega) {
			g.Expect(processAlive(pid)).To(BeTrue())
			s := getVMSandbox(g, probe)
			g.Expect(s.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
			g.Expect(s.Status.Run).To(Equal(run))
			g.Expect(s.Status.VM.PID).To(Equal(int32(pid)))
			g.Expect(s.Status.VM.State).To(Equal(sandboxv1alpha1.VMRunning))
		}, 3*time.Second).Should(Succeed())

		stopPoll()
		<-polled
		Expect(diedAt).To(BeZero(), "QEMU %d died at %s (agent killed at %s)", pid, diedAt, killedAt)
		By("checking that the watch never saw probe leave Running, nor another QEMU")
		seen := watch.since(probe, killedAt)
		for _, o := range seen {
			Expect(o.sandbox.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning), "the watch saw:\n%s", watch.describe(probe))
			Expect(o.sandbox.Status.VM).To(And(
				HaveField("PID", int32(pid)), HaveField("State", sandboxv1alpha1.VMRunning)), "the watch saw:\n%s", watch.describe(probe))
		}
		fmt.Fprintf(GinkgoWriter, "the watch delivered %d events of probe from the kill on, all Running with pid %d\n", len(seen), pid)
	})

	pluginLogsAfterRestartSpec(plugin)

	It("stops the re-adopted VM through its guest on spec.state: Stopped", func() {
		a := agentsOn[probeNode]
		cur := getVMSandbox(Default, probe)
		Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
		pid := int(cur.Status.VM.PID)

		By("patching spec.state to Stopped with kubectl")
		patchedAt := time.Now()
		mustKubectl("patch", "sbx", probe, "-n", vmNamespace, "--type=merge", "-p", `{"spec":{"state":"Stopped"}}`)
		stopped := watch.waitPhase(probe, sandboxv1alpha1.PhaseStopped, patchedAt, time.Duration(probeGraceSeconds+30)*time.Second)
		took := stopped.at.Sub(patchedAt)
		timing("probe: spec.state Stopped → Stopped (watch)", took)

		s := stopped.sandbox
		Expect(s.Status.TerminationReason).To(Equal(sandboxv1alpha1.TerminationShutdownRequested))
		Expect(s.Status.VM.ExitReason).To(Equal(sandboxv1alpha1.TerminationShutdownRequested))
		Expect(s.Status.StoppedAt).NotTo(BeNil())
		Expect(meta.FindStatusCondition(s.Status.Conditions, sandboxv1alpha1.ConditionDraining)).To(
			HaveField("Status", metav1.ConditionFalse))

		By("seeing it go through Draining (the agent's report) and nothing else on the way")
		seen := watch.since(probe, patchedAt)
		order := map[sandboxv1alpha1.SandboxPhase]int{
			sandboxv1alpha1.PhaseRunning: 0, sandboxv1alpha1.PhaseDraining: 1, sandboxv1alpha1.PhaseStopped: 2}
		last := 0
		drained := false
		for _, o := range seen {
			i, ok := order[o.sandbox.Status.Phase]
			Expect(ok && i >= last).To(BeTrue(), "phase %s out of order; the watch saw:\n%s", o.sandbox.Status.Phase, watch.describe(probe))
			last = i
			if o.sandbox.Status.Phase == sandboxv1alpha1.PhaseDraining ||
				(o.sandbox.Status.VM != nil && o.sandbox.Status.VM.State == sandboxv1alpha1.VMDraining) {
				drained = true
			}
		}
		Expect(drained).To(BeTrue(), "no Draining state seen; the watch saw:\n%s", watch.describe(probe))
		fmt.Fprintf(GinkgoWriter, "phases after the patch: %v\n", phases(seen))

		By("checking that the guest shut down when asked (no kill after the grace period)")
		// The agent kills a VM whose guest does not answer after grace + 5 s;
		// a stop well within the grace went through the protocol, which
		// only the re-adopted connection can carry.
		Expect(took).To(BeNumerically("<", time.Duration(probeGraceSeconds/3)*time.Second),
			"stop took %v (grace %ds): the guest was not reached", took, probeGraceSeconds)
		Expect(a.console(s.UID)).To(ContainSubstring("sandbox-init: powering off"))
		Eventually(func() bool { return processAlive(pid) }).Should(BeFalse(), "QEMU %d is gone", pid)
	})

	It("moves a stopped Sandbox to the other node for its next run, leaving nothing of the last run on the old node", func() {
		from, to := agentsOn[probeNode], agentsOn[otherNode]
		cur := getVMSandbox(Default, probe)
		Expect(cur.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStopped))
		Expect(cur.Status.NodeName).To(Equal(from.node))
		run, oldPID := cur.Status.Run, cur.Status.VM.PID
		oldDir := from.runDir(cur.UID)
		Expect(filepath.Join(oldDir, "journal.json")).To(BeAnExistingFile(), "run %d's directory on %s holds %s", run, from.node, dirListing(oldDir))

		By("watching " + from.node + "'s run directories every 20 ms from now on")
		pollCtx, stopPoll := context.WithCancel(ctx)
		defer stopPoll()
		removed := make(chan time.Time, 1)
		go func() {
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-pollCtx.Done():
					return
				case <-t.C:
					if len(vmDirs(from.stateDir)) == 0 {
						removed <- time.Now()
						return
					}
				}
			}
		}()

		By("pinning probe to " + to.node + " and setting spec.state back to Running with kubectl patch")
		patchedAt := time.Now()
		mustKubectl("patch", "sbx", probe, "-n", vmNamespace, "--type=merge", "-p",
			fmt.Sprintf(`{"spec":{"state":"Running","nodeSelector":{%q:%q}}}`, hostnameLabel, to.node))
		running := watch.waitFor(probe, patchedAt, input.BootTimeout, fmt.Sprintf("Running in run %d", run+1), func(s *sandboxv1alpha1.Sandbox) bool {
			return s.Status.Run == run+1 && s.Status.Phase == sandboxv1alpha1.PhaseRunning
		})
		timing("probe: moved to the other node → Running (run 2)", running.at.Sub(patchedAt))
		s := running.sandbox
		Expect(s.Status.NodeName).To(Equal(to.node))
		Expect(s.Status.VM.PID).NotTo(Equal(oldPID))
		Expect(isQEMU(int(s.Status.VM.PID))).To(BeTrue(), "status.vm.pid %d is not a live QEMU", s.Status.VM.PID)
		newDir := to.runDir(s.UID)
		Expect(filepath.Join(newDir, "journal.json")).To(BeAnExistingFile(), "the new run's journal on %s", to.node)
		Eventually(func() bool {
			_, ok := markerFields(to.console(s.UID), "E2E")
			return ok
		}).WithTimeout(30*time.Second).Should(BeTrue(), func() string { return "run 2's console on " + to.node + ":\n" + to.console(s.UID) })

		By("seeing " + from.node + "'s agent remove run 1's directory (disks, journal, console) once probe left its node")
		var removedAt time.Time
		Eventually(removed).WithTimeout(input.LeaveDeadline).Should(Receive(&removedAt),
			func() string {
				return fmt.Sprintf("run directories left on %s after probe moved to %s: %v (probe's holds %s)",
					from.node, to.node, vmDirs(from.stateDir), dirListing(oldDir))
			})
		timing("probe: moved → run 1's directory removed from the old node", removedAt.Sub(patchedAt))
		Expect(processAlive(int(oldPID))).To(BeFalse())
		Expect(newDir).To(BeADirectory(), "run 2's directory on %s", to.node)
	})

	It("reports an entrypoint that exits 3 as Stopped, exitCode 3, reason Failed", func() {
		applied := time.Now()
		mustKubectl("apply", "-f", writeManifest("fails.yaml", sandboxYAML(fails, `  resources:
    cpus: 1
    memoryMiB: 256
  nodeSelector:
    `+poolLabel+`: `+poolValue+`
  restartPolicy: Never
  runtime:
    entrypoint: ["/bin/sh", "-c", "echo E2E-FAILS exiting with 3; exit 3"]
`)))
		stopped := watch.waitPhase(fails, sandboxv1alpha1.PhaseStopped, applied, input.BootTimeout)
		timing("fails: apply → Stopped (exit 3)", stopped.at.Sub(applied))
		s := stopped.sandbox
		Expect(s.Status.ExitCode).To(Equal(ptr.To[int32](3)))
		Expect(s.Status.TerminationReason).To(Equal(sandboxv1alpha1.TerminationFailed))
		Expect(s.Status.VM.ExitReason).To(Equal(sandboxv1alpha1.TerminationFailed))
		Expect(phases(watch.history(fails))).NotTo(ContainElement(sandboxv1alpha1.PhaseCrashed))
		a := agentsOn[s.Status.NodeName]
		Expect(a).NotTo(BeNil())
		Expect(a.console(s.UID)).To(ContainSubstring("E2E-FAILS exiting with 3"))
		Expect(processAlive(int(s.Status.VM.PID))).To(BeFalse())
	})

	It("deletes the Sandboxes with kubectl, leaving no process, disk or journal behind", func() {
		type vmRecord struct {
			uid  types.UID
			node string
			pids []int32
		}
		recs := map[string]vmRecord{}
		for _, n := range []string{probe, crasher, fails} {
			s := getVMSandbox(Default, n)
			r := vmRecord{uid: s.UID, node: s.Status.NodeName}
			for _, o := range watch.history(n) {
				if vm := o.sandbox.Status.VM; vm != nil && vm.PID != 0 && !slices.Contains(r.pids, vm.PID) {
					r.pids = append(r.pids, vm.PID)
				}
			}
			recs[n] = r
			dir := agentsOn[r.node].runDir(r.uid)
			Expect(filepath.Join(dir, "journal.json")).To(BeAnExistingFile(), "%s: %s holds %s", n, dir, dirListing(dir))
			Expect(filepath.Join(dir, "upper.ext4")).To(BeAnExistingFile(), "%s: the writable root disk; %s holds %s", n, dir, dirListing(dir))
		}
		for _, n := range []string{probe, crasher} {
			Expect(getVMSandbox(Default, n).Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning), "%s is deleted while it runs", n)
		}

		By("deleting probe (Running, moved), crasher (Running) and fails (Stopped) with kubectl delete")
		deleted := time.Now()
		mustKubectl("delete", "sbx", probe, crasher, fails, "-n", vmNamespace, "--timeout=60s")
		timing("delete (3 sandboxes, two running) → gone", time.Since(deleted))
		for n, r := range recs {
			err := k8sClient.Get(ctx, client.ObjectKey{Namespace: vmNamespace, Name: n}, &sandboxv1alpha1.Sandbox{})
			Expect(apierrors.IsNotFound(err)).To(BeTrue(), "%s still exists: %v", n, err)
			Eventually(func() bool { return watch.latest(n) == nil }).Should(BeTrue(), "the watch saw %s deleted", n)
			for _, pid := range r.pids {
				Eventually(func() bool { return processAlive(int(pid)) }).Should(BeFalse(), "%s's QEMU %d is gone", n, pid)
			}
			dir := agentsOn[r.node].runDir(r.uid)
			Expect(dir).NotTo(BeADirectory(), "%s's run directory (disks, journal, console) is removed", n)
		}
		for _, n := range nodeNames {
			a := agentsOn[n]
			Expect(vmDirs(a.stateDir)).To(BeEmpty(), "run directories left on %s", n)
			var qemus []string
			for _, p := range processesMentioning(a.stateDir) {
				if strings.Contains(p, "qemu-system") {
					qemus = append(qemus, p)
				}
			}
			Expect(qemus).To(BeEmpty(), "QEMU processes left on %s", n)
		}
	})

	It("needed no permission beyond the chart's RBAC and admission policy (the manager and both agents ran as its ServiceAccounts, with TokenRequest tokens)", func() {
		for _, p := range allAgents() {
			Expect(p.forbiddenLines()).To(BeEmpty(), "the API server refused %s something; see %s", p.name, p.logPath)
		}
	})
}
