package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// opRun is one Sandbox taken from create to phase Running.
type opRun struct {
	name string
	// total is Create() called → the watch delivers phase Running.
	total time.Duration
	// Milestones seen by the watch, since Create() was called (zero when
	// not seen: a watch event can carry several changes).
	finalized, placed, pulling, booting, vmRunning time.Duration
	// unschedulable is when the watch first showed Scheduled=False with
	// reason Unschedulable (zero if never).
	unschedulable time.Duration
	// timings is status.timings at phase Running.
	timings sandboxv1alpha1.Timings
	digest  string // status.imageDigest
	pid     int
	mem     vmMemory
	args    []string // QEMU's argv as /proc shows it
	runDir  string
	// agentRSS is the node agent's VmRSS before the Create and with the
	// VM idle.
	agentRSSBefore, agentRSSIdle float64
	deleted                      time.Duration // Delete() → the object is gone
	err                          error
}

// newSandbox is what a user would apply: the image, one vCPU and the
// memory; the image's entrypoint keeps the VM running.
func newSandbox(b *bench, name string) *sandboxv1alpha1.Sandbox {
	return &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: benchNamespace},
		Spec: sandboxv1alpha1.SandboxSpec{
			Image:     b.registry.ref,
			Resources: sandboxv1alpha1.SandboxResources{CPUs: 1, MemoryMiB: int32(b.cfg.memoryMiB)},
			// The registry is plain HTTP on 127.0.0.1.
			Registry: &sandboxv1alpha1.RegistryOptions{Insecure: true},
			// Deleting between runs should not wait out the default grace.
			StopPolicy: sandboxv1alpha1.StopPolicy{GracePeriodSeconds: ptr.To[int64](2)},
		},
	}
}

// runOperator creates one Sandbox, times it to phase Running through a
// watch, reads its VM's memory after it idled, and deletes it, waiting until
// it is gone (the agent has stopped the VM and released its finalizer).
func runOperator(ctx context.Context, b *bench, name string, measureMemory bool) (r opRun) {
	r.name = name
	sandboxes := b.cluster.sbx.SandboxV1alpha1().Sandboxes(benchNamespace)
	if measureMemory {
		r.agentRSSBefore, _ = rssMiB(b.agent.pid())
	}

	// The watch starts before the Create, so no event can be missed.
	w, err := sandboxes.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		r.err = fmt.Errorf("failed to watch Sandbox %s: %w", name, err)
		return r
	}
	defer w.Stop()

	sbx := newSandbox(b, name)
	start := time.Now()
	if _, err := sandboxes.Create(ctx, sbx, metav1.CreateOptions{}); err != nil {
		r.err = fmt.Errorf("failed to create Sandbox %s: %w", name, err)
		return r
	}
	defer func() {
		d, err := deleteAndWait(ctx, b, name)
		r.deleted = d
		if err != nil && r.err == nil {
			r.err = err
		}
	}()

	timeout := time.After(b.cfg.bootTimeout)
	var last *sandboxv1alpha1.Sandbox
	for r.total == 0 {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				r.err = fmt.Errorf("the watch of Sandbox %s ended", name)
				return r
			}
			now := time.Since(start)
			if ev.Type == watch.Error {
				r.err = fmt.Errorf("watch error: %v", apierrors.FromObject(ev.Object))
				return r
			}
			s, ok := ev.Object.(*sandboxv1alpha1.Sandbox)
			if !ok {
				continue
			}
			last = s
			st := s.Status
			if slices.Contains(s.Finalizers, sandboxv1alpha1.ManagerFinalizer) {
				setOnce(&r.finalized, now)
			}
			if c := meta.FindStatusCondition(st.Conditions, sandboxv1alpha1.ConditionScheduled); c != nil &&
				c.Status == metav1.ConditionFalse && c.Reason == sandboxv1alpha1.ReasonUnschedulable {
				setOnce(&r.unschedulable, now)
			}
			if st.NodeName != "" {
				setOnce(&r.placed, now)
			}
			if vm := st.CurrentVM(); vm != nil {
				switch vm.State {
				case sandboxv1alpha1.VMPulling:
					setOnce(&r.pulling, now)
				case sandboxv1alpha1.VMBooting:
					setOnce(&r.booting, now)
				case sandboxv1alpha1.VMRunning:
					setOnce(&r.vmRunning, now)
				}
			}
			switch st.Phase {
			case sandboxv1alpha1.PhaseRunning:
				r.total = now
			case sandboxv1alpha1.PhaseStopped, sandboxv1alpha1.PhaseCrashed:
				r.err = fmt.Errorf("sandbox %s went %s instead of Running: %s", name, st.Phase, describe(s))
				return r
			}
		case <-timeout:
			r.err = fmt.Errorf("sandbox %s not Running within %s: %s", name, b.cfg.bootTimeout, describe(last))
			return r
		case <-ctx.Done():
			r.err = ctx.Err()
			return r
		}
	}
	if last.Status.Timings != nil {
		r.timings = *last.Status.Timings
	}
	r.digest = last.Status.ImageDigest
	if vm := last.Status.CurrentVM(); vm != nil {
		r.pid = int(vm.PID)
	}
	r.runDir = filepath.Join(b.stateDir, "vms", string(last.UID))
	if r.pid > 0 {
		r.args, _ = cmdline(r.pid)
	}
	if !measureMemory {
		return r
	}
	select {
	case <-time.After(b.cfg.idle):
	case <-ctx.Done():
		r.err = ctx.Err()
		return r
	}
	if r.pid <= 0 {
		r.err = fmt.Errorf("sandbox %s is Running without status.vm.pid", name)
		return r
	}
	if r.mem, err = readVMMemory(r.pid, b.cfg.memoryMiB); err != nil {
		r.err = fmt.Errorf("failed to read the memory of QEMU pid %d: %w", r.pid, err)
		return r
	}
	r.agentRSSIdle, _ = rssMiB(b.agent.pid())
	return r
}

