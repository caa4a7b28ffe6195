package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/placement"
)

// defaultWorkers is the default number of concurrent reconciles: a pass
// mostly waits for one or two API writes (~20 ms each on a small control
// plane), so more workers than cores pay off.
const defaultWorkers = 8

// staleCacheRetry is how soon a pass that read a stale copy from the cache
// (its write failed with a conflict) is retried: the cache is usually a few
// milliseconds behind.
const staleCacheRetry = 100 * time.Millisecond

// nodeNameIndex indexes Sandboxes by status.nodeName ("" for unplaced ones),
// so that a SandboxNode or Lease event finds the sandboxes it concerns.
const nodeNameIndex = "status.nodeName"

var (
	errNilAssumer  = errors.New("SandboxReconciler.Assumer must not be nil")
	errNilRecorder = errors.New("SandboxReconciler.Recorder must not be nil")
)

// SandboxReconciler is the manager's controller for Sandboxes: it places
// them on SandboxNodes and drives their lifecycle (deadlines, restarts,
// node loss, ephemeral deletion, finalizers). It writes only the status
// fields it owns, with server-side apply (see SandboxStatus).
type SandboxReconciler struct {
	client.Client
	Recorder events.EventRecorder
	Assumer  *placement.Assumer

	// LeaseNamespace holds the node agents' Leases (one per node, named
	// after it).
	LeaseNamespace string
	// NodeLostGrace is how long past its Lease's expiry a node counts as
	// lost: its sandboxes crash with NodeLost and their finalizers are
	// released without the agent.
	NodeLostGrace time.Duration
	// RestartBackoff is the first delay of restartPolicy restarts after a
	// failure; it doubles per restart up to MaxRestartBackoff. A restart
	// after node loss is immediate.
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration
	// MaxConcurrentReconciles is the number of workers (placement itself is
	// serialised by the Assumer).
	MaxConcurrentReconciles int
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// runRequested remembers when each run was first seen unplaced (keyed
	// by UID and run), for placement latency: creationTimestamp only has
	// second precision.
	runRequested sync.Map
}

// +kubebuilder:rbac:groups=sandbox.microvm.dev,resources=sandboxes,verbs=get;list;watch;patch;delete
// +kubebuilder:rbac:groups=sandbox.microvm.dev,resources=sandboxes/status,verbs=get;patch
// +kubebuilder:rbac:groups=sandbox.microvm.dev,resources=sandboxes/finalizers,verbs=update
// +kubebuilder:rbac:groups=sandbox.microvm.dev,resources=sandboxnodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=sandbox-system,resources=leases,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile moves one Sandbox one step towards its desired state.
func (r *SandboxReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, reterr error) {
	sbx := &sandboxv1alpha1.Sandbox{}
	if err := r.Get(ctx, req.NamespacedName, sbx); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.NamespacedName, "")
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("failed to get Sandbox %s: %w", req.NamespacedName, err)
	}
	log := ctrl.LoggerFrom(ctx).WithValues("Sandbox", klog.KObj(sbx), "run", sbx.Status.Run)
	ctx = ctrl.LoggerInto(ctx, log)

	if !sbx.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, sbx)
	}

	// Both finalizers in one patch, before anything can be placed: the node
	// agent's finalizer guarantees the agent confirms its VM is gone. The
	// pass goes on with the patched object (its new resourceVersion) rather
	// than waiting for the next event: one trip through the queue less per
	// new sandbox, which is most of the placement latency under load.
	if !controllerutil.ContainsFinalizer(sbx, sandboxv1alpha1.ManagerFinalizer) ||
		!controllerutil.ContainsFinalizer(sbx, sandboxv1alpha1.NodeAgentFinalizer) {
		base := sbx.DeepCopy()
		controllerutil.AddFinalizer(sbx, sandboxv1alpha1.ManagerFinalizer)
		controllerutil.AddFinalizer(sbx, sandboxv1alpha1.NodeAgentFinalizer)
		if err := r.Patch(ctx, sbx, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
			if apierrors.IsConflict(err) {
				return ctrl.Result{RequeueAfter: staleCacheRetry}, nil
			}
			return ctrl.Result{}, fmt.Errorf("failed to add finalizers to Sandbox %s: %w", klog.KObj(sbx), err)
		}
	}

	s := newScope(sbx, r.now())
	defer func() {
		if err := r.applyStatus(ctx, s, reterr == nil); err != nil {
			reterr = errors.Join(reterr, err)
		}
		if s.retryStale {
			res = ctrl.Result{RequeueAfter: staleCacheRetry}
		}
	}()
	return r.reconcileNormal(ctx, s)
}

