package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// The file commands: one files-subresource request each (GET for reads,
// POST for changes, as RBAC on sandboxes/files tells them apart).

// fileQuery is the files subresource's query for op on path.
func fileQuery(op protocol.FileOp, path string, extra ...string) url.Values {
	q := url.Values{"op": {string(op)}, "path": {path}}
	for i := 0; i+1 < len(extra); i += 2 {
		q.Set(extra[i], extra[i+1])
	}
	return q
}

// fileOp runs a JSON-answered file operation.
func (c *accessClient) fileOp(ctx context.Context, t target, op protocol.FileOp, extra ...string) (*protocol.FileResult, error) {
	method := http.MethodPost
	switch op {
	case protocol.FileList, protocol.FileStat, protocol.FileExists:
		method = http.MethodGet
	}
	var res protocol.FileResult
	if err := c.getJSON(ctx, method, t, "files", fileQuery(op, t.Path, extra...), &res); err != nil {
		return nil, err
	}
	if res.Error != nil {
		// The agent maps guest errors to statuses; this is a safety net.
		return nil, fmt.Errorf("%s %s: %s", op, t, res.Error.Message)
	}
	return &res, nil
}

// stat describes a path in a sandbox; exists is false (and err nil) when
// nothing is there.
func (c *accessClient) stat(ctx context.Context, t target) (info *protocol.FileInfo, exists bool, err error) {
	res, err := c.fileOp(ctx, t, protocol.FileStat)
	if isNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if res.Stat == nil {
		return nil, false, fmt.Errorf("stat %s: the answer has no stat", t)
	}
	return res.Stat, true, nil
}

// fileMode turns the guest's kind and mode bits into an fs.FileMode, for
// ls-style printing.
func fileMode(fi protocol.FileInfo) fs.FileMode {
	m := fs.FileMode(fi.Mode & 0o777)
	for bit, flag := range map[uint32]fs.FileMode{0o4000: fs.ModeSetuid, 0o2000: fs.ModeSetgid, 0o1000: fs.ModeSticky} {
		if fi.Mode&bit != 0 {
			m |= flag
		}
	}
	switch fi.Kind {
	case protocol.KindDir:
		m |= fs.ModeDir
	case protocol.KindSymlink:
		m |= fs.ModeSymlink
	case protocol.KindOther:
		m |= fs.ModeIrregular
	}
	return m
}

func modTime(fi protocol.FileInfo) time.Time { return time.Unix(0, fi.ModTimeNanos) }

func (o *Options) newLsCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "ls SANDBOX:/PATH",
		Short:   "List a directory in a sandbox",
		Example: "  kubectl sandbox ls dev:/etc",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := mustRemote(args[0])
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			c, err := o.accessClient()
			if err != nil {
				return err
			}
			res, err := c.fileOp(cmd.Context(), t, protocol.FileList)
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(o.Out, res.Entries)
			}
			return printEntries(o.Out, res.Entries)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "Output format: json, or empty for a table")
	return cmd
}

// printEntries writes ls's table: mode, size, modification time, name.
func printEntries(w io.Writer, entries []protocol.FileInfo) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	_, _ = fmt.Fprintln(tw, "MODE\tSIZE\tMODIFIED\tNAME")
	for _, e := range entries {
		name := e.Name
		if e.Link != "" {
			name += " -> " + e.Link
		}
		_, _ = fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", fileMode(e), e.Size, modTime(e).UTC().Format(time.RFC3339), name)
	}
	return tw.Flush()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (o *Options) newStatCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "stat SANDBOX:/PATH",
		Short: "Describe a file in a sandbox (a final symlink is not followed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := mustRemote(args[0])
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			c, err := o.accessClient()
			if err != nil {
				return err
			}
			res, err := c.fileOp(cmd.Context(), t, protocol.FileStat)
			if err != nil {
				return err
			}
			if res.Stat == nil {
				return fmt.Errorf("stat %s: the answer has no stat", t)
			}
			if output == "json" {
				return writeJSON(o.Out, res.Stat)
			}
			s := res.Stat
			tw := tabwriter.NewWriter(o.Out, 0, 8, 1, ' ', 0)
			_, _ = fmt.Fprintf(tw, "Path:\t%s\n", s.Name)
			_, _ = fmt.Fprintf(tw, "Kind:\t%s\n", s.Kind)
			if s.Link != "" {
				_, _ = fmt.Fprintf(tw, "Link:\t%s\n", s.Link)
			}
			_, _ = fmt.Fprintf(tw, "Size:\t%d\n", s.Size)
			_, _ = fmt.Fprintf(tw, "Mode:\t%s (%04o)\n", fileMode(*s), s.Mode)
			_, _ = fmt.Fprintf(tw, "Uid/Gid:\t%d/%d\n", s.UID, s.GID)
			_, _ = fmt.Fprintf(tw, "Modified:\t%s\n", modTime(*s).UTC().Format(time.RFC3339Nano))
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "Output format: json, or empty for text")
	return cmd
}

