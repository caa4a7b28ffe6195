//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/tools/cache"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
	"github.com/microvm-dev/sandbox-operator/pkg/client/informers/externalversions"
)

// agentProcess is bin/node-agent for one node, run with the VM runtime: its
// VMs' run directories are <stateDir>/vms/<sandbox uid>/.
type agentProcess struct {
	*process
	node     string
	stateDir string
}

// runDir is the run directory of a Sandbox's VM on this agent's node.
func (a *agentProcess) runDir(uid types.UID) string {
	return filepath.Join(a.stateDir, "vms", string(uid))
}

// console returns the VM console of a Sandbox on this node: the guest
// kernel's messages, sandbox-init's ("sandbox-init: ...") and the main
// process's stdout and stderr. (Reading the file on the node stands in for
// the logs API, which comes in a later issue.)
func (a *agentProcess) console(uid types.UID) string {
	b, err := os.ReadFile(filepath.Join(a.runDir(uid), vmm.ConsoleLogFile))
	if err != nil {
		return fmt.Sprintf("(no console: %v)", err)
	}
	return string(b)
}

// logContains reports whether the process's log has a line holding all of
// subs.
func (m *process) logContains(subs ...string) bool {
	b, err := os.ReadFile(m.logPath)
	if err != nil {
		return false
	}
lines:
	for line := range strings.SplitSeq(string(b), "\n") {
		for _, s := range subs {
			if !strings.Contains(line, s) {
				continue lines
			}
		}
		return true
	}
	return false
}

// processAlive reports whether pid runs; a zombie (exited, not yet reaped
// by whoever inherited it) counts as gone.
func processAlive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || !bytes.HasPrefix(bytes.TrimSpace(b[i+1:]), []byte("Z"))
}

// processesMentioning returns the live processes whose command line
// contains s (e.g. a state directory: each QEMU's names its run directory).
func processesMentioning(s string) []string {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(s)) || !processAlive(pid) {
			continue
		}
		out = append(out, fmt.Sprintf("%d: %s", pid, strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " ")))
	}
	return out
}

// isQEMU reports whether pid is a live QEMU (so that the test never
// signals an unrelated process through a stale pid).
func isQEMU(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return err == nil && processAlive(pid) && bytes.Contains(b, []byte("qemu-system"))
}

