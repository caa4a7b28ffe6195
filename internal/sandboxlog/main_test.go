package sandboxlog

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: a
// following Read must return when its context ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
