package nodeagent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/types"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// journalFile is the per-VM journal in the Sandbox's directory, next to
// the VMM's process record (vmm.ProcessFile). Together they let a
// restarted node agent re-adopt the VM: which Sandbox and run it belongs
// to, when it started (for timings), and the QEMU process (pid + start
// time, checked against pid reuse).
const journalFile = "journal.json"

// journal is what the agent records about a VM it started.
type journal struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	UID       types.UID `json:"uid"`
	Run       int32     `json:"run"`
	// Started is when the VMM was started (host clock).
	Started time.Time `json:"started"`
	// Accelerator is what the VM runs under.
	Accelerator sandboxv1alpha1.Accelerator `json:"accelerator"`
	// GraceSeconds is the stop grace of the run.
	GraceSeconds int64 `json:"graceSeconds"`
	// IdleTimeoutSeconds is the run's lifecycle.idleTimeoutSeconds (0: none).
	IdleTimeoutSeconds int64 `json:"idleTimeoutSeconds,omitempty"`
}

func writeJournal(dir string, j journal) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	f := filepath.Join(dir, journalFile)
	if err := os.WriteFile(f+".tmp", b, 0o600); err != nil {
		return fmt.Errorf("writing the VM journal: %w", err)
	}
	if err := os.Rename(f+".tmp", f); err != nil {
		return fmt.Errorf("writing the VM journal: %w", err)
	}
	return nil
}

func readJournal(dir string) (journal, error) {
	var j journal
	b, err := os.ReadFile(filepath.Join(dir, journalFile))
	if err != nil {
		return j, err
	}
	if err := json.Unmarshal(b, &j); err != nil {
		return j, fmt.Errorf("reading the VM journal in %s: %w", dir, err)
	}
	return j, nil
}
