package plugin

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"
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
	if l.follow {
		// A followed log has no end: the client's timeout must not cut it.
		c.http.Timeout = 0
	}
	resp, err := c.do(ctx, http.MethodGet, t, "log", q, nil)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	_, err = io.Copy(l.Out, resp.Body)
	return err
}
