package controller

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/placement"
)

// nodeHealth is the manager's view of one node agent's liveness.
type nodeHealth struct {
	// exists: the SandboxNode exists.
	exists bool
	// ready: SandboxNode Ready=True and the Lease is live.
	ready bool
	// lostAt is when the node counts as lost: Lease expiry plus the grace
	// period. Zero when the node is lost already with no time to wait
	// (neither SandboxNode nor Lease exists).
	lostAt time.Time
}

// lost reports whether the node is lost at now.
func (h nodeHealth) lost(now time.Time) bool { return !now.Before(h.lostAt) }

// leaseExpiry is when a Lease stops vouching for its holder; zero when it
// never did.
func leaseExpiry(l *coordinationv1.Lease) time.Time {
	if l == nil || l.Spec.LeaseDurationSeconds == nil {
		return time.Time{}
	}
	var renew time.Time
	switch {
	case l.Spec.RenewTime != nil:
		renew = l.Spec.RenewTime.Time
	case l.Spec.AcquireTime != nil:
		renew = l.Spec.AcquireTime.Time
	default:
		return time.Time{}
	}
	return renew.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
}

// health computes a node's liveness from its SandboxNode and Lease (either
// may be nil).
func health(sn *sandboxv1alpha1.SandboxNode, lease *coordinationv1.Lease, grace time.Duration, now time.Time) nodeHealth {
	h := nodeHealth{exists: sn != nil}
	expiry := leaseExpiry(lease)
	switch {
	case !expiry.IsZero():
		h.lostAt = expiry.Add(grace)
	case sn != nil:
		// A SandboxNode whose agent never took its Lease: count the grace
		// from the SandboxNode's creation.
		h.lostAt = sn.CreationTimestamp.Add(grace)
	}
	h.ready = sn != nil && now.Before(expiry) &&
		meta.IsStatusConditionTrue(sn.Status.Conditions, sandboxv1alpha1.NodeConditionReady)
	return h
}

// nodeHealthOf reads a node's SandboxNode and Lease from the cache.
func (r *SandboxReconciler) nodeHealthOf(ctx context.Context, name string, now time.Time) (nodeHealth, error) {
	var sn sandboxv1alpha1.SandboxNode
	snp := &sn
	if err := r.Get(ctx, types.NamespacedName{Name: name}, &sn); apierrors.IsNotFound(err) {
		snp = nil
	} else if err != nil {
		return nodeHealth{}, fmt.Errorf("failed to get SandboxNode %s: %w", name, err)
	}
	var lease coordinationv1.Lease
	lp := &lease
	if err := r.Get(ctx, types.NamespacedName{Namespace: r.LeaseNamespace, Name: name}, &lease); apierrors.IsNotFound(err) {
		lp = nil
	} else if err != nil {
		return nodeHealth{}, fmt.Errorf("failed to get Lease %s/%s: %w", r.LeaseNamespace, name, err)
	}
	return health(snp, lp, r.NodeLostGrace, now), nil
}

// placementNodes lists every SandboxNode with its liveness, for placement.
func (r *SandboxReconciler) placementNodes(ctx context.Context, now time.Time) ([]placement.Node, error) {
	var nodes sandboxv1alpha1.SandboxNodeList
	if err := r.List(ctx, &nodes, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("failed to list SandboxNodes: %w", err)
	}
	var leases coordinationv1.LeaseList
	if err := r.List(ctx, &leases, client.InNamespace(r.LeaseNamespace), client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("failed to list Leases in %s: %w", r.LeaseNamespace, err)
	}
	byName := make(map[string]*coordinationv1.Lease, len(leases.Items))
	for i := range leases.Items {
		byName[leases.Items[i].Name] = &leases.Items[i]
	}
	out := make([]placement.Node, 0, len(nodes.Items))
	for i := range nodes.Items {
		sn := &nodes.Items[i]
		h := health(sn, byName[sn.Name], r.NodeLostGrace, now)
		cached := make(map[string]bool, len(sn.Status.CachedImages))
		for _, d := range sn.Status.CachedImages {
			cached[d] = true
		}
		a := sn.Status.Allocatable
		out = append(out, placement.Node{
			Name:          sn.Name,
			Labels:        sn.Labels,
			Taints:        sn.Spec.Taints,
			Unschedulable: sn.Spec.Unschedulable,
			Ready:         h.ready && sn.DeletionTimestamp == nil,
			Accelerator:   sn.Status.Accelerator,
			Allocatable:   placement.Resources{CPUs: int64(a.CPUs), MemoryMiB: a.MemoryMiB, Sandboxes: int64(a.Sandboxes)},
			CachedImages:  cached,
		})
	}
	return out, nil
}

// claims lists the capacity every Sandbox in the cache holds: a placed
// sandbox whose run has not ended holds its resources on its node.
func (r *SandboxReconciler) claims(ctx context.Context) ([]placement.Claim, error) {
	var list sandboxv1alpha1.SandboxList
	// Read-only use: skip the cache's deep copy of every Sandbox.
	if err := r.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("failed to list Sandboxes: %w", err)
	}
	out := make([]placement.Claim, 0, len(list.Items))
	for i := range list.Items {
		s := &list.Items[i]
		node := s.Status.NodeName
		if !holdsCapacity(s) {
			node = "" // the run ended: nothing runs on the node any more
		}
		out = append(out, placement.Claim{UID: s.UID, Node: node, Resources: placement.ResourcesOf(s)})
	}
	return out, nil
}

// leaseWasExpired reports whether an updated Lease had expired before the
// update, i.e. the update revived a node: a reason to retry placement.
func leaseWasExpired(old *coordinationv1.Lease, now time.Time) bool {
	e := leaseExpiry(old)
	return e.IsZero() || !now.Before(e)
}