// killLeftoverVMs kills every VM whose process record is under stateDir
// and still names the same process (pid and start time), and any other
// live process whose command line mentions stateDir: nothing a failed run
// started may outlive the suite.
func killLeftoverVMs(stateDir string) {
	files, _ := filepath.Glob(filepath.Join(stateDir, "vms", "*", vmm.ProcessFile))
	for _, f := range files {
		rec, err := vmm.ReadProcess(f)
		if err != nil {
			continue
		}
		if alive, err := rec.Alive(); err == nil && alive {
			fmt.Fprintf(GinkgoWriter, "killing leftover VMM %d (%s)\n", rec.PID, f)
			_ = syscall.Kill(rec.PID, syscall.SIGKILL)
		}
	}
	for _, p := range processesMentioning(stateDir) {
		pid, err := strconv.Atoi(strings.SplitN(p, ":", 2)[0])
		if err == nil && isQEMU(pid) {
			fmt.Fprintf(GinkgoWriter, "killing leftover QEMU %s\n", p)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// markerFields parses the first console line that starts with prefix and
// holds space-separated key=value pairs (values without spaces), e.g.
// "E2E user=1000:1000 host=e2e-probe". ok is false when there is none.
func markerFields(console, prefix string) (fields map[string]string, ok bool) {
	for line := range strings.SplitSeq(console, "\n") {
		line = strings.TrimRight(line, "\r")
		rest, found := strings.CutPrefix(line, prefix+" ")
		if !found {
			continue
		}
		fields = map[string]string{}
		for _, kv := range strings.Fields(rest) {
			k, v, _ := strings.Cut(kv, "=")
			fields[k] = v
		}
		return fields, true
	}
	return nil, false
}

// observation is one state of a Sandbox as the informer delivered it.
type observation struct {
	at      time.Time
	event   string // ADDED, MODIFIED, DELETED
	sandbox *sandboxv1alpha1.Sandbox
}

func (o observation) String() string {
	s := o.sandbox
	vmState, pid := "", int32(0)
	if vm := s.Status.VM; vm != nil {
		vmState, pid = string(vm.State), vm.PID
	}
	ready := meta.FindStatusCondition(s.Status.Conditions, sandboxv1alpha1.ConditionReady)
	readyReason := ""
	if ready != nil {
		readyReason = ready.Reason
	}
	return fmt.Sprintf("%s %-8s run=%d phase=%s vm=%s pid=%d node=%s reason=%s ready=%s",
		o.at.Format("15:04:05.000"), o.event, s.Status.Run, s.Status.Phase, vmState, pid, s.Status.NodeName,
		s.Status.TerminationReason, readyReason)
}

// sandboxWatch records every state of the Sandboxes of one namespace that
// the generated informers (pkg/client/informers) deliver, with the time it
// arrived: the specs assert on what a client watching the API sees.
type sandboxWatch struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	seen map[string][]observation
}

// startSandboxWatch starts a SharedInformerFactory on namespace and waits
// for its cache to sync.
func startSandboxWatch(namespace string) *sandboxWatch {
	GinkgoHelper()
	w := &sandboxWatch{seen: map[string][]observation{}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	factory := externalversions.NewSharedInformerFactoryWithOptions(sbxClientset, 0, externalversions.WithNamespace(namespace))
	inf := factory.Sandbox().V1alpha1().Sandboxes().TypedInformer()
	_, err := inf.AddTypedEventHandler(cache.TypedResourceEventHandlerFuncs[*sandboxv1alpha1.Sandbox]{
		AddFunc:    func(s *sandboxv1alpha1.Sandbox) { w.record("ADDED", s) },
		UpdateFunc: func(_, s *sandboxv1alpha1.Sandbox) { w.record("MODIFIED", s) },
		DeleteFunc: func(d cache.DeletedObject[*sandboxv1alpha1.Sandbox]) {
			s := d.OptionalObj
			if s == nil { // the watch missed the final state
				s = &sandboxv1alpha1.Sandbox{}
				s.Name, s.Namespace = d.GetName(), d.GetNamespace()
			}
			w.record("DELETED", s)
		},
	})
	Expect(err).NotTo(HaveOccurred())
	factory.StartWithContext(ctx)
	go func() {
		<-ctx.Done()
		factory.Shutdown()
		close(w.done)
	}()
	synced := factory.WaitForCacheSyncWithContext(ctx)
	Expect(synced.Err).NotTo(HaveOccurred())
	return w
}

func (w *sandboxWatch) record(event string, s *sandboxv1alpha1.Sandbox) {
	o := observation{at: time.Now(), event: event, sandbox: s.DeepCopy()}
	w.mu.Lock()
	w.seen[s.Name] = append(w.seen[s.Name], o)
	w.mu.Unlock()
	fmt.Fprintf(GinkgoWriter, "watch: %s %s\n", s.Name, o)
}

func (w *sandboxWatch) stop() {
	if w == nil {
		return
	}
	w.cancel()
	<-w.done
}

// history returns what was seen of name, oldest first.
func (w *sandboxWatch) history(name string) []observation {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]observation(nil), w.seen[name]...)
}

// since returns what was seen of name at or after t.
func (w *sandboxWatch) since(name string, t time.Time) []observation {
	var out []observation
	for _, o := range w.history(name) {
		if !o.at.Before(t) {
			out = append(out, o)
		}
	}
	return out
}

// latest returns the last state seen of name (nil if none, or deleted).
func (w *sandboxWatch) latest(name string) *sandboxv1alpha1.Sandbox {
	h := w.history(name)
	if len(h) == 0 || h[len(h)-1].event == "DELETED" {
		return nil
	}
	return h[len(h)-1].sandbox
}

// describe renders the history of name for failure messages.
func (w *sandboxWatch) describe(name string) string {
	var b strings.Builder
	for _, o := range w.history(name) {
		fmt.Fprintf(&b, "  %s\n", o)
	}
	if b.Len() == 0 {
		return "  (nothing seen)\n"
	}
	return b.String()
}

// waitFor waits until the watch delivered a state of name that satisfies
// ok (seen at or after since), and returns it with its arrival time.
func (w *sandboxWatch) waitFor(name string, since time.Time, timeout time.Duration, what string,
	ok func(*sandboxv1alpha1.Sandbox) bool) observation {
	GinkgoHelper()
	var found observation
	Eventually(func() bool {
		for _, o := range w.since(name, since) {
			if ok(o.sandbox) {
				found = o
				return true
			}
		}
		return false
	}).WithTimeout(timeout).WithPolling(20*time.Millisecond).Should(BeTrue(),
		"the watch did not see %s %s within %s; it saw:\n%s", name, what, timeout, w.describe(name))
	return found
}

// waitPhase waits for the watch to deliver name in phase (at or after since).
func (w *sandboxWatch) waitPhase(name string, phase sandboxv1alpha1.SandboxPhase, since time.Time, timeout time.Duration) observation {
	GinkgoHelper()
	return w.waitFor(name, since, timeout, "in phase "+string(phase), func(s *sandboxv1alpha1.Sandbox) bool {
		return s.Status.Phase == phase
	})
}

// phases returns the distinct phases of obs in order (repeats collapsed).
func phases(obs []observation) []sandboxv1alpha1.SandboxPhase {
	var out []sandboxv1alpha1.SandboxPhase
	for _, o := range obs {
		if p := o.sandbox.Status.Phase; len(out) == 0 || out[len(out)-1] != p {
			out = append(out, p)
		}
	}
	return out
}

// vmDirs lists the run directories under an agent's state directory.
func vmDirs(stateDir string) []string {
	entries, err := os.ReadDir(filepath.Join(stateDir, "vms"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return []string{err.Error()}
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// dirListing lists the files of dir, for failure messages.
func dirListing(dir string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

// leftoverRun is a run directory the test makes under an agent's state
// directory for a Sandbox that does not exist: what a Sandbox that left the
// node while its agent was down leaves behind. When it has a stand-in VM,
// that is a `sleep` the test started, recorded in process.json as the
// agent records a VMM (pid and start time).
type leftoverRun struct {
	dir string
	// vm is the stand-in VM (nil for a run that has none).
	vm *exec.Cmd
	// exited is closed once vm has exited and was reaped.
	exited chan struct{}
}

// makeLeftoverRun creates <stateDir>/vms/<a new uid>/. With a journal, the
// journal names Sandbox namespace/name with that uid (run 1), and a stand-in
// VM runs; without, the directory (and a disk file in it) is made age old,
// as one of a start that never got its VM going.
func makeLeftoverRun(stateDir, namespace, name string, withJournal bool, age time.Duration) *leftoverRun {
	GinkgoHelper()
	uid := uuid.NewUUID()
	l := &leftoverRun{dir: filepath.Join(stateDir, "vms", string(uid))}
	Expect(os.MkdirAll(l.dir, 0o700)).To(Succeed())
	Expect(os.WriteFile(filepath.Join(l.dir, "upper.ext4"), []byte("not a disk"), 0o600)).To(Succeed())
	if withJournal {
		l.vm = exec.Command("sleep", "600")
		Expect(l.vm.Start()).To(Succeed())
		l.exited = make(chan struct{})
		go func() {
			_ = l.vm.Wait()
			close(l.exited)
		}()
		pid := l.vm.Process.Pid
		start, err := vmm.ProcessStartTime("/proc", pid)
		Expect(err).NotTo(HaveOccurred())
		Expect(vmm.WriteProcess(filepath.Join(l.dir, vmm.ProcessFile), vmm.Process{PID: pid, StartTime: start})).To(Succeed())
		journal := fmt.Sprintf(`{"namespace":%q,"name":%q,"uid":%q,"run":1,"started":%q,"accelerator":"tcg","graceSeconds":30}`,
			namespace, name, uid, time.Now().UTC().Format(time.RFC3339))
		Expect(os.WriteFile(filepath.Join(l.dir, "journal.json"), []byte(journal), 0o600)).To(Succeed())
	}
	if age > 0 {
		old := time.Now().Add(-age)
		Expect(os.Chtimes(l.dir, old, old)).To(Succeed())
	}
	return l
}

// pid is the stand-in VM's pid (0 if none).
func (l *leftoverRun) pid() int {
	if l.vm == nil {
		return 0
	}
	return l.vm.Process.Pid
}

// killedBySIGKILL reports whether the stand-in VM has exited on SIGKILL.
func (l *leftoverRun) killedBySIGKILL() bool {
	select {
	case <-l.exited:
	default:
		return false
	}
	ws, ok := l.vm.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// cleanup kills the stand-in VM if it still runs and removes the directory
// (what the agent should have done), so that a failure here does not show
// up again in the later specs.
func (l *leftoverRun) cleanup() {
	if l.vm != nil {
		select {
		case <-l.exited:
		default:
			_ = l.vm.Process.Kill()
			<-l.exited
		}
	}
	_ = os.RemoveAll(l.dir)
}