func setOnce(d *time.Duration, v time.Duration) {
	if *d == 0 {
		*d = v
	}
}

// describe summarises a Sandbox's status for errors.
func describe(s *sandboxv1alpha1.Sandbox) string {
	if s == nil {
		return "no event seen"
	}
	msg := fmt.Sprintf("phase %q, nodeName %q", s.Status.Phase, s.Status.NodeName)
	if vm := s.Status.VM; vm != nil {
		msg += fmt.Sprintf(", vm {state %s, pid %d, exitReason %q, message %q}", vm.State, vm.PID, vm.ExitReason, vm.Message)
	}
	for _, c := range s.Status.Conditions {
		if c.Status != metav1.ConditionTrue || c.Type == sandboxv1alpha1.ConditionImageReady {
			msg += fmt.Sprintf(", %s=%s (%s: %s)", c.Type, c.Status, c.Reason, c.Message)
		}
	}
	return msg
}

// deleteAndWait deletes the Sandbox and waits until the API server no
// longer has it: the node agent stopped the VM and released its finalizer.
// It uses its own context so that it also cleans up after a cancellation.
func deleteAndWait(parent context.Context, b *bench, name string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), time.Minute)
	defer cancel()
	sandboxes := b.cluster.sbx.SandboxV1alpha1().Sandboxes(benchNamespace)
	start := time.Now()
	if err := sandboxes.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return 0, nil
		}
		return 0, fmt.Errorf("failed to delete Sandbox %s: %w", name, err)
	}
	for {
		_, err := sandboxes.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("sandbox %s still exists a minute after its deletion (last error: %v)", name, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// killAgentVMs kills every QEMU recorded in the node agent's state dir that
// still runs (the agent does not stop its VMs when it exits: they outlive
// it by design).
func killAgentVMs(stateDir string) int {
	dirs, _ := filepath.Glob(filepath.Join(stateDir, "vms", "*"))
	n := 0
	for _, d := range dirs {
		p, err := vmm.ReadProcess(vmm.PathsIn(d).Process)
		if err != nil {
			continue
		}
		if alive, err := p.Alive(); err == nil && alive {
			if proc, err := os.FindProcess(p.PID); err == nil && proc.Kill() == nil {
				n++
			}
		}
	}
	return n
}
