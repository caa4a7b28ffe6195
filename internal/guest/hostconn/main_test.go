package hostconn_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: every
// session must end with its connection.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
