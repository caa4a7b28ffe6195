package plugin

import (
	"context"
	"fmt"
	"io"
	"net/url"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/kubectl/pkg/util/term"
	"k8s.io/streaming/pkg/httpstream"
)

// newExecutor opens the exec stream the way kubectl exec does: websocket
// (v5.channel.k8s.io, GET) first, SPDY (POST) when the server or a proxy
// on the way cannot upgrade to websockets. The access API serves both.
func newExecutor(cfg *rest.Config, u *url.URL) (remotecommand.Executor, error) {
	spdy, err := remotecommand.NewSPDYExecutor(cfg, "POST", u)
	if err != nil {
		return nil, err
	}
	ws, err := remotecommand.NewWebSocketExecutor(cfg, "GET", u.String())
	if err != nil {
		return nil, err
	}
	return remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
}

type execOptions struct {
	*Options
	stdin, tty bool
}

func (o *Options) newExecCommand() *cobra.Command {
	e := &execOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] SANDBOX -- COMMAND [ARGS...]",
		Short: "Run a command in a sandbox",
		Example: `  # Run ls in the sandbox dev
  kubectl sandbox exec dev -- ls -l /

  # An interactive shell
  kubectl sandbox exec -it dev -- sh`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			if dash != 1 || len(args) < 2 {
				return usageErrorf(cmd, "exec takes SANDBOX -- COMMAND [ARGS...]")
			}
			return e.run(cmd.Context(), args[0], args[1:])
		},
	}
	cmd.Flags().BoolVarP(&e.stdin, "stdin", "i", false, "Pass stdin to the command")
	cmd.Flags().BoolVarP(&e.tty, "tty", "t", false, "Allocate a terminal for the command (stderr then goes to stdout)")
	return cmd
}

// execQuery is the exec request's query, with PodExecOptions' names.
func execQuery(command []string, stdin, stdout, stderr, tty bool) url.Values {
	q := url.Values{"command": command}
	for k, on := range map[string]bool{"stdin": stdin, "stdout": stdout, "stderr": stderr, "tty": tty} {
		if on {
			q.Set(k, "true")
		}
	}
	return q
}

func (e *execOptions) run(ctx context.Context, sandbox string, command []string) error {
	t, err := parseSandbox(sandbox)
	if err != nil {
		return err
	}
	cfg, ns, err := e.restConfig()
	if err != nil {
		return err
	}
	if t.Namespace != "" {
		ns = t.Namespace
	}

	tty := term.TTY{In: e.In, Out: e.Out, Raw: e.tty}
	if e.tty && !e.stdin {
		// As kubectl exec: a terminal without input is useless.
		_, _ = fmt.Fprintln(e.ErrOut, "Unable to use a TTY - input is not enabled (use -i)")
		tty.Raw = false
	}
	if tty.Raw && !tty.IsTerminalIn() {
		_, _ = fmt.Fprintln(e.ErrOut, "Unable to use a TTY - input is not a terminal or the right kind of file")
		tty.Raw = false
	}
	useTTY := tty.Raw

	var stdin io.Reader
	if e.stdin {
		stdin = e.In
	}
	stderr := e.ErrOut
	if useTTY {
		stderr = nil // a terminal merges stderr into stdout
	}
	q := execQuery(command, stdin != nil, true, stderr != nil, useTTY)
	u, err := subresourceURL(cfg, ns, t.Name, "exec", q)
	if err != nil {
		return err
	}
	open := e.newExecutor
	if open == nil {
		open = newExecutor
	}
	exec, err := open(cfg, u)
	if err != nil {
		return fmt.Errorf("failed to create the exec stream: %w", err)
	}
	opts := remotecommand.StreamOptions{Stdin: stdin, Stdout: e.Out, Stderr: stderr, Tty: useTTY}
	if useTTY {
		opts.TerminalSizeQueue = sizeQueue{tty.MonitorSize(tty.GetSize())}
	}
	// Safe restores the terminal even when the stream fails; it is a plain
	// call when Raw is off.
	return tty.Safe(func() error { return exec.StreamWithContext(ctx, opts) })
}

// sizeQueue adapts kubectl's terminal size queue to remotecommand's.
type sizeQueue struct{ q term.TerminalSizeQueue }

func (s sizeQueue) Next() *remotecommand.TerminalSize {
	if s.q == nil {
		return nil
	}
	n := s.q.Next()
	if n == nil {
		return nil
	}
	return &remotecommand.TerminalSize{Width: n.Width, Height: n.Height}
}

func (o *Options) newAttachCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "attach SANDBOX",
		Short: "Stream the output of a sandbox's main process from now on",
		Long: `Attach streams the main process's stdout and stderr as it prints them, until the
sandbox's VM stops; the plugin then exits with the main process's exit code.
Earlier output is in "kubectl sandbox logs". The main process has no stdin and
no terminal, so there is no -i or -t: use "kubectl sandbox exec -it" for a shell.`,
		Example: `  # Watch what the sandbox dev's main process prints
  kubectl sandbox attach dev`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.attach(cmd.Context(), args[0])
		},
	}
}

func (o *Options) attach(ctx context.Context, sandbox string) error {
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
	u, err := subresourceURL(cfg, ns, t.Name, "attach", execQuery(nil, false, true, true, false))
	if err != nil {
		return err
	}
	open := o.newExecutor
	if open == nil {
		open = newExecutor
	}
	exec, err := open(cfg, u)
	if err != nil {
		return fmt.Errorf("failed to create the attach stream: %w", err)
	}
	return exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: o.Out, Stderr: o.ErrOut})
}