// reconcileNormal runs the lifecycle steps in order, on the in-memory
// status; the deferred applyStatus writes the result once.
func (r *SandboxReconciler) reconcileNormal(ctx context.Context, s *scope) (ctrl.Result, error) {
	steps := []func(context.Context, *scope) (ctrl.Result, error){
		r.observeRun,
		r.checkNode,
		r.enforceMaxDuration,
		r.restartOrStart,
		r.place,
		// Again, for a run placed in this pass: its node-loss timer. The
		// manager's own status write brings no further pass.
		r.checkNode,
		r.deleteEphemeral,
	}
	var errs []error
	var res ctrl.Result
	for _, step := range steps {
		stepRes, err := step(ctx, s)
		if err != nil {
			errs = append(errs, err)
		}
		res = lowestRequeue(res, stepRes)
	}
	updatePhaseAndReady(s)
	// After the phase: the Service's endpoints are ready exactly in Running.
	svcRes, err := r.reconcileService(ctx, s)
	if err != nil {
		errs = append(errs, err)
	}
	res = lowestRequeue(res, svcRes)
	return res, errors.Join(errs...)
}

// reconcileDelete releases the finalizers once no VM can exist any more:
// the node agent removes its own after tearing the VM down; when the node
// is lost (or the sandbox was never placed) the manager removes it.
func (r *SandboxReconciler) reconcileDelete(ctx context.Context, sbx *sandboxv1alpha1.Sandbox) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	if !controllerutil.ContainsFinalizer(sbx, sandboxv1alpha1.ManagerFinalizer) {
		return ctrl.Result{}, nil
	}
	// The Service and its EndpointSlices go first: nothing should route to
	// a VM being torn down, and a cluster without the garbage collector
	// (kube-controller-manager) would otherwise keep them.
	if err := r.removeService(ctx, sbx); err != nil {
		return ctrl.Result{}, err
	}
	release := []string{sandboxv1alpha1.ManagerFinalizer}
	if controllerutil.ContainsFinalizer(sbx, sandboxv1alpha1.NodeAgentFinalizer) {
		switch node := sbx.Status.NodeName; {
		case node == "" || sbx.Status.TerminationReason == sandboxv1alpha1.TerminationNodeLost:
			// Never placed, between runs, or its node is already known lost:
			// no agent will ever confirm.
			release = append(release, sandboxv1alpha1.NodeAgentFinalizer)
		default:
			now := r.now()
			h, err := r.nodeHealthOf(ctx, node, now)
			if err != nil {
				return ctrl.Result{}, err
			}
			if !h.lost(now) {
				log.V(4).Info("Waiting for the node agent to confirm the VM is gone", "SandboxNode", klog.KRef("", node))
				return ctrl.Result{RequeueAfter: h.lostAt.Sub(now) + time.Second}, nil
			}
			log.Info("Releasing the node agent's finalizer: node lost", "SandboxNode", klog.KRef("", node))
			r.Recorder.Eventf(sbx, nil, "Warning", "NodeLost", "Delete",
				"Node %s is lost; deleting without the node agent's confirmation", node)
			release = append(release, sandboxv1alpha1.NodeAgentFinalizer)
		}
	}
	base := sbx.DeepCopy()
	for _, f := range release {
		controllerutil.RemoveFinalizer(sbx, f)
	}
	if err := r.Patch(ctx, sbx, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		if apierrors.IsConflict(err) {
			return ctrl.Result{RequeueAfter: staleCacheRetry}, nil
		}
		return ctrl.Result{}, fmt.Errorf("failed to remove finalizers from Sandbox %s: %w", klog.KObj(sbx), err)
	}
	r.forget(types.NamespacedName{Namespace: sbx.Namespace, Name: sbx.Name}, sbx.UID)
	return ctrl.Result{}, nil
}

// forget drops in-memory state of a Sandbox that is gone.
func (r *SandboxReconciler) forget(key types.NamespacedName, uid types.UID) {
	if uid != "" {
		r.Assumer.Forget(uid)
		prefix := string(uid) + "/"
		r.runRequested.Range(func(k, _ any) bool {
			if strings.HasPrefix(k.(string), prefix) {
				r.runRequested.Delete(k)
			}
			return true
		})
	}
	unschedulable.forget(key)
}

