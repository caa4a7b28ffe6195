package vmm

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaves a goroutine behind (the QMP reader,
// the agent accept, the process waiter).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
