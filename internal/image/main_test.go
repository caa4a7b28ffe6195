package image

import (
	"testing"

	"go.uber.org/goleak"
)

// Pulls run in goroutines detached from their callers; none may outlive a
// test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
