package nodeagent

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// A Sandbox leaves this node when it is deleted (the finalizer path removes
// its directory) but also when the manager moves it: it was stopped and
// placed elsewhere for its next run, or re-placed after this node was
// declared lost. Then the agent's cache, scoped to status.nodeName, simply
// loses it, and nothing else would remove its VM, disks and journal here.
// release does that when the cache loses a Sandbox; sweep does it at start
// for the directories of Sandboxes that left while the agent was down.

// sweepGrace spares a directory without a journal that was touched this
// recently: a start may be creating it right now.
const sweepGrace = time.Minute

// release stops the VM of a Sandbox that is no longer on this node (if it
// still runs: two copies of one sandbox must not run) and removes its
// directory once the VM is gone.
func (r *SandboxReconciler) release(ctx context.Context, key types.NamespacedName) {
	r.mu.Lock()
	var gone []*sandboxState
	uids := map[*sandboxState]types.UID{}
	for uid, st := range r.sandboxes {
		if st.key == key {
			gone = append(gone, st)
			uids[st] = uid
			delete(r.sandboxes, uid)
		}
	}
	r.mu.Unlock()
	for _, st := range gone {
		dir := r.runDir(uids[st])
		h := st.handle
		r.wg.Go(func() {
			if h != nil {
				select {
				case <-h.vm.Done():
				default:
					ctrl.LoggerFrom(ctx).Info("Stopping the VM of a Sandbox that left this node", "Sandbox", key)
					h.stop(sandboxv1alpha1.StopKill, 0)
					<-h.vm.Done()
				}
			}
			_ = os.RemoveAll(dir)
		})
	}
}

// sweeper removes, once the cache has synced, the directories of
// Sandboxes that are not on this node any more, killing their VMs.
func (r *SandboxReconciler) sweeper(c cache.Cache) manager.Runnable {
	return manager.RunnableFunc(func(ctx context.Context) error {
		log := ctrl.LoggerFrom(ctx).WithName("sweep")
		if !c.WaitForCacheSync(ctx) {
			return nil // stopping
		}
		vmsDir := filepath.Join(r.args.StateDir, "vms")
		entries, err := os.ReadDir(vmsDir)
		if err != nil {
			return nil
		}
		for _, e := range entries {
			dir := filepath.Join(vmsDir, e.Name())
			uid := types.UID(e.Name())
			j, jerr := readJournal(dir)
			if jerr != nil {
				// No journal: a start that never got its VM going, or one in
				// progress right now.
				if info, err := os.Stat(dir); err != nil || time.Since(info.ModTime()) < sweepGrace {
					continue
				}
			}
			if jerr == nil && r.ownsSandbox(ctx, c, types.NamespacedName{Namespace: j.Namespace, Name: j.Name}, uid) {
				continue
			}
			if jerr != nil && r.ownsUID(ctx, c, uid) {
				continue
			}
			if p, err := vmm.ReadProcess(vmm.PathsIn(dir).Process); err == nil {
				if alive, err := p.Alive(); err == nil && alive {
					log.Info("Killing the VM of a Sandbox that left this node while the agent was down", "pid", p.PID, "uid", uid)
					_ = syscall.Kill(p.PID, syscall.SIGKILL)
				}
			}
			log.Info("Removing the directory of a Sandbox that is not on this node", "dir", dir)
			_ = os.RemoveAll(dir)
		}
		return nil
	})
}

// ownsSandbox reports whether key, with this uid, is placed on this node
// (from the node-scoped cache).
func (r *SandboxReconciler) ownsSandbox(ctx context.Context, c client.Reader, key types.NamespacedName, uid types.UID) bool {
	sbx := &sandboxv1alpha1.Sandbox{}
	if err := c.Get(ctx, key, sbx); err != nil {
		return false
	}
	return sbx.UID == uid && sbx.Status.NodeName == r.args.NodeName
}

// ownsUID reports whether a Sandbox with uid is placed on this node.
func (r *SandboxReconciler) ownsUID(ctx context.Context, c client.Reader, uid types.UID) bool {
	list := &sandboxv1alpha1.SandboxList{}
	if err := c.List(ctx, list); err != nil {
		return true // when in doubt, keep it
	}
	for _, s := range list.Items {
		if s.UID == uid {
			return true
		}
	}
	return false
}