func (r *SandboxReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// SetupWithManager registers the controller, its index and its watches.
func (r *SandboxReconciler) SetupWithManager(mgr ctrl.Manager) error {
	switch {
	case r.Assumer == nil:
		return errNilAssumer
	case r.Recorder == nil:
		return errNilRecorder
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &sandboxv1alpha1.Sandbox{}, nodeNameIndex,
		func(o client.Object) []string { return []string{o.(*sandboxv1alpha1.Sandbox).Status.NodeName} }); err != nil {
		return fmt.Errorf("failed to index Sandboxes by %s: %w", nodeNameIndex, err)
	}
	workers := r.MaxConcurrentReconciles
	if workers <= 0 {
		workers = defaultWorkers
	}
	return ctrl.NewControllerManagedBy(mgr).
		// The manager's own status writes come back as update events; a pass
		// for them would find nothing to do. Only what the manager acts on
		// triggers one: spec, deletion, finalizers, the agent's VM report.
		For(&sandboxv1alpha1.Sandbox{}, builder.WithPredicates(predicate.Funcs{
			UpdateFunc: func(e event.UpdateEvent) bool {
				return actionableChange(e.ObjectOld.(*sandboxv1alpha1.Sandbox), e.ObjectNew.(*sandboxv1alpha1.Sandbox))
			},
		})).
		// A SandboxNode that appears, changes capacity or readiness, or goes
		// away: unplaced sandboxes may now fit; placed ones may be orphaned.
		Watches(&sandboxv1alpha1.SandboxNode{}, handler.EnqueueRequestsFromMapFunc(r.sandboxesForNode)).
		// Lease renewals are frequent: only a Lease that appears or comes
		// back from expiry is news (expiry itself is found by timers).
		Watches(&coordinationv1.Lease{}, handler.EnqueueRequestsFromMapFunc(r.sandboxesForNode),
			builder.WithPredicates(predicate.Funcs{
				CreateFunc:  func(event.CreateEvent) bool { return true },
				UpdateFunc:  func(e event.UpdateEvent) bool { return leaseWasExpired(e.ObjectOld.(*coordinationv1.Lease), r.now()) },
				DeleteFunc:  func(event.DeleteEvent) bool { return true },
				GenericFunc: func(event.GenericEvent) bool { return false },
			})).
		// A sandbox that stops holding capacity (its run ended, or it is
		// gone) may make room for one that waits.
		Watches(&sandboxv1alpha1.Sandbox{}, handler.EnqueueRequestsFromMapFunc(r.unplacedSandboxes),
			builder.WithPredicates(predicate.Funcs{
				CreateFunc: func(event.CreateEvent) bool { return false },
				UpdateFunc: func(e event.UpdateEvent) bool {
					return holdsCapacity(e.ObjectOld.(*sandboxv1alpha1.Sandbox)) && !holdsCapacity(e.ObjectNew.(*sandboxv1alpha1.Sandbox))
				},
				DeleteFunc:  func(e event.DeleteEvent) bool { return true },
				GenericFunc: func(event.GenericEvent) bool { return false },
			})).
		// The Sandbox's EndpointSlices; and Services by name rather than
		// Owns: a foreign Service that blocks the Sandbox's own must bring
		// a pass when it goes away.
		Owns(&discoveryv1.EndpointSlice{}).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(r.sandboxForService)).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		Named("sandbox").
		Complete(r)
}

// actionableChange reports whether an update carries something the manager
// acts on, as opposed to the manager's own status write.
func actionableChange(old, cur *sandboxv1alpha1.Sandbox) bool {
	return old.Generation != cur.Generation ||
		!old.DeletionTimestamp.Equal(cur.DeletionTimestamp) ||
		// Finalizers matter while deleting (the agent removing its own);
		// before that the only change is the manager's own patch.
		(cur.DeletionTimestamp != nil && !slices.Equal(old.Finalizers, cur.Finalizers)) ||
		!apiequality.Semantic.DeepEqual(old.Status.VM, cur.Status.VM) ||
		// Where the agent listens: the Service's EndpointSlices follow.
		!apiequality.Semantic.DeepEqual(old.Status.Ports, cur.Status.Ports)
}

// holdsCapacity reports whether a sandbox counts against its node (see claims).
func holdsCapacity(s *sandboxv1alpha1.Sandbox) bool {
	return s.Status.NodeName != "" && s.Status.TerminationReason == ""
}

// unplacedSandboxes maps an event that frees capacity to the sandboxes
// waiting for placement.
func (r *SandboxReconciler) unplacedSandboxes(ctx context.Context, _ client.Object) []reconcile.Request {
	return r.sandboxesOn(ctx, "")
}

// sandboxesOn lists the sandboxes whose status.nodeName is node ("" for
// unplaced ones) as reconcile requests.
func (r *SandboxReconciler) sandboxesOn(ctx context.Context, node string) []reconcile.Request {
	var list sandboxv1alpha1.SandboxList
	if err := r.List(ctx, &list, client.MatchingFields{nodeNameIndex: node}, client.UnsafeDisableDeepCopy); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Failed to list Sandboxes by node", "SandboxNode", klog.KRef("", node))
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: list.Items[i].Namespace, Name: list.Items[i].Name}})
	}
	return reqs
}

// sandboxesForNode maps a SandboxNode or Lease event to the sandboxes that
// wait for placement and those placed on that node.
func (r *SandboxReconciler) sandboxesForNode(ctx context.Context, o client.Object) []reconcile.Request {
	if l, ok := o.(*coordinationv1.Lease); ok && l.Namespace != r.LeaseNamespace {
		return nil
	}
	return append(r.sandboxesOn(ctx, ""), r.sandboxesOn(ctx, o.GetName())...)
}

// lowestRequeue keeps the soonest non-zero RequeueAfter.
func lowestRequeue(a, b ctrl.Result) ctrl.Result {
	switch {
	case a.RequeueAfter == 0:
		return b
	case b.RequeueAfter == 0:
		return a
	case b.RequeueAfter < a.RequeueAfter:
		return b
	}
	return a
}
