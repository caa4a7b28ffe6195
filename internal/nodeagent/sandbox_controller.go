package nodeagent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/source"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/image"
	"github.com/microvm-dev/sandbox-operator/internal/netstack"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
	sandboxv1alpha1ac "github.com/microvm-dev/sandbox-operator/pkg/client/applyconfiguration/api/v1alpha1"
)

const (
	// defaultGrace is the stop grace when spec.stopPolicy has none.
	defaultGrace = 10 * time.Second
	// killMargin is added to the grace before the VMM is killed.
	killMargin = 5 * time.Second
	// pullBackoff and maxPullBackoff bound the retries of a failed pull.
	pullBackoff, maxPullBackoff = time.Second, 5 * time.Minute
	// maxMessage bounds messages written to the status.
	maxMessage = 1024
)

// SandboxReconciler runs the VMs of the Sandboxes placed on this node. It
// owns status.vm, status.imageDigest, the agent's timings and the
// ImageReady and Draining conditions (server-side apply under
// NodeAgentFieldOwner) and the node agent's finalizer.
//
// VMs outlive the agent: each is recorded in a journal in its Sandbox's
// directory (<state-dir>/vms/<uid>/), and an agent that finds a Sandbox
// reported Booting, Running or Draining without a handle re-adopts its VM
// from there (QEMU's pid and start time), reconnects to its guest agent and
// reports nothing new unless the VM died meanwhile (then Crashed).
type SandboxReconciler struct {
	client    client.Client
	apiReader client.Reader
	args      Args
	images    *image.Cache
	vmm       vmm.VMM
	mkfs      string
	initrd    string
	accel     sandboxv1alpha1.Accelerator
	accelErr  string
	tscKHz    int

	// ctx ends when the manager stops; VM watchers run under it.
	ctx    context.Context
	notify chan event.GenericEvent
	wg     sync.WaitGroup

	// hostAddrs are the node's own addresses (the egress policy's group
	// Host); nodeResolvers its nameservers, for sandboxes that name none.
	hostAddrs     []netip.Addr
	nodeResolvers []string
	// egressRoots verify the servers sandboxes send secrets to.
	egressRoots *x509.CertPool
	// recorder records events on Sandboxes (secret violations).
	recorder events.EventRecorder

	mu        sync.Mutex
	sandboxes map[types.UID]*sandboxState
}

// sandboxState is the agent's record of one Sandbox's current run: what it
// reports and the VM it runs.
type sandboxState struct {
	key         types.NamespacedName
	run         int32
	report      report
	lastApplied *report
	handle      *vmHandle
	failures    int // consecutive failed starts (pull, configuration), for the backoff
	// retryAt is when the next start attempt is due after a failure: passes
	// triggered sooner (by status writes) wait instead of pulling again.
	retryAt time.Time
}

// report is the agent-owned part of the status.
type report struct {
	VM          *sandboxv1alpha1.VMStatus
	ImageDigest string
	Timings     sandboxv1alpha1.Timings
	Conditions  []metav1.Condition
	Ports       []sandboxv1alpha1.PortStatus
	Network     *sandboxv1alpha1.NetworkStatus
}

func newSandboxReconciler(ctx context.Context, c client.Client, reader client.Reader, args Args) (*SandboxReconciler, error) {
	r := &SandboxReconciler{
		client: c, apiReader: reader, args: args, ctx: ctx,
		notify:    make(chan event.GenericEvent),
		sandboxes: map[types.UID]*sandboxState{},
		vmm:       vmm.QEMU{}, mkfs: mkfsPath(),
		hostAddrs: netstack.NodeAddrs(), nodeResolvers: nodeResolvers(resolvConf),
	}
	if err := os.MkdirAll(filepath.Join(args.StateDir, "vms"), 0o700); err != nil {
		return nil, fmt.Errorf("failed to create the state directory: %w", err)
	}
	imgDir := args.ImageDir
	if imgDir == "" {
		imgDir = filepath.Join(args.StateDir, "images")
	}
	cache, err := image.New(imgDir)
	if err != nil {
		return nil, err
	}
	r.images = cache
	if r.egressRoots, err = egressRoots(args.EgressCABundle); err != nil {
		return nil, err
	}
	r.initrd, err = prepareInitrd(args)
	if err != nil {
		return nil, err
	}
	host := args.probe()
	r.accel, r.accelErr = host.Accelerator, host.KVMError
	trackMetrics(r)
	if r.accel == sandboxv1alpha1.AcceleratorTCG {
		if r.tscKHz, err = vmm.HostTSCkHz(); err != nil {
			return nil, fmt.Errorf("failed to read the host's TSC frequency for TCG: %w", err)
		}
	}
	return r, nil
}

