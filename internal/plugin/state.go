package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/spf13/cobra"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/pkg/client/clientset/versioned"
)

// stateFlags are what start and stop share.
type stateFlags struct {
	wait    bool
	timeout time.Duration
}

func (f *stateFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.wait, "wait", false, "Wait until the sandbox reaches the phase")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 5*time.Minute, "How long --wait waits")
}

func (o *Options) newStartCommand() *cobra.Command {
	var f stateFlags
	cmd := &cobra.Command{
		Use:   "start SANDBOX",
		Short: "Start a stopped sandbox (spec.state=Running)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.setState(cmd.Context(), args[0], startPatch(), f, sandboxv1alpha1.PhaseRunning)
		},
	}
	f.add(cmd)
	return cmd
}

func (o *Options) newStopCommand() *cobra.Command {
	var f stateFlags
	var drain, kill bool
	var grace int64
	cmd := &cobra.Command{
		Use:   "stop SANDBOX [--drain | --kill] [--grace-period N]",
		Short: "Stop a sandbox and keep it (spec.state=Stopped)",
		Long: `Stop a sandbox's VM and keep the Sandbox, its writable disk and its status.

--drain and --kill set spec.stopPolicy.mode (Drain: refuse new exec sessions and
let running ones finish within the grace period; Kill: end the VM at once), and
--grace-period sets spec.stopPolicy.gracePeriodSeconds. Without them the
Sandbox's own stop policy applies. The policy stays on the Sandbox: it also
governs later stops and the stop when the Sandbox is deleted.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if drain && kill {
				return usageErrorf(cmd, "at most one of --drain and --kill")
			}
			var mode sandboxv1alpha1.StopMode
			switch {
			case drain:
				mode = sandboxv1alpha1.StopDrain
			case kill:
				mode = sandboxv1alpha1.StopKill
			}
			var gp *int64
			if cmd.Flags().Changed("grace-period") {
				if grace < 0 || grace > 3600 {
					return usageErrorf(cmd, "--grace-period must be between 0 and 3600 seconds")
				}
				gp = &grace
			}
			return o.setState(cmd.Context(), args[0], stopPatch(mode, gp), f, sandboxv1alpha1.PhaseStopped)
		},
	}
	cmd.Flags().BoolVar(&drain, "drain", false, "Drain: refuse new exec sessions, let running ones finish within the grace period")
	cmd.Flags().BoolVar(&kill, "kill", false, "Kill the VM at once, without a clean shutdown")
	cmd.Flags().Int64Var(&grace, "grace-period", 0, "Seconds a graceful or draining stop may take before the VM is killed")
	f.add(cmd)
	return cmd
}

// startPatch and stopPatch are JSON merge patches of the Sandbox's spec:
// they touch only the fields the command sets.
func startPatch() []byte {
	return mustJSON(map[string]any{"spec": map[string]any{"state": sandboxv1alpha1.DesiredStateRunning}})
}

func stopPatch(mode sandboxv1alpha1.StopMode, gracePeriodSeconds *int64) []byte {
	spec := map[string]any{"state": sandboxv1alpha1.DesiredStateStopped}
	policy := map[string]any{}
	if mode != "" {
		policy["mode"] = mode
	}
	if gracePeriodSeconds != nil {
		policy["gracePeriodSeconds"] = *gracePeriodSeconds
	}
	if len(policy) > 0 {
		spec["stopPolicy"] = policy
	}
	return mustJSON(map[string]any{"spec": spec})
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of strings and numbers are marshalled here
	}
	return b
}

func (o *Options) setState(ctx context.Context, sandbox string, patch []byte, f stateFlags, want sandboxv1alpha1.SandboxPhase) error {
	t, err := parseSandbox(sandbox)
	if err != nil {
		return err
	}
	cfg, ns, err := o.restConfig()
	if err != nil {
		return err
	}
	if t.Namespace != "" {
		ns = t.Namespace
	}
	cs, err := o.NewClientset(cfg)
	if err != nil {
		return err
	}
	sbx, err := cs.SandboxV1alpha1().Sandboxes(ns).Patch(ctx, t.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(o.Out, "sandbox.sandbox.microvm.dev/%s patched (spec.state=%s)\n", sbx.Name, sbx.Spec.State)
	if !f.wait {
		return nil
	}
	phase, err := waitForPhase(ctx, cs, ns, t.Name, sbx.Generation, want, f.timeout)
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(o.Out, "sandbox.sandbox.microvm.dev/%s %s\n", sbx.Name, phase)
	return nil
}

// waitForPhase waits until the Sandbox's status, observed at generation
// or later (so not a phase from before the patch), is in phase want. A
// Crashed sandbox ends a wait for Running with an error and a wait for
// Stopped with success (its VM is gone); a deletion ends it with an error.
func waitForPhase(ctx context.Context, cs versioned.Interface, ns, name string, generation int64, want sandboxv1alpha1.SandboxPhase, timeout time.Duration) (sandboxv1alpha1.SandboxPhase, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			opts.FieldSelector = sel
			return cs.SandboxV1alpha1().Sandboxes(ns).List(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			opts.FieldSelector = sel
			return cs.SandboxV1alpha1().Sandboxes(ns).Watch(ctx, opts)
		},
	}
	var phase sandboxv1alpha1.SandboxPhase
	// The wrapper tells the reflector when a client (the generated fake)
	// cannot stream lists, so that it lists and watches instead.
	_, err := watchtools.UntilWithSync(ctx, cache.ToListWatcherWithWatchListSemantics(lw, cs), &sandboxv1alpha1.Sandbox{}, nil, func(ev watch.Event) (bool, error) {
		if ev.Type == watch.Deleted {
			return false, fmt.Errorf("sandbox %s/%s was deleted", ns, name)
		}
		sbx, ok := ev.Object.(*sandboxv1alpha1.Sandbox)
		if !ok || sbx.Status.ObservedGeneration < generation {
			return false, nil
		}
		phase = sbx.Status.Phase
		switch {
		case phase == want:
			return true, nil
		case phase == sandboxv1alpha1.PhaseCrashed && want == sandboxv1alpha1.PhaseStopped:
			return true, nil // not running either: nothing left to stop
		case phase == sandboxv1alpha1.PhaseCrashed:
			return false, fmt.Errorf("sandbox %s/%s crashed (reason %s)", ns, name, sbx.Status.TerminationReason)
		}
		return false, nil
	})
	if err != nil && ctx.Err() != nil {
		return phase, fmt.Errorf("timed out after %s waiting for sandbox %s/%s to be %s (phase %q)", timeout, ns, name, want, phase)
	}
	return phase, err
}
