package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	sandboxv1alpha1ac "github.com/microvm-dev/sandbox-operator/pkg/client/applyconfiguration/api/v1alpha1"
)

// Ready condition reasons of a SandboxNode.
const (
	ReasonAgentReady    = "AgentReady"
	ReasonNoAccelerator = "NoAccelerator"
	ReasonAgentStopped  = "AgentStopped"
)

// AcceleratorLabel carries the node's accelerator on its SandboxNode.
const AcceleratorLabel = "sandbox.microvm.dev/accelerator"

// heartbeat reports the SandboxNode and renews the Lease. It runs as a
// manager.Runnable: it starts with the manager, and on shutdown marks the
// SandboxNode not ready so that placement stops at once rather than after
// the Lease expires.
type heartbeat struct {
	client client.Reader // uncached: reads happen before the caches sync
	writer client.Client
	args   Args
	probe  func() Host
	// access is the agent's access endpoint, published in status.access
	// (nil: none).
	access *sandboxv1alpha1.NodeAccess

	registered atomic.Bool
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every agent runs.
func (h *heartbeat) NeedLeaderElection() bool { return false }

// Start implements manager.Runnable.
func (h *heartbeat) Start(ctx context.Context) error {
	log := ctrl.LoggerFrom(ctx).WithName("heartbeat").WithValues("SandboxNode", h.args.NodeName)
	ctx = ctrl.LoggerInto(ctx, log)
	host := h.probe()
	if err := h.report(ctx, host, true); err != nil {
		return err
	}
	h.registered.Store(true)
	log.Info("Registered SandboxNode", "accelerator", host.Accelerator, "cpus", host.CPUs, "memoryMiB", host.MemoryMiB)

	wait.JitterUntilWithContext(ctx, func(ctx context.Context) {
		if err := h.renew(ctx); err != nil && ctx.Err() == nil {
			log.Error(err, "Failed to renew the Lease")
		}
	}, h.args.RenewInterval, 0.2, true)

	// Stopping: tell placement now. A fresh context: ctx is done.
	stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.report(stopCtx, host, false); err != nil {
		log.Error(err, "Failed to mark the SandboxNode not ready")
	}
	return nil
}

// ready is the readyz check: the SandboxNode has been registered.
func (h *heartbeat) ready(_ *http.Request) error {
	if !h.registered.Load() {
		return errors.New("SandboxNode not registered yet")
	}
	return nil
}

// report applies the SandboxNode's metadata (labels, owner reference to
// the Node) and status with server-side apply, and makes sure the Lease
// exists.
func (h *heartbeat) report(ctx context.Context, host Host, running bool) error {
	name := h.args.NodeName
	labels := map[string]string{}
	node := &corev1.Node{}
	ownerRefs := []*metav1ac.OwnerReferenceApplyConfiguration{}
	if err := h.client.Get(ctx, types.NamespacedName{Name: name}, node); err == nil {
		for k, v := range node.Labels {
			labels[k] = v
		}
		ownerRefs = append(ownerRefs, metav1ac.OwnerReference().WithAPIVersion("v1").WithKind("Node").
			WithName(node.Name).WithUID(node.UID))
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("failed to get Node %s: %w", name, err)
	}
	for k, v := range h.args.Labels {
		labels[k] = v
	}
	if host.Accelerator != "" {
		labels[AcceleratorLabel] = string(host.Accelerator)
	}
	meta := sandboxv1alpha1ac.SandboxNode(name).WithLabels(labels).WithOwnerReferences(ownerRefs...)
	if err := h.writer.Apply(ctx, meta, client.FieldOwner(sandboxv1alpha1.NodeAgentFieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("failed to apply SandboxNode %s: %w", name, err)
	}

	// The Lease first: a SandboxNode reported Ready always has a live one.
	if running {
		if err := h.renew(ctx); err != nil {
			return err
		}
	}

	capacity := sandboxv1alpha1.NodeResources{CPUs: host.CPUs, MemoryMiB: host.MemoryMiB, Sandboxes: h.args.MaxSandboxes}
	alloc := Allocatable(capacity, h.args.Reserve)
	status, reason, msg := metav1.ConditionTrue, ReasonAgentReady, fmt.Sprintf("The agent runs VMs with %s", host.Accelerator)
	switch {
	case !running:
		status, reason, msg = metav1.ConditionFalse, ReasonAgentStopped, "The agent stopped"
	case host.Accelerator == "":
		status, reason, msg = metav1.ConditionFalse, ReasonNoAccelerator,
			fmt.Sprintf("/dev/kvm is not usable (%s) and emulation is not allowed (--allow-emulation)", host.KVMError)
	}
	st := sandboxv1alpha1ac.SandboxNodeStatus().
		WithCapacity(sandboxv1alpha1ac.NodeResources().WithCPUs(capacity.CPUs).WithMemoryMiB(capacity.MemoryMiB).WithSandboxes(capacity.Sandboxes)).
		WithAllocatable(sandboxv1alpha1ac.NodeResources().WithCPUs(alloc.CPUs).WithMemoryMiB(alloc.MemoryMiB).WithSandboxes(alloc.Sandboxes)).
		WithVersions(sandboxv1alpha1ac.NodeVersions().WithAgent(Version).WithQEMU(host.QEMU)).
		WithConditions(metav1ac.Condition().WithType(sandboxv1alpha1.NodeConditionReady).WithStatus(status).
			WithReason(reason).WithMessage(msg).WithLastTransitionTime(h.transitionTime(ctx, status)))
	if host.Accelerator != "" {
		st.WithAccelerator(host.Accelerator)
	}
	for _, a := range h.args.NodeAddresses {
		st.WithAddresses(corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a.String()})
	}
	if h.access != nil && running {
		st.WithAccess(sandboxv1alpha1ac.NodeAccess().WithEndpoint(h.access.Endpoint).WithCertificate(h.access.Certificate))
	}
	if err := h.writer.Status().Apply(ctx, sandboxv1alpha1ac.SandboxNode(name).WithStatus(st),
		client.FieldOwner(sandboxv1alpha1.NodeAgentFieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("failed to apply the status of SandboxNode %s: %w", name, err)
	}
	return nil
}

// transitionTime keeps the Ready condition's lastTransitionTime when its
// status does not change.
func (h *heartbeat) transitionTime(ctx context.Context, status metav1.ConditionStatus) metav1.Time {
	sn := &sandboxv1alpha1.SandboxNode{}
	if err := h.client.Get(ctx, types.NamespacedName{Name: h.args.NodeName}, sn); err == nil {
		for _, c := range sn.Status.Conditions {
			if c.Type == sandboxv1alpha1.NodeConditionReady && c.Status == status {
				return c.LastTransitionTime
			}
		}
	}
	return metav1.Now()
}

// renew sets the Lease's renewTime to now, creating the Lease if needed.
func (h *heartbeat) renew(ctx context.Context) error {
	now := metav1.NowMicro()
	key := types.NamespacedName{Namespace: h.args.LeaseNamespace, Name: h.args.NodeName}
	lease := &coordinationv1.Lease{}
	err := h.client.Get(ctx, key, lease)
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(h.args.NodeName),
				LeaseDurationSeconds: ptr.To(int32(h.args.LeaseDuration / time.Second)),
				AcquireTime:          &now, RenewTime: &now,
			},
		}
		if err := h.writer.Create(ctx, lease); err != nil {
			return fmt.Errorf("failed to create Lease %s: %w", key, err)
		}
		return nil
	} else if err != nil {
		return fmt.Errorf("failed to get Lease %s: %w", key, err)
	}
	lease.Spec.RenewTime = &now
	lease.Spec.HolderIdentity = ptr.To(h.args.NodeName)
	lease.Spec.LeaseDurationSeconds = ptr.To(int32(h.args.LeaseDuration / time.Second))
	if err := h.writer.Update(ctx, lease); err != nil {
		return fmt.Errorf("failed to renew Lease %s: %w", key, err)
	}
	return nil
}