// SetupWithManager registers the reconciler and a runnable that waits for
// the VM watchers when the manager stops.
func (r *SandboxReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("nodeagent-sandbox").
		For(&sandboxv1alpha1.Sandbox{}).
		WatchesRawSource(source.Channel(r.notify, &handler.EnqueueRequestForObject{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4, SkipNameValidation: ptr.To(true)}).
		Complete(r)
}

// Wait blocks until every VM watcher has returned (after ctx ended).
func (r *SandboxReconciler) Wait() { r.wg.Wait() }

// state returns the record of sbx's current run, seeding a new one from
// the status (what an earlier pass or agent reported).
func (r *SandboxReconciler) state(sbx *sandboxv1alpha1.Sandbox) *sandboxState {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.sandboxes[sbx.UID]
	if st != nil && st.run == sbx.Status.Run {
		return st
	}
	if st != nil && st.handle != nil {
		// An older run's VM still running: it must not outlive its run.
		select {
		case <-st.handle.vm.Done():
		default:
			go st.handle.stop(sandboxv1alpha1.StopKill, 0)
		}
	}
	st = &sandboxState{key: client.ObjectKeyFromObject(sbx), run: sbx.Status.Run}
	if vm := sbx.Status.CurrentVM(); vm != nil {
		st.report.VM = vm.DeepCopy()
		st.report.ImageDigest = sbx.Status.ImageDigest
		if t := sbx.Status.Timings; t != nil {
			st.report.Timings = sandboxv1alpha1.Timings{ImagePulledMillis: t.ImagePulledMillis,
				RootfsReadyMillis: t.RootfsReadyMillis, VMMStartedMillis: t.VMMStartedMillis, GuestReadyMillis: t.GuestReadyMillis}
		}
		for _, c := range sbx.Status.Conditions {
			if c.Type == sandboxv1alpha1.ConditionImageReady || c.Type == sandboxv1alpha1.ConditionDraining {
				st.report.Conditions = append(st.report.Conditions, c)
			}
		}
	} else {
		// A new run keeps the pinned digest: a restart boots the same image.
		st.report.ImageDigest = sbx.Status.ImageDigest
	}
	r.sandboxes[sbx.UID] = st
	return st
}

func (r *SandboxReconciler) runDir(uid types.UID) string {
	return filepath.Join(r.args.StateDir, "vms", string(uid))
}

// Reconcile drives the VM of one Sandbox on this node.
func (r *SandboxReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	sbx := &sandboxv1alpha1.Sandbox{}
	if err := r.client.Get(ctx, req.NamespacedName, sbx); err != nil {
		if apierrors.IsNotFound(err) {
			r.release(ctx, req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if sbx.Status.NodeName != r.args.NodeName {
		r.release(ctx, req.NamespacedName)
		return ctrl.Result{}, nil
	}
	if sbx.Status.Run == 0 {
		return ctrl.Result{}, nil
	}
	log := ctrl.LoggerFrom(ctx).WithValues("Sandbox", klog.KObj(sbx), "run", sbx.Status.Run)
	ctx = ctrl.LoggerInto(ctx, log)
	st := r.state(sbx)

	deleting := !sbx.DeletionTimestamp.IsZero()
	stopWanted := deleting || sbx.Spec.State == sandboxv1alpha1.DesiredStateStopped || sbx.Status.StopRequest != nil
	var res ctrl.Result
	var err error
	switch {
	case st.handle != nil:
		res = r.observe(sbx, st, stopWanted)
	case st.report.VM != nil && isActive(st.report.VM.State):
		// Reported by an earlier agent process: re-adopt its VM.
		r.adopt(ctx, sbx, st)
		if st.handle != nil {
			res = r.observe(sbx, st, stopWanted)
		}
	case stopWanted:
		if st.report.VM == nil || st.report.VM.State != sandboxv1alpha1.VMExited {
			// Stopped before it booted.
			st.report.VM = r.newVM(sbx)
			st.report.VM.State = sandboxv1alpha1.VMExited
			st.report.VM.ExitedAt = ptr.To(metaTime(time.Now()))
			st.report.VM.ExitReason = stopReason(sbx)
		}
	case sbx.Spec.State != sandboxv1alpha1.DesiredStateStopped && (st.report.VM == nil || st.report.VM.State == sandboxv1alpha1.VMPending || st.report.VM.State == sandboxv1alpha1.VMPulling):
		res, err = r.start(ctx, sbx, st)
	}
	if aerr := r.apply(ctx, sbx, st); aerr != nil {
		return ctrl.Result{}, errors.Join(err, aerr)
	}
	if err != nil {
		return res, err
	}
	if deleting && (st.handle == nil || !st.handle.snapshot().exitedAt.IsZero()) {
		return r.finalize(ctx, sbx)
	}
	return res, nil
}

func isActive(s sandboxv1alpha1.VMState) bool {
	return s == sandboxv1alpha1.VMBooting || s == sandboxv1alpha1.VMRunning || s == sandboxv1alpha1.VMDraining
}

// stopReason is the exit reason of a requested stop.
func stopReason(sbx *sandboxv1alpha1.Sandbox) sandboxv1alpha1.TerminationReason {
	if sr := sbx.Status.StopRequest; sr != nil && sr.Reason != "" {
		return sr.Reason
	}
	if sbx.Spec.StopPolicy.Mode == sandboxv1alpha1.StopDrain {
		return sandboxv1alpha1.TerminationDrainRequested
	}
	return sandboxv1alpha1.TerminationShutdownRequested
}

func (r *SandboxReconciler) newVM(sbx *sandboxv1alpha1.Sandbox) *sandboxv1alpha1.VMStatus {
	return &sandboxv1alpha1.VMStatus{Run: sbx.Status.Run, NodeName: r.args.NodeName, State: sandboxv1alpha1.VMPending}
}

func setCond(st *sandboxState, sbx *sandboxv1alpha1.Sandbox, t string, s metav1.ConditionStatus, reason, msg string) {
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	meta.SetStatusCondition(&st.report.Conditions, metav1.Condition{
		Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: sbx.Generation,
	})
}

// observe folds the VM's progress into the report and starts a stop when
// one is wanted (by the spec, the manager or the idle timeout). The result
// asks for the next idle check.
func (r *SandboxReconciler) observe(sbx *sandboxv1alpha1.Sandbox, st *sandboxState, stopWanted bool) ctrl.Result {
	h := st.handle
	snap := h.snapshot()
	vm := st.report.VM
	if !snap.bootedAt.IsZero() && vm.BootedAt == nil {
		vm.BootedAt = ptr.To(metaTime(snap.bootedAt))
		st.report.Timings.GuestReadyMillis = ptr.To(snap.bootedAt.Sub(h.start).Milliseconds())
		if vm.State == sandboxv1alpha1.VMBooting {
			vm.State = sandboxv1alpha1.VMRunning
		}
	}
	observeNetwork(sbx, st, h, snap.exitedAt.IsZero())
	if !snap.exitedAt.IsZero() {
		if vm.State == sandboxv1alpha1.VMExited {
			return ctrl.Result{}
		}
		vm.State = sandboxv1alpha1.VMExited
		vm.ExitedAt = ptr.To(metaTime(snap.exitedAt))
		vm.ExitCode = snap.exitCode
		if snap.mainExit != nil {
			// The exit code is the main process's, not QEMU's.
			vm.ExitCode = ptrInt32(mainExitCode(*snap.mainExit))
		}
		if snap.stopAsked {
			vm.ExitReason = snap.stopWhy
			if snap.stopWhy == sandboxv1alpha1.TerminationFailed && snap.mainExit != nil {
				vm.Message = mainExitMessage(*snap.mainExit, snap.mainError)
				if len(vm.Message) > maxMessage {
					vm.Message = vm.Message[:maxMessage]
				}
			}
			setCond(st, sbx, sandboxv1alpha1.ConditionDraining, metav1.ConditionFalse, sandboxv1alpha1.ReasonNotDraining, "The VM exited")
		} else {
			vm.ExitReason = sandboxv1alpha1.TerminationInternalError
			msg := "The VMM exited unexpectedly"
			if snap.exitCode != nil {
				msg += fmt.Sprintf(" (exit status %d)", *snap.exitCode)
			}
			if h.adopted {
				msg = "The VMM exited unexpectedly (re-adopted after a node agent restart; exit status unknown)"
			}
			if snap.failure != "" {
				msg += " (" + snap.failure + ")"
			}
			msg += consoleSuffix(h.vm.Paths())
			if len(msg) > 4000 {
				msg = msg[len(msg)-4000:]
			}
			vm.Message = msg
		}
		return ctrl.Result{}
	}
	why := stopReason(sbx)
	var res ctrl.Result
	if !stopWanted && !snap.stopAsked && h.idleTimeout > 0 && vm.State == sandboxv1alpha1.VMRunning {
		idle := time.Since(snap.lastActivity)
		if gc := h.Guest(); gc != nil && gc.ActiveSessions() > 0 {
			// Sessions open on this side count even while heartbeats are
			// not read (a slow client stalls the connection's reader).
			idle = 0
		}
		if idle >= h.idleTimeout {
			stopWanted, why = true, sandboxv1alpha1.TerminationIdleTimeout
		} else {
			res.RequeueAfter = h.idleTimeout - idle
		}
	}
	if !stopWanted && !snap.stopAsked && h.violated.Load() {
		stopWanted, why = true, sandboxv1alpha1.TerminationPolicyViolation
	}
	if stopWanted && !snap.stopAsked {
		h.mu.Lock()
		h.stopAsked, h.stopWhy = true, why
		h.mu.Unlock()
		vm.State = sandboxv1alpha1.VMDraining
		condReason := sandboxv1alpha1.ReasonShutdownRequested
		switch why {
		case sandboxv1alpha1.TerminationDrainRequested:
			condReason = sandboxv1alpha1.ReasonDrainRequested
		case sandboxv1alpha1.TerminationIdleTimeout:
			condReason = sandboxv1alpha1.ReasonIdleTimeout
		}
		setCond(st, sbx, sandboxv1alpha1.ConditionDraining, metav1.ConditionTrue, condReason, "Stopping the VM: "+string(why))
		grace := defaultGrace
		if g := sbx.Spec.StopPolicy.GracePeriodSeconds; g != nil {
			grace = time.Duration(*g) * time.Second
		}
		go h.stop(sbx.Spec.StopPolicy.Mode, grace)
	}
	return res
}

// start pulls the image and boots the VM of the current run.
func (r *SandboxReconciler) start(ctx context.Context, sbx *sandboxv1alpha1.Sandbox, st *sandboxState) (ctrl.Result, error) {
	if st.report.VM == nil || st.report.VM.State != sandboxv1alpha1.VMPulling {
		st.report.VM = r.newVM(sbx)
		st.report.VM.State = sandboxv1alpha1.VMPulling
		if meta.FindStatusCondition(st.report.Conditions, sandboxv1alpha1.ConditionImageReady) == nil {
			setCond(st, sbx, sandboxv1alpha1.ConditionImageReady, metav1.ConditionUnknown, sandboxv1alpha1.ReasonImagePulling, "Pulling "+sbx.Spec.Image)
		}
		setCond(st, sbx, sandboxv1alpha1.ConditionDraining, metav1.ConditionFalse, sandboxv1alpha1.ReasonNotDraining, "")
		if err := r.apply(ctx, sbx, st); err != nil {
			return ctrl.Result{}, err
		}
	}
	if wait := time.Until(st.retryAt); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}

	pulled := time.Now()
	objs := &namespaceObjects{ctx: ctx, reader: r.apiReader, namespace: sbx.Namespace}
	opts, notes, err := pullOptions(sbx, objs)
	if err == nil {
		var img image.Image
		progress, done := r.pullProgress(ctx, sbx, st)
		img, err = r.images.Ensure(ctx, sbx.Spec.Image, opts, progress)
		done()
		if err == nil {
			return r.boot(ctx, sbx, st, img, objs, pulled)
		}
	}
	msg := err.Error()
	for _, n := range notes {
		msg += "; " + n
	}
	setCond(st, sbx, sandboxv1alpha1.ConditionImageReady, metav1.ConditionFalse, sandboxv1alpha1.ReasonErrImagePull, msg)
	// Also the VM's message, which the manager's Ready condition carries.
	st.report.VM.Message = trim("Failed to pull the image: " + msg)
	return r.retryLater(ctx, st, "Failed to pull the image", err), nil
}

// retryLater records a failed start and when to try again: 1 s, doubling
// up to maxPullBackoff.
func (r *SandboxReconciler) retryLater(ctx context.Context, st *sandboxState, what string, err error) ctrl.Result {
	st.failures++
	backoff := min(pullBackoff<<min(st.failures-1, 20), maxPullBackoff)
	st.retryAt = time.Now().Add(backoff)
	ctrl.LoggerFrom(ctx).Info(what, "error", err.Error(), "retryAfter", backoff)
	return ctrl.Result{RequeueAfter: backoff}
}

// pullProgressEvery is how often a long pull's progress is written to the
// ImageReady condition.
const pullProgressEvery = 2 * time.Second

// pullProgress returns a progress callback for a pull that writes the
// bytes done and total into the ImageReady condition's message at most
// every pullProgressEvery, and a function that ends it (the reconcile then
// owns st again: the callback may run on the pull's goroutine).
func (r *SandboxReconciler) pullProgress(ctx context.Context, sbx *sandboxv1alpha1.Sandbox, st *sandboxState) (image.ProgressFunc, func()) {
	var mu sync.Mutex
	ended := false
	last := time.Now()
	report := func(done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		if ended || time.Since(last) < pullProgressEvery {
			return
		}
		last = time.Now()
		setCond(st, sbx, sandboxv1alpha1.ConditionImageReady, metav1.ConditionUnknown, sandboxv1alpha1.ReasonImagePulling,
			fmt.Sprintf("Pulling %s: %.1f of %.1f MiB", sbx.Spec.Image, float64(done)/(1<<20), float64(total)/(1<<20)))
		if err := r.apply(ctx, sbx, st); err != nil {
			ctrl.LoggerFrom(ctx).V(4).Info("Failed to report pull progress", "error", err.Error())
		}
	}
	return report, func() {
		mu.Lock()
		ended = true
		mu.Unlock()
	}
}

// boot prepares the guest's configuration and disks and starts the VM.
func (r *SandboxReconciler) boot(ctx context.Context, sbx *sandboxv1alpha1.Sandbox, st *sandboxState, img image.Image, objs objects, pulled time.Time) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	st.report.ImageDigest = img.Digest
	st.report.Timings.ImagePulledMillis = ptr.To(time.Since(pulled).Milliseconds())
	setCond(st, sbx, sandboxv1alpha1.ConditionImageReady, metav1.ConditionTrue, sandboxv1alpha1.ReasonImagePulled, "Image "+img.Digest)

	fail := func(msg string) (ctrl.Result, error) {
		st.report.VM.State = sandboxv1alpha1.VMExited
		st.report.VM.ExitedAt = ptr.To(metaTime(time.Now()))
		st.report.VM.ExitReason = sandboxv1alpha1.TerminationInternalError
		if len(msg) > maxMessage {
			msg = msg[:maxMessage]
		}
		st.report.VM.Message = msg
		return ctrl.Result{}, nil
	}
	if r.accel == "" {
		return fail("No accelerator on this node: " + r.accelErr)
	}

	prepared := time.Now()
	plan, err := planGuest(sbx, img.Config, objs)
	switch {
	case errors.Is(err, errUnsupported):
		return fail(err.Error())
	case err != nil:
		// A missing Secret, ConfigMap or key may appear: retried, and
		// shown while the sandbox waits in Starting.
		st.report.VM.Message = trim("Waiting for the sandbox's configuration: " + err.Error())
		return r.retryLater(ctx, st, "Failed to resolve the sandbox's configuration", err), nil
	}
	st.failures, st.retryAt = 0, time.Time{}
	st.report.VM.Message = ""
	dir := r.runDir(sbx.UID)
	if err := clearRunFiles(dir); err != nil {
		return fail(err.Error())
	}
	disks, err := ensureDisks(ctx, r.mkfs, dir, plan)
	if err != nil {
		return fail("Failed to prepare the writable disks: " + err.Error())
	}
	st.report.Timings.RootfsReadyMillis = ptr.To(time.Since(prepared).Milliseconds())
	cfg := vmm.Config{
		Kernel: r.args.KernelPath, Initrd: r.initrd,
		CPUs: int(sbx.Spec.Resources.CPUs), MemoryMiB: int(sbx.Spec.Resources.MemoryMiB),
		Accel: vmm.Accel(r.accel), TSCkHz: r.tscKHz, RunDir: dir,
		RootDisk: img.RootfsPath, Disks: disks, Binary: r.args.QEMUBinary, CgroupParent: r.args.CgroupParent,
	}
	if networkEnabled(sbx) {
		plan.start.Network = netstack.GuestNetwork()
		cfg.Network = vmNetworkDevice()
	}
	if hasSecrets(sbx) {
		_, env, err := planSecrets(sbx, objs)
		if err != nil {
			st.report.VM.Message = trim("Waiting for the sandbox's network secrets: " + err.Error())
			return r.retryLater(ctx, st, "Failed to resolve the sandbox's network secrets", err), nil
		}
		ca, err := egressCA(dir, true)
		if err != nil {
			return fail(err.Error())
		}
		plan.start.Env = withEnv(plan.start.Env, env)
		plan.start.Patches = append(plan.start.Patches, trustPatches(ca)...)
	}
	if plan.upperMiB > 0 {
		cfg.KernelArgs = append(cfg.KernelArgs, "sandbox.upper="+upperSerial)
	} else {
		cfg.KernelArgs = append(cfg.KernelArgs, fmt.Sprintf("sandbox.upper_mib=%d", plan.upperTmpfsMiB))
	}
	started := time.Now()
	vm, err := r.vmm.Start(r.ctx, cfg)
	if err != nil {
		return fail("Failed to start the VMM: " + err.Error())
	}
	st.report.Timings.VMMStartedMillis = ptr.To(time.Since(started).Milliseconds())
	j := journal{Namespace: sbx.Namespace, Name: sbx.Name, UID: sbx.UID, Run: sbx.Status.Run, Started: started,
		Accelerator: r.accel, GraceSeconds: int64(graceOf(sbx) / time.Second)}
	if lc := sbx.Spec.Lifecycle; lc != nil && lc.IdleTimeoutSeconds != nil {
		j.IdleTimeoutSeconds = *lc.IdleTimeoutSeconds
	}
	if err := writeJournal(dir, j); err != nil {
		_ = vm.Kill(context.Background())
		return fail(err.Error())
	}
	h := r.newHandle(j, vm, dir)
	h.config = &plan.start
	if networkEnabled(sbx) {
		if err := r.startNetwork(log, sbx, h, objs); err != nil {
			_ = vm.Kill(context.Background())
			return fail("Failed to start the sandbox's network: " + err.Error())
		}
	}
	r.attachLog(ctx, h, fmt.Sprintf("run %d: VM started (pid %d)", j.Run, h.pid))
	st.handle = h
	st.report.VM.State = sandboxv1alpha1.VMBooting
	st.report.VM.PID = h.pid
	st.report.VM.Accelerator = r.accel
	log.Info("Started the VM", "pid", h.pid, "accelerator", r.accel, "image", img.Digest)
	r.wg.Go(func() { h.watch(r.ctx, r.notify) })
	return ctrl.Result{}, nil
}

// newHandle makes the handle of a VM from its journal.
func (r *SandboxReconciler) newHandle(j journal, vm vmm.VM, dir string) *vmHandle {
	return &vmHandle{
		key: types.NamespacedName{Namespace: j.Namespace, Name: j.Name}, run: j.Run,
		vm: vm, runDir: dir, accel: j.Accelerator, pid: int32(vm.Process().PID), start: j.Started,
		grace: time.Duration(j.GraceSeconds) * time.Second, idleTimeout: time.Duration(j.IdleTimeoutSeconds) * time.Second,
	}
}

// adopt takes over the VM of the current run that an earlier agent process
// started, from its journal. A VM that is gone is reported Exited: the
// sandbox is Crashed (it cannot have ended cleanly without this agent).
func (r *SandboxReconciler) adopt(ctx context.Context, sbx *sandboxv1alpha1.Sandbox, st *sandboxState) {
	log := ctrl.LoggerFrom(ctx)
	dir := r.runDir(sbx.UID)
	j, err := readJournal(dir)
	if err == nil && (j.UID != sbx.UID || j.Run != sbx.Status.Run) {
		err = fmt.Errorf("the journal is of run %d, the sandbox is at run %d", j.Run, sbx.Status.Run)
	}
	var vm vmm.VM
	if err == nil {
		vm, err = r.vmm.Adopt(dir)
	}
	if err != nil {
		vmStatus := st.report.VM
		wasDraining := vmStatus.State == sandboxv1alpha1.VMDraining
		vmStatus.State = sandboxv1alpha1.VMExited
		vmStatus.ExitedAt = ptr.To(metaTime(time.Now()))
		if wasDraining {
			vmStatus.ExitReason = stopReason(sbx)
		} else {
			vmStatus.ExitReason = sandboxv1alpha1.TerminationInternalError
			vmStatus.Message = trim("The VM ended while the node agent was not running (" + err.Error() + ")" + consoleSuffix(vmm.PathsIn(dir)))
		}
		log.Info("VM of an earlier agent process is gone", "reason", err.Error())
		return
	}
	h := r.newHandle(j, vm, dir)
	h.adopted = true
	if networkEnabled(sbx) {
		// A new stack with the same addresses: the guest's network
		// carries on (flows open across the restart are reset).
		objs := &namespaceObjects{ctx: ctx, reader: r.apiReader, namespace: sbx.Namespace}
		if err := r.startNetwork(log, sbx, h, objs); err != nil {
			log.Error(err, "Failed to restart the sandbox's network; the VM runs without it")
		}
	}
	r.attachLog(ctx, h, fmt.Sprintf("run %d: VM re-adopted after a node agent restart (pid %d)", j.Run, h.pid))
	if vmStatus := st.report.VM; vmStatus.State == sandboxv1alpha1.VMDraining {
		// The earlier agent was stopping it: finish the stop.
		h.stopAsked, h.stopWhy = true, stopReason(sbx)
		go h.stop(sbx.Spec.StopPolicy.Mode, graceOf(sbx))
	}
	st.handle = h
	log.Info("Re-adopted the VM of an earlier agent process", "pid", h.pid)
	r.wg.Go(func() { h.watch(r.ctx, r.notify) })
}

// graceOf is the stop grace of sbx.
func graceOf(sbx *sandboxv1alpha1.Sandbox) time.Duration {
	if g := sbx.Spec.StopPolicy.GracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return defaultGrace
}

func trim(msg string) string {
	if len(msg) > maxMessage {
		return msg[:maxMessage]
	}
	return msg
}

// clearRunFiles removes what an earlier run left in dir (sockets, console
// log, process record, journal) and keeps the disks, which outlive runs.
func clearRunFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if filepath.Ext(e.Name()) == ".ext4" || e.Name() == logsDir {
			continue // disks and logs outlive runs
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// apply writes the report when it changed since the last write.
func (r *SandboxReconciler) apply(ctx context.Context, sbx *sandboxv1alpha1.Sandbox, st *sandboxState) error {
	if st.lastApplied != nil && apiequality.Semantic.DeepEqual(*st.lastApplied, st.report) {
		return nil
	}
	rep := st.report
	status := sandboxv1alpha1ac.SandboxStatus()
	if vm := rep.VM; vm != nil {
		ac := sandboxv1alpha1ac.VMStatus().WithRun(vm.Run).WithNodeName(vm.NodeName).WithState(vm.State)
		if vm.PID != 0 {
			ac.WithPID(vm.PID)
		}
		if vm.Accelerator != "" {
			ac.WithAccelerator(vm.Accelerator)
		}
		if vm.BootedAt != nil {
			ac.WithBootedAt(*vm.BootedAt)
		}
		if vm.ExitedAt != nil {
			ac.WithExitedAt(*vm.ExitedAt)
		}
		if vm.ExitCode != nil {
			ac.WithExitCode(*vm.ExitCode)
		}
		if vm.ExitReason != "" {
			ac.WithExitReason(vm.ExitReason)
		}
		if vm.Message != "" {
			ac.WithMessage(vm.Message)
		}
		status.WithVM(ac)
	}
	if rep.ImageDigest != "" {
		status.WithImageDigest(rep.ImageDigest)
	}
	t := rep.Timings
	if t.ImagePulledMillis != nil || t.VMMStartedMillis != nil || t.GuestReadyMillis != nil || t.RootfsReadyMillis != nil {
		tac := sandboxv1alpha1ac.Timings()
		if t.ImagePulledMillis != nil {
			tac.WithImagePulledMillis(*t.ImagePulledMillis)
		}
		if t.RootfsReadyMillis != nil {
			tac.WithRootfsReadyMillis(*t.RootfsReadyMillis)
		}
		if t.VMMStartedMillis != nil {
			tac.WithVMMStartedMillis(*t.VMMStartedMillis)
		}
		if t.GuestReadyMillis != nil {
			tac.WithGuestReadyMillis(*t.GuestReadyMillis)
		}
		status.WithTimings(tac)
	}
	for _, c := range rep.Conditions {
		status.WithConditions(metav1ac.Condition().WithType(c.Type).WithStatus(c.Status).WithReason(c.Reason).
			WithMessage(c.Message).WithLastTransitionTime(c.LastTransitionTime).WithObservedGeneration(c.ObservedGeneration))
	}
	for _, p := range rep.Ports {
		status.WithPorts(sandboxv1alpha1ac.PortStatus().WithGuestPort(p.GuestPort).WithProtocol(p.Protocol).
			WithHostIP(p.HostIP).WithHostPort(p.HostPort))
	}
	if n := rep.Network; n != nil {
		nac := sandboxv1alpha1ac.NetworkStatus().WithDeniedTotal(n.DeniedTotal)
		for _, d := range n.RecentDenials {
			nac.WithRecentDenials(sandboxv1alpha1ac.NetworkDenial().WithTime(d.Time).WithProtocol(d.Protocol).
				WithDestination(d.Destination).WithNames(d.Names...).WithClass(d.Class).WithReason(d.Reason))
		}
		status.WithNetwork(nac)
	}
	ac := sandboxv1alpha1ac.Sandbox(sbx.Name, sbx.Namespace).WithStatus(status)
	if err := r.client.Status().Apply(ctx, ac, client.FieldOwner(sandboxv1alpha1.NodeAgentFieldOwner), client.ForceOwnership); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("failed to apply the status of Sandbox %s: %w", klog.KObj(sbx), err)
	}
	cp := report{ImageDigest: rep.ImageDigest, Timings: *rep.Timings.DeepCopy(), Ports: slices.Clone(rep.Ports),
		Network: rep.Network.DeepCopy()}
	if rep.VM != nil {
		cp.VM = rep.VM.DeepCopy()
	}
	for _, c := range rep.Conditions {
		cp.Conditions = append(cp.Conditions, *c.DeepCopy())
	}
	st.lastApplied = &cp
	return nil
}

// finalize removes the run directory of a deleted Sandbox whose VM is gone,
// then the node agent's finalizer.
func (r *SandboxReconciler) finalize(ctx context.Context, sbx *sandboxv1alpha1.Sandbox) (ctrl.Result, error) {
	if err := os.RemoveAll(r.runDir(sbx.UID)); err != nil {
		return ctrl.Result{}, fmt.Errorf("failed to remove the run directory of Sandbox %s: %w", klog.KObj(sbx), err)
	}
	cur := &sandboxv1alpha1.Sandbox{}
	if err := r.apiReader.Get(ctx, client.ObjectKeyFromObject(sbx), cur); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !controllerutil.ContainsFinalizer(cur, sandboxv1alpha1.NodeAgentFinalizer) {
		return ctrl.Result{}, nil
	}
	base := cur.DeepCopy()
	controllerutil.RemoveFinalizer(cur, sandboxv1alpha1.NodeAgentFinalizer)
	if err := r.client.Patch(ctx, cur, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsConflict(err) {
			return ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	ctrl.LoggerFrom(ctx).Info("VM gone; released the node agent's finalizer")
	return ctrl.Result{}, nil
}
