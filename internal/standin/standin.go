// Package standin registers SandboxNodes and renews their Leases the way a
// node agent does, for the places that need ready nodes but no VMs: `make
// dev` (hack/devenv), the placement benchmark (bench/cmd/placebench) and the
// end-to-end suite. It is a named stand-in for the agent's reporting, not a
// fake of its VM work; the node agent (cmd/node-agent) replaces it.
package standin

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// Node describes a SandboxNode to register.
type Node struct {
	Name   string
	Labels map[string]string
	// Capacity defaults to Allocatable.
	Capacity    *sandboxv1alpha1.NodeResources
	Allocatable sandboxv1alpha1.NodeResources
	// Accelerator defaults to tcg.
	Accelerator sandboxv1alpha1.Accelerator
	// Agent names who stands in for the agent (status.versions.agent and
	// the Ready condition's message).
	Agent string
	// LeaseDuration defaults to 40 s.
	LeaseDuration time.Duration
}

// Register creates (or, when it exists, updates) the SandboxNode with a
// Ready status and its Lease in leaseNamespace, renewed now.
func Register(ctx context.Context, c client.Client, leaseNamespace string, n Node) error {
	sn := &sandboxv1alpha1.SandboxNode{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: n.Labels}}
	if err := c.Create(ctx, sn); apierrors.IsAlreadyExists(err) {
		if err := c.Get(ctx, client.ObjectKey{Name: n.Name}, sn); err != nil {
			return fmt.Errorf("failed to get SandboxNode %s: %w", n.Name, err)
		}
	} else if err != nil {
		return fmt.Errorf("failed to create SandboxNode %s: %w", n.Name, err)
	}
	capacity := n.Allocatable
	if n.Capacity != nil {
		capacity = *n.Capacity
	}
	accel := n.Accelerator
	if accel == "" {
		accel = sandboxv1alpha1.AcceleratorTCG
	}
	sn.Status = sandboxv1alpha1.SandboxNodeStatus{
		Capacity:    capacity,
		Allocatable: n.Allocatable,
		Accelerator: accel,
		Versions:    sandboxv1alpha1.NodeVersions{Agent: n.Agent + " (stand-in)"},
		Conditions: []metav1.Condition{{
			Type: sandboxv1alpha1.NodeConditionReady, Status: metav1.ConditionTrue, Reason: "StandIn",
			Message:            fmt.Sprintf("Registered by %s, standing in for the node agent: no VMs boot here", n.Agent),
			LastTransitionTime: metav1.Now(),
		}},
	}
	if err := c.Status().Update(ctx, sn); err != nil {
		return fmt.Errorf("failed to report the status of SandboxNode %s: %w", n.Name, err)
	}
	d := n.LeaseDuration
	if d <= 0 {
		d = 40 * time.Second
	}
	now := metav1.NowMicro()
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Namespace: leaseNamespace},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(n.Name), LeaseDurationSeconds: ptr.To(int32(d / time.Second)),
			AcquireTime: &now, RenewTime: &now},
	}
	if err := c.Create(ctx, l); apierrors.IsAlreadyExists(err) {
		return Renew(ctx, c, leaseNamespace, n.Name)
	} else if err != nil {
		return fmt.Errorf("failed to create Lease %s/%s: %w", leaseNamespace, n.Name, err)
	}
	return nil
}

// Renew sets the node's Lease renewTime to now.
func Renew(ctx context.Context, c client.Client, leaseNamespace, name string) error {
	patch := fmt.Sprintf(`{"spec":{"renewTime":%q}}`, metav1.NowMicro().UTC().Format(metav1.RFC3339Micro))
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: leaseNamespace}}
	if err := c.Patch(ctx, l, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		return fmt.Errorf("failed to renew Lease %s/%s: %w", leaseNamespace, name, err)
	}
	return nil
}

// KeepRenewing renews the Leases of the nodes names() returns every period
// until ctx ends. Errors go to onErr (when not nil) and do not stop it.
func KeepRenewing(ctx context.Context, c client.Client, leaseNamespace string, names func() []string, every time.Duration, onErr func(error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, n := range names() {
			if err := Renew(ctx, c, leaseNamespace, n); err != nil && ctx.Err() == nil && onErr != nil {
				onErr(err)
			}
		}
	}
}
