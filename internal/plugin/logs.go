package plugin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

type logsOptions struct {
	*Options
	follow, timestamps bool
	tail               int64
	since              time.Duration
	sinceTime          string
}

func (o *Options) newLogsCommand() *cobra.Command {
	l := &logsOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "logs SANDBOX [-f] [--tail N] [--since 5m | --since-time RFC3339] [--timestamps]",
		Short: "Print the output of a sandbox's main process",
		Long: `Print the output (stdout and stderr) of a sandbox's main process, kept on its node
across runs: the log is readable after a stop.`,
		Example: `  # The last 20 lines, then follow
  kubectl sandbox logs dev --tail 20 -f`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q, err := l.query()
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			return l.run(cmd.Context(), args[0], q)
		},
	}
	cmd.Flags().BoolVarP(&l.follow, "follow", "f", false, "Stream the log as it grows")
	cmd.Flags().Int64Var(&l.tail, "tail", -1, "Lines of recent log to show; -1 shows everything")
	cmd.Flags().DurationVar(&l.since, "since", 0, "Only lines newer than a relative duration like 5s, 2m or 3h")
	cmd.Flags().StringVar(&l.sinceTime, "since-time", "", "Only lines after a date (RFC3339)")
	cmd.Flags().BoolVar(&l.timestamps, "timestamps", false, "Prefix each line with its time")
	return cmd
}

// query maps the flags to the log subresource's parameters, as kubectl
// logs maps them to PodLogOptions.
func (l *logsOptions) query() (url.Values, error) {
	q := url.Values{}
	if l.follow {
		q.Set("follow", "true")
	}
	if l.timestamps {
		q.Set("timestamps", "true")
	}
	if l.tail >= 0 {
		q.Set("tailLines", strconv.FormatInt(l.tail, 10))
	}
	if l.since != 0 && l.sinceTime != "" {
		return nil, fmt.Errorf("at most one of --since and --since-time")
	}
	if l.since < 0 {
		return nil, fmt.Errorf("--since must be positive")
	}
	if l.since > 0 {
		// Rounded up to whole seconds like kubectl: never fewer lines than asked.
		q.Set("sinceSeconds", strconv.FormatInt(int64((l.since+time.Second-1)/time.Second), 10))
	}
	if l.sinceTime != "" {
		t, err := time.Parse(time.RFC3339, l.sinceTime)
		if err != nil {
			return nil, fmt.Errorf("--since-time must be RFC3339, e.g. 2026-01-02T15:04:05Z: %w", err)
		}
		q.Set("sinceTime", t.Format(time.RFC3339))
	}
	return q, nil
}

func (l *logsOptions) run(ctx context.Context, sandbox string, q url.Values) error {
	t, err := parseSandbox(sandbox)
	if err != nil {
		return err
	}
	c, err := l.accessClient()
	if err != nil {
		return err
	}
	if !l.follow {
		resp, err := c.do(ctx, http.MethodGet, t, "log", q, nil)
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		_, err = io.Copy(l.Out, resp.Body)
		return err
	}
	// A followed log has no end: the client's timeout must not cut it.
	c.http.Timeout = 0
	return l.follow_(ctx, c, t, q)
}

// reconnectFor bounds how long a follow keeps trying to reconnect after
// its stream broke (the node agent restarting takes about a second).
const reconnectFor = time.Minute

// follow_ streams the log and, when the stream breaks (a node agent
// restart, a manager failover), reconnects from the time of the last line
// it printed, so that nothing is lost or printed twice. It asks the server
// for timestamps to know where it is, and strips them unless --timestamps.
func (l *logsOptions) follow_(ctx context.Context, c *accessClient, t target, q url.Values) error {
	q.Set("timestamps", "true")
	var last string // timestamp of the last line printed
	sameTS := 0     // lines printed with that timestamp
	var failingSince time.Time
	for {
		resp, err := c.do(ctx, http.MethodGet, t, "log", q, nil)
		if err == nil {
			failingSince = time.Time{}
			skip := 0
			if last != "" {
				skip = sameTS // the since bound is inclusive: those lines come again
			}
			r := bufio.NewReader(resp.Body)
			for {
				line, rerr := r.ReadString('\n')
				if rerr != nil {
					// A partial line at a break is read again after reconnecting.
					err = rerr
					break
				}
				ts, rest, ok := strings.Cut(line, " ")
				if _, perr := time.Parse(time.RFC3339Nano, ts); !ok || perr != nil {
					rest, ts = line, "" // not a timestamped line: print it as it is
				}
				if ts == last && skip > 0 {
					skip--
					continue
				}
				skip = 0
				if ts == last {
					sameTS++
				} else {
					last, sameTS = ts, 1
				}
				out := rest
				if l.timestamps {
					out = line
				}
				if _, werr := io.WriteString(l.Out, out); werr != nil {
					_ = resp.Body.Close()
					return werr
				}
			}
			_ = resp.Body.Close()
			if errors.Is(err, io.EOF) {
				// The server ended the stream cleanly: nothing more to follow.
				return nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		var st apierrors.APIStatus
		if errors.As(err, &st) && st.Status().Code == http.StatusNotFound {
			return err // the sandbox is gone
		}
		if failingSince.IsZero() {
			failingSince = time.Now()
			_, _ = fmt.Fprintf(l.ErrOut, "log stream interrupted (%v); reconnecting\n", err)
		} else if time.Since(failingSince) > reconnectFor {
			return fmt.Errorf("the log stream broke and did not come back within %v: %w", reconnectFor, err)
		}
		if last != "" {
			q.Del("tailLines")
			q.Del("sinceSeconds")
			q.Set("sinceTime", last)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}
