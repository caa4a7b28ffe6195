//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// The specs run in order against one cluster and one manager; each builds
// on the state the previous one left:
//
//	samples placed → python-demo Running → manager crash survived →
//	python-demo's node lost and the sandbox re-placed → deletions →
//	no request of the manager's was refused under the chart's RBAC.
var _ = Describe("sandbox-operator", Ordered, func() {
	const (
		pythonDemo    = "python-demo"    // config/samples: restartPolicy OnFailure
		busyboxParked = "busybox-parked" // config/samples: state Stopped
		late          = "late"           // created while the manager is down
		stranded      = "stranded"       // pinned to the node that is lost; restartPolicy Never
	)
	nodes := []string{"node-a", "node-b"}
	ctx := context.Background()

	// Filled in as the story goes.
	var (
		demoNode  string // python-demo's node in its first run (the one lost later)
		otherNode string
	)

	BeforeAll(func() {
		By("seeing the manager's identity from the Helm chart (applied by the suite): its ServiceAccount, ClusterRole and binding")
		mustKubectl("get", "-n", leaseNamespace, "serviceaccount/"+managerServiceAccount)
		bindings := mustKubectl("get", "clusterrolebindings", "-o", "jsonpath={.items[*].subjects[*].name}")
		Expect(strings.Fields(bindings)).To(ContainElement(managerServiceAccount))

		By("registering SandboxNodes node-a and node-b, with Leases renewed every 2 s by stand-in agents")
		registerNodes(ctx, nodes...)
		agents = startNodeAgents(nodes...)
		out := mustKubectl("get", "sandboxnodes")
		Expect(out).To(ContainSubstring("node-a"))
		Expect(out).To(ContainSubstring("node-b"))

		By("starting bin/manager as a process, as its ServiceAccount, with leader election")
		mgr = &process{
			name:        "the manager",
			bin:         managerBin,
			logPath:     filepath.Join(workDir, "manager.log"),
			healthAddr:  freeLoopbackAddr(),
			metricsAddr: freeLoopbackAddr(),
		}
		mgr.args = []string{
			"--kubeconfig=" + managerKubeconfigPath,
			"--leader-elect=true",
			"--lease-namespace=" + leaseNamespace,
			"--leader-election-namespace=" + leaseNamespace,
			"--metrics-bind-address=" + mgr.metricsAddr,
			"--health-probe-bind-address=" + mgr.healthAddr,
			"--node-lost-grace=" + nodeLostGrace.String(),
			"--restart-backoff=" + restartBackoff.String(),
		}
		mgr.start()
		mgr.waitReady(30 * time.Second)
		Eventually(func(g Gomega) string { return leaderHolder(ctx, g) }).ShouldNot(BeEmpty(),
			"the manager did not take the leader election Lease")
	})

	AfterEach(func() {
		if CurrentSpecReport().Failed() {
			anySpecFailed = true
			dumpDiagnostics(mgr)
		}
	})

	// The other containers start their own manager (top-level containers
	// run in random order): this one must not stay leader. SIGTERM releases
	// the leader Lease at once (LeaderElectionReleaseOnCancel).
	AfterAll(func() {
		if mgr.running() {
			By("stopping the manager (SIGTERM)")
			Expect(mgr.stop(15*time.Second)).To(Succeed(), "manager log:\n%s", mgr.logTail(40))
		}
	})

	It("places the samples applied with kubectl, as a client-go watch sees", func() {
		By("watching Sandboxes in namespace default with the generated clientset")
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		w, err := sbxClientset.SandboxV1alpha1().Sandboxes(sampleNamespace).Watch(wctx, metav1.ListOptions{})
		Expect(err).NotTo(HaveOccurred())
		defer w.Stop()

		By("applying config/samples with kubectl apply -k")
		mustKubectl("apply", "-k", filepath.Join("..", "..", "config", "samples"))

		latest := map[string]*sandboxv1alpha1.Sandbox{}
		done := func() bool {
			demo, parked := latest[pythonDemo], latest[busyboxParked]
			return demo != nil && demo.Status.NodeName != "" && demo.Status.Phase == sandboxv1alpha1.PhaseStarting &&
				parked != nil && parked.Status.Phase == sandboxv1alpha1.PhaseCreated &&
				condition(parked, sandboxv1alpha1.ConditionScheduled).Reason == sandboxv1alpha1.ReasonNotRequested
		}
		for !done() {
			var ev watch.Event
			var ok bool
			select {
			case ev, ok = <-w.ResultChan():
			case <-wctx.Done():
			}
			if !ok {
				Fail(fmt.Sprintf("the watch ended before the samples were placed; last seen: %s", describeSeen(latest)))
			}
			if ev.Type == watch.Error {
				Fail(fmt.Sprintf("watch error: %v", ev.Object))
			}
			s, isSandbox := ev.Object.(*sandboxv1alpha1.Sandbox)
			Expect(isSandbox).To(BeTrue(), "watch event object %T", ev.Object)
			latest[s.Name] = s
			fmt.Fprintf(GinkgoWriter, "watch: %s %s phase=%q node=%q run=%d\n", ev.Type, s.Name, s.Status.Phase, s.Status.NodeName, s.Status.Run)
		}

		demo := latest[pythonDemo]
		demoNode = demo.Status.NodeName
		Expect(nodes).To(ContainElement(demoNode))
		for _, n := range nodes {
			if n != demoNode {
				otherNode = n
			}
		}
		Expect(demo.Status.Run).To(Equal(int32(1)))
		Expect(demo.Finalizers).To(ConsistOf(sandboxv1alpha1.ManagerFinalizer, sandboxv1alpha1.NodeAgentFinalizer))
		Expect(condition(demo, sandboxv1alpha1.ConditionScheduled).Status).To(Equal(metav1.ConditionTrue))
		Expect(condition(demo, sandboxv1alpha1.ConditionReady).Reason).To(Equal(sandboxv1alpha1.ReasonStarting))
		Expect(condition(latest[busyboxParked], sandboxv1alpha1.ConditionScheduled).Status).To(Equal(metav1.ConditionFalse))

		By("keeping busybox-parked (spec.state Stopped) unplaced, in phase Created")
		Consistently(func(g Gomega) {
			s := getSandbox(ctx, g, busyboxParked)
			g.Expect(s.Status.Phase).To(Equal(sandboxv1alpha1.PhaseCreated))
			g.Expect(s.Status.NodeName).To(BeEmpty())
			g.Expect(condition(s, sandboxv1alpha1.ConditionScheduled).Reason).To(Equal(sandboxv1alpha1.ReasonNotRequested))
		}).Should(Succeed())

		By("printing the printer columns with kubectl get sbx")
		rows := tableRows(mustKubectl("get", "sbx", "-n", sampleNamespace))
		Expect(rows).To(HaveKey("NAME"))
		Expect(rows).To(HaveKeyWithValue(pythonDemo, HaveLen(6)))
		Expect(rows).To(HaveKeyWithValue(busyboxParked, HaveLen(6)))
		Expect(rows["NAME"]).To(Equal([]string{"NAME", "PHASE", "NODE", "IMAGE", "READY", "AGE"}))
		Expect(rows[pythonDemo][:5]).To(Equal([]string{pythonDemo, "Starting", demoNode, "docker.io/library/python:3.12-slim", "False"}))
		Expect(rows[busyboxParked][:5]).To(Equal([]string{busyboxParked, "Created", "", "docker.io/library/busybox:1.36", "False"}))

		By("selecting by status.nodeName with kubectl --field-selector (a CRD selectable field)")
		out := mustKubectl("get", "sbx", "-A", "--field-selector", "status.nodeName="+demoNode, "-o", "name")
		Expect(strings.Fields(out)).To(Equal([]string{"sandbox.sandbox.microvm.dev/" + pythonDemo}))
		out = mustKubectl("get", "sbx", "-A", "--field-selector", "status.nodeName="+otherNode, "-o", "name")
		Expect(strings.TrimSpace(out)).To(BeEmpty())

		By("counting the placement and the phases on the manager's metrics endpoint")
		Eventually(func(g Gomega) {
			m := mgr.scrapeMetrics(g)
			g.Expect(m).To(MatchRegexp(`(?m)^sandbox_placements_total\{result="placed"\} 1$`))
			g.Expect(m).To(MatchRegexp(`(?m)^sandbox_phase\{phase="Starting"\} 1$`))
			g.Expect(m).To(MatchRegexp(`(?m)^sandbox_phase\{phase="Created"\} 1$`))
		}).Should(Succeed())
	})

	It("turns the agent's Running report into phase Running and Ready=True", func() {
		By("reporting status.vm Running for the current run, as the node agent (server-side apply)")
		agentReportsRunning(ctx, pythonDemo)

		mustKubectl("wait", "--for=condition=Ready", "sbx/"+pythonDemo, "-n", sampleNamespace, "--timeout=30s")
		s := getSandbox(ctx, Default, pythonDemo)
		Expect(s.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
		Expect(s.Status.StartedAt).NotTo(BeNil())
		Expect(s.Status.NodeName).To(Equal(demoNode))
		Expect(s.Status.Run).To(Equal(int32(1)))
		Expect(condition(s, sandboxv1alpha1.ConditionReady).Reason).To(Equal(sandboxv1alpha1.ReasonRunning))
		Expect(s.Status.VM).NotTo(BeNil())
		Expect(s.Status.VM.State).To(Equal(sandboxv1alpha1.VMRunning))
	})

	It("survives kill -9 of the manager: the restarted one places what was created meanwhile and leaves the rest alone", func() {
		before := getSandbox(ctx, Default, pythonDemo)
		Expect(before.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
		oldLeader := leaderHolder(ctx, Default)
		Expect(oldLeader).NotTo(BeEmpty())

		By("killing the manager with SIGKILL (it cannot release its leader Lease)")
		mgr.kill()
		killedAt := time.Now()

		By("creating Sandbox late with kubectl apply while no manager runs")
		mustKubectl("apply", "-f", writeManifest("late.yaml", fmt.Sprintf(`apiVersion: sandbox.microvm.dev/v1alpha1
kind: Sandbox
metadata:
  name: %s
  namespace: %s
spec:
  image: docker.io/library/busybox:1.36
`, late, sampleNamespace)))
		Consistently(func(g Gomega) {
			s := getSandbox(ctx, g, late)
			g.Expect(s.Finalizers).To(BeEmpty())
			g.Expect(s.Status.NodeName).To(BeEmpty())
		}, 2*time.Second).Should(Succeed(), "something reconciled late while the manager was down")

		By("restarting the manager with the same flags")
		mgr.start()
		mgr.waitReady(30 * time.Second)

		By("waiting for it to take over the leader Lease (the dead holder's expires after 15 s)")
		Eventually(func(g Gomega) {
			h := leaderHolder(ctx, g)
			g.Expect(h).NotTo(BeEmpty())
			g.Expect(h).NotTo(Equal(oldLeader))
		}).WithTimeout(60*time.Second).Should(Succeed(), "the restarted manager did not become leader")
		fmt.Fprintf(GinkgoWriter, "new leader %s elected %s after the kill\n", leaderHolder(ctx, Default), time.Since(killedAt).Round(time.Millisecond))

		By("placing late on the less allocated node (not python-demo's)")
		Eventually(func(g Gomega) {
			s := getSandbox(ctx, g, late)
			g.Expect(s.Status.NodeName).To(Equal(otherNode))
			g.Expect(s.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStarting))
			g.Expect(s.Finalizers).To(ConsistOf(sandboxv1alpha1.ManagerFinalizer, sandboxv1alpha1.NodeAgentFinalizer))
		}).Should(Succeed())
		fmt.Fprintf(GinkgoWriter, "late placed %s after the kill\n", time.Since(killedAt).Round(time.Millisecond))

		By("leaving python-demo Running in the same run on the same node")
		Consistently(func(g Gomega) {
			s := getSandbox(ctx, g, pythonDemo)
			g.Expect(s.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
			g.Expect(s.Status.Run).To(Equal(before.Status.Run))
			g.Expect(s.Status.NodeName).To(Equal(before.Status.NodeName))
			g.Expect(s.Status.RestartCount).To(BeZero())
			g.Expect(s.Status.StartedAt).To(Equal(before.Status.StartedAt))
			g.Expect(condition(s, sandboxv1alpha1.ConditionReady).Status).To(Equal(metav1.ConditionTrue))
		}).Should(Succeed())
	})

	It("crashes runs on a lost node with NodeLost and re-places python-demo on the other node", func() {
		By("placing Sandbox stranded (restartPolicy Never) on python-demo's node with a nodeSelector")
		mustKubectl("apply", "-f", writeManifest("stranded.yaml", fmt.Sprintf(`apiVersion: sandbox.microvm.dev/v1alpha1
kind: Sandbox
metadata:
  name: %s
  namespace: %s
spec:
  image: docker.io/library/busybox:1.36
  nodeSelector:
    kubernetes.io/hostname: %s
`, stranded, sampleNamespace, demoNode)))
		Eventually(func(g Gomega) {
			s := getSandbox(ctx, g, stranded)
			g.Expect(s.Status.NodeName).To(Equal(demoNode))
			g.Expect(s.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStarting))
		}).Should(Succeed())
		agentReportsRunning(ctx, stranded)
		Eventually(func(g Gomega) sandboxv1alpha1.SandboxPhase {
			return getSandbox(ctx, g, stranded).Status.Phase
		}).Should(Equal(sandboxv1alpha1.PhaseRunning))

		By("stopping the Lease renewals of " + demoNode)
		agents.stopRenewing(demoNode)
		stoppedAt := time.Now()

		By("not declaring the node lost before its Lease expired and the grace passed")
		// The last renewal was at most 2 s ago: the node is lost 6 s + 3 s
		// after it, so at least 7 s from now.
		Consistently(func(g Gomega) {
			s := getSandbox(ctx, g, pythonDemo)
			g.Expect(s.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
			g.Expect(s.Status.Run).To(Equal(int32(1)))
		}, 4*time.Second).Should(Succeed())

		By("crashing stranded with terminationReason NodeLost, on the lost node")
		Eventually(func(g Gomega) {
			s := getSandbox(ctx, g, stranded)
			g.Expect(s.Status.Phase).To(Equal(sandboxv1alpha1.PhaseCrashed))
			g.Expect(s.Status.TerminationReason).To(Equal(sandboxv1alpha1.TerminationNodeLost))
			g.Expect(s.Status.NodeName).To(Equal(demoNode))
			g.Expect(s.Status.Run).To(Equal(int32(1)))
			g.Expect(condition(s, sandboxv1alpha1.ConditionReady).Reason).To(Equal(sandboxv1alpha1.ReasonCrashed))
		}).Should(Succeed())
		fmt.Fprintf(GinkgoWriter, "stranded Crashed (NodeLost) %s after the renewals stopped\n", time.Since(stoppedAt).Round(time.Millisecond))

		By("restarting python-demo (restartPolicy OnFailure) at once on " + otherNode + ": run 2, restartCount 1")
		Eventually(func(g Gomega) {
			s := getSandbox(ctx, g, pythonDemo)
			g.Expect(s.Status.NodeName).To(Equal(otherNode))
			g.Expect(s.Status.Run).To(Equal(int32(2)))
			g.Expect(s.Status.RestartCount).To(Equal(int32(1)))
			g.Expect(s.Status.Phase).To(Equal(sandboxv1alpha1.PhaseStarting))
			g.Expect(s.Status.TerminationReason).To(BeEmpty())
		}).Should(Succeed())
		fmt.Fprintf(GinkgoWriter, "python-demo re-placed on %s %s after the renewals stopped\n", otherNode, time.Since(stoppedAt).Round(time.Millisecond))

		By("recording a NodeLost event for python-demo")
		Eventually(func(g Gomega) []string {
			out, err := kubectl("get", "events", "-n", sampleNamespace, "--field-selector", "involvedObject.name="+pythonDemo,
				"-o", `jsonpath={range .items[*]}{.reason}{"\n"}{end}`)
			g.Expect(err).NotTo(HaveOccurred())
			return strings.Fields(out)
		}).Should(ContainElement("NodeLost"))

		By("accepting the new node's report for run 2")
		agentReportsRunning(ctx, pythonDemo)
		mustKubectl("wait", "--for=condition=Ready", "sbx/"+pythonDemo, "-n", sampleNamespace, "--timeout=30s")
		s := getSandbox(ctx, Default, pythonDemo)
		Expect(s.Status.Phase).To(Equal(sandboxv1alpha1.PhaseRunning))
		Expect(s.Status.Run).To(Equal(int32(2)))
		Expect(s.Status.NodeName).To(Equal(otherNode))
	})

	It("deletes through the agent's finalizer on a live node, and without the agent on a lost one", func() {
		By("deleting late (on live " + otherNode + ") with kubectl delete --wait=false")
		Expect(getSandbox(ctx, Default, late).Status.NodeName).To(Equal(otherNode))
		mustKubectl("delete", "sbx", late, "-n", sampleNamespace, "--wait=false")

		By("keeping it until the node agent confirms the VM is gone")
		Consistently(func(g Gomega) {
			s := getSandbox(ctx, g, late)
			g.Expect(s.DeletionTimestamp).NotTo(BeNil())
			g.Expect(s.Finalizers).To(ConsistOf(sandboxv1alpha1.ManagerFinalizer, sandboxv1alpha1.NodeAgentFinalizer))
		}).Should(Succeed())

		By("removing the node agent's finalizer, as the agent does")
		agentConfirmsDeletion(ctx, late)
		Eventually(func() bool { return sandboxGone(ctx, late) }).Should(BeTrue())

		By("deleting stranded (on lost " + demoNode + ") with no agent to confirm")
		Expect(getSandbox(ctx, Default, stranded).Finalizers).To(ContainElement(sandboxv1alpha1.NodeAgentFinalizer))
		mustKubectl("delete", "sbx", stranded, "-n", sampleNamespace, "--timeout=30s")
		Expect(sandboxGone(ctx, stranded)).To(BeTrue())
	})

	It("needed no permission beyond the chart's RBAC (the manager ran as its ServiceAccount, with a TokenRequest token)", func() {
		Expect(mgr.forbiddenLines()).To(BeEmpty(), "the API server refused the manager something; see %s", mgr.logPath)
	})
})

// tableRows splits kubectl's table output into rows keyed by their first
// column (the header row is keyed "NAME"). Cells are cut at the header's
// column offsets, so an empty cell stays an empty string.
func tableRows(out string) map[string][]string {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	var starts []int
	header := lines[0]
	for i := range header {
		if header[i] != ' ' && (i == 0 || header[i-1] == ' ') {
			starts = append(starts, i)
		}
	}
	rows := map[string][]string{}
	for _, line := range lines {
		var cells []string
		for j, from := range starts {
			to := len(line)
			if j+1 < len(starts) && starts[j+1] < to {
				to = starts[j+1]
			}
			if from > len(line) {
				from = len(line)
			}
			cells = append(cells, strings.TrimSpace(line[from:to]))
		}
		rows[cells[0]] = cells
	}
	return rows
}

func describeSeen(latest map[string]*sandboxv1alpha1.Sandbox) string {
	var parts []string
	for name, s := range latest {
		parts = append(parts, fmt.Sprintf("%s phase=%q node=%q", name, s.Status.Phase, s.Status.NodeName))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, "; ")
}
