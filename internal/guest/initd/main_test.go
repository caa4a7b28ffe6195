package initd

import (
	"os"
	"testing"
)

// TestMain lets the test binary serve as sandbox-init's exec helper:
// startHelper re-executes /proc/self/exe, which in a test is this binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 0 && os.Args[0] == ExecHelperArg0 {
		ExecHelperMain()
	}
	if len(os.Args) > 0 && os.Args[0] == FileHelperArg0 {
		FileHelperMain()
	}
	os.Exit(m.Run())
}