func (o *Options) newMkdirCommand() *cobra.Command {
	var parents bool
	var mode string
	cmd := &cobra.Command{
		Use:   "mkdir [-p] SANDBOX:/PATH...",
		Short: "Make directories in a sandbox",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			extra := []string{}
			if parents {
				extra = append(extra, "recursive", "true")
			}
			if mode != "" {
				if _, err := strconv.ParseUint(mode, 8, 32); err != nil {
					return usageErrorf(cmd, "--mode must be octal, e.g. 0755")
				}
				extra = append(extra, "mode", mode)
			}
			return o.eachRemote(cmd, args, protocol.FileMkdir, extra...)
		},
	}
	cmd.Flags().BoolVarP(&parents, "parents", "p", false, "Make parent directories as needed; no error if the directory exists")
	cmd.Flags().StringVar(&mode, "mode", "", "Permission bits in octal (default 0755)")
	return cmd
}

func (o *Options) newRmCommand() *cobra.Command {
	var recursive, force bool
	cmd := &cobra.Command{
		Use:   "rm [-r] [-f] SANDBOX:/PATH...",
		Short: "Remove files or directories in a sandbox",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			extra := []string{}
			if recursive {
				extra = append(extra, "recursive", "true")
			}
			err := o.eachRemote(cmd, args, protocol.FileRemove, extra...)
			if force && isNotFound(err) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "Remove directories and their contents")
	cmd.Flags().BoolVarP(&force, "force", "f", false, "Ignore paths that do not exist")
	return cmd
}

// eachRemote runs op on every SANDBOX:/PATH argument, in order, stopping
// at the first failure.
func (o *Options) eachRemote(cmd *cobra.Command, args []string, op protocol.FileOp, extra ...string) error {
	targets := make([]target, 0, len(args))
	for _, a := range args {
		t, err := mustRemote(a)
		if err != nil {
			return usageErrorf(cmd, "%v", err)
		}
		targets = append(targets, t)
	}
	c, err := o.accessClient()
	if err != nil {
		return err
	}
	for _, t := range targets {
		if _, err := c.fileOp(cmd.Context(), t, op, extra...); err != nil {
			return err
		}
	}
	return nil
}

func (o *Options) newMvCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "mv SANDBOX:/SRC [SANDBOX:]/DEST",
		Short: "Rename a file or directory in a sandbox",
		Long: `Rename a file or directory inside one sandbox (the guest's rename: DEST is the
new path, not a directory to move into).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := mustRemote(args[0])
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			dest, ok, err := parseRemote(args[1])
			switch {
			case err != nil:
				return usageErrorf(cmd, "%v", err)
			case !ok:
				dest = target{Namespace: src.Namespace, Name: src.Name, Path: args[1]}
			case dest.Name != src.Name || dest.Namespace != src.Namespace:
				return usageErrorf(cmd, "mv works inside one sandbox: use cp to copy between sandboxes")
			}
			if len(dest.Path) == 0 || dest.Path[0] != '/' {
				return usageErrorf(cmd, "the destination must be an absolute path")
			}
			c, err := o.accessClient()
			if err != nil {
				return err
			}
			_, err = c.fileOp(cmd.Context(), src, protocol.FileRename, "dest", dest.Path)
			return err
		},
	}
}
