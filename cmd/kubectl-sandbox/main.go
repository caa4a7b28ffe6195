// Command kubectl-sandbox is the kubectl plugin for microVM sandboxes:
// installed on the PATH, it runs as "kubectl sandbox". The commands live
// in internal/plugin.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/utils/exec"

	"github.com/microvm-dev/sandbox-operator/internal/plugin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	cmd := plugin.NewCommand(genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	err := cmd.ExecuteContext(ctx)
	stop()
	if err == nil {
		return
	}
	// A remote command's exit status is ours, as with kubectl exec.
	var exitErr exec.ExitError
	if errors.As(err, &exitErr) && exitErr.Exited() {
		os.Exit(exitErr.ExitStatus())
	}
	_, _ = fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}
