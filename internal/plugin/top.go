package plugin

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

func (o *Options) newTopCommand() *cobra.Command {
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "top SANDBOX",
		Short: "Show a sandbox's CPU, memory, disk and network use",
		Long: `Show a sandbox's resource use as its guest sees it. CPU is measured over two
samples --interval apart; 100% is one CPU busy the whole time (as kubectl top's
cores, times 100). Memory is MemTotal - MemAvailable of MemTotal.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := parseSandbox(args[0])
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			if interval <= 0 {
				return usageErrorf(cmd, "--interval must be positive")
			}
			c, err := o.accessClient()
			if err != nil {
				return err
			}
			first, err := c.metrics(cmd.Context(), t)
			if err != nil {
				return err
			}
			select {
			case <-time.After(interval):
			case <-cmd.Context().Done():
				return cmd.Context().Err()
			}
			second, err := c.metrics(cmd.Context(), t)
			if err != nil {
				return err
			}
			return printTop(o.Out, t.Name, first, second)
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "Time between the two samples that CPU use is measured over")
	return cmd
}

func (c *accessClient) metrics(ctx context.Context, t target) (*protocol.Metrics, error) {
	var m protocol.Metrics
	if err := c.getJSON(ctx, http.MethodGet, t, "metrics", nil, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// cpuPercent is the CPU use between two samples, measured against the
// guest's own clock: 100 is one CPU busy. It is -1 when the samples say
// nothing (same uptime, or a reboot in between).
func cpuPercent(a, b *protocol.Metrics) float64 {
	dt := b.UptimeNanos - a.UptimeNanos
	dc := b.CPUNanos - a.CPUNanos
	if dt <= 0 || dc < 0 {
		return -1
	}
	return float64(dc) / float64(dt) * 100
}

func printTop(w io.Writer, name string, a, b *protocol.Metrics) error {
	cpu := "-"
	if p := cpuPercent(a, b); p >= 0 {
		cpu = fmt.Sprintf("%.1f%%", p)
	}
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	_, _ = fmt.Fprintln(tw, "NAME\tCPU\tMEMORY\tDISK READ/WRITE\tNET RX/TX\tUPTIME")
	_, _ = fmt.Fprintf(tw, "%s\t%s\t%s / %s\t%s / %s\t%s / %s\t%s\n", name, cpu,
		humanBytes(b.MemoryTotalBytes-b.MemoryAvailableBytes), humanBytes(b.MemoryTotalBytes),
		humanBytes(b.DiskReadBytes), humanBytes(b.DiskWriteBytes),
		humanBytes(b.NetRxBytes), humanBytes(b.NetTxBytes),
		time.Duration(b.UptimeNanos).Truncate(time.Second))
	return tw.Flush()
}

// humanBytes writes n in binary units (Ki, Mi, Gi, ...), as kubectl top
// writes memory.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ci", float64(n)/float64(div), "KMGTPE"[exp])
}
