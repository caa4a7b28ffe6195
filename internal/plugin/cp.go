package plugin

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// isNotFound is true for a missing path in a sandbox, not for a missing
// Sandbox (whose NotFound names the sandboxes resource).
func isNotFound(err error) bool {
	var st apierrors.APIStatus
	if !errors.As(err, &st) || !apierrors.IsNotFound(err) {
		return false
	}
	d := st.Status().Details
	return d == nil || d.Kind != "sandboxes"
}

func (o *Options) newCpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DEST",
		Short: "Copy files and directories to and from a sandbox",
		Long: `Copy a file or a directory tree between this machine and a sandbox. One of SRC
and DEST is [NAMESPACE/]SANDBOX:/ABSOLUTE/PATH, the other a local path.

The destination follows cp -r (and kubectl cp to a pod): when DEST is an
existing directory, SRC is copied into it under its own name; otherwise
DEST is the new name of SRC. This holds in both directions. (kubectl cp
from a pod instead always writes a directory's contents into DEST; here
"cp sbx:/a/dir ./existing" makes ./existing/dir, as cp -r does.)

Directories travel as a tar stream (regular files, directories and
symbolic links; permission bits kept, owners not; files copied from a
sandbox keep their modification times). A symbolic link that
points outside the destination is skipped with a warning when copying
from a sandbox.`,
		Example: `  # Upload a file and a directory
  kubectl sandbox cp ./app.py dev:/work/app.py
  kubectl sandbox cp ./src dev:/work

  # Download a directory into ./out/logs
  kubectl sandbox cp dev:/var/log ./out/logs`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, srcRemote, err := parseRemote(args[0])
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			dest, destRemote, err := parseRemote(args[1])
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			if srcRemote == destRemote {
				return usageErrorf(cmd, "exactly one of SRC and DEST must be SANDBOX:/PATH")
			}
			c, err := o.accessClient()
			if err != nil {
				return err
			}
			// Copies have no deadline of their own; interrupting ends them.
			c.http.Timeout = 0
			if srcRemote {
				return c.download(cmd.Context(), src, args[1], o.ErrOut)
			}
			return c.upload(cmd.Context(), args[0], dest)
		},
	}
}

// upload copies the local file or directory src to dest in a sandbox:
// a file with op=write, a directory as a tar stream with op=untar.
func (c *accessClient) upload(ctx context.Context, src string, dest target) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	// Into an existing directory, under src's own name (cp -r).
	info, exists, err := c.stat(ctx, dest)
	if err != nil {
		return err
	}
	if exists && info.Kind == protocol.KindDir {
		dest.Path = path.Join(dest.Path, filepath.Base(filepath.Clean(src)))
	}
	if !fi.IsDir() {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }()
		q := fileQuery(protocol.FileWrite, dest.Path, "mode", "0"+strconv.FormatUint(uint64(fi.Mode().Perm()), 8))
		resp, err := c.do(ctx, http.MethodPost, dest, "files", q, f)
		if err != nil {
			return err
		}
		return resp.Body.Close()
	}
	// The archive's entries are named base(dest)/..., extracted into
	// dir(dest), so that dest is the copy of src.
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, src, path.Base(dest.Path))) }()
	parent := dest
	parent.Path = path.Dir(dest.Path)
	resp, err := c.do(ctx, http.MethodPost, parent, "files", fileQuery(protocol.FileUntar, parent.Path), pr)
	_ = pr.Close()
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// writeTar writes a tar archive of the directory dir to w, its entries
// named prefix/<path relative to dir>. Sockets, devices and pipes are
// skipped.
func writeTar(w io.Writer, dir, prefix string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := path.Join(prefix, filepath.ToSlash(rel))
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		case fi.IsDir(), fi.Mode().IsRegular():
		default:
			return nil
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = name
		if fi.IsDir() {
			hdr.Name += "/"
		}
		// Owners are the guest user's, not this machine's.
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// download copies src in a sandbox to the local path dest: a file with
// op=read, a directory with op=tar.
func (c *accessClient) download(ctx context.Context, src target, dest string, warn io.Writer) error {
	info, exists, err := c.stat(ctx, src)
	if err != nil {
		return err
	}
	if !exists {
		return fmt.Errorf("%s: no such file or directory", src)
	}
	if di, err := os.Stat(dest); err == nil && di.IsDir() {
		dest = filepath.Join(dest, path.Base(src.Path))
	}
	if info.Kind != protocol.KindDir {
		resp, err := c.do(ctx, http.MethodGet, src, "files", fileQuery(protocol.FileRead, src.Path), nil)
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		return writeFile(dest, resp.Body, fs.FileMode(info.Mode&0o777))
	}
	resp, err := c.do(ctx, http.MethodGet, src, "files", fileQuery(protocol.FileTar, src.Path), nil)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	return readTar(resp.Body, path.Base(src.Path), dest, warn)
}

func writeFile(dest string, r io.Reader, mode fs.FileMode) error {
	f, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// readTar extracts an archive whose entries are named prefix/... into
// dest (which becomes the copy of prefix). Entries outside prefix, and
// symbolic links pointing outside dest, are skipped with a warning: the
// archive comes from inside the sandbox and is not trusted.
func readTar(r io.Reader, prefix, dest string, warn io.Writer) error {
	dest = filepath.Clean(dest)
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("failed to read the archive: %w", err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "/"))
		rel, ok := strings.CutPrefix(name, prefix)
		if !ok || (rel != "" && !strings.HasPrefix(rel, "/")) {
			_, _ = fmt.Fprintf(warn, "warning: skipping %q: outside %q\n", hdr.Name, prefix)
			continue
		}
		rel = strings.TrimPrefix(rel, "/")
		if rel != "" && !filepath.IsLocal(filepath.FromSlash(rel)) {
			_, _ = fmt.Fprintf(warn, "warning: skipping %q: not a local path\n", hdr.Name)
			continue
		}
		p := filepath.Join(dest, filepath.FromSlash(rel))
		if err := checkNoSymlinkParents(dest, p); err != nil {
			return err
		}
		mode := fs.FileMode(hdr.Mode) & fs.ModePerm
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
			if err := os.Chmod(p, mode|0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if fi, err := os.Lstat(p); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
				_ = os.Remove(p) // replace the link, never write through it
			}
			if err := writeFile(p, tr, mode); err != nil {
				return err
			}
			if !hdr.ModTime.IsZero() {
				_ = os.Chtimes(p, hdr.ModTime, hdr.ModTime) // best effort, as tar does
			}
		case tar.TypeSymlink:
			target := hdr.Linkname
			resolved := filepath.Join(filepath.Dir(p), filepath.FromSlash(target))
			if filepath.IsAbs(target) || !isWithin(dest, resolved) {
				_, _ = fmt.Fprintf(warn, "warning: skipping symlink %q -> %q: points outside %q\n", hdr.Name, target, dest)
				continue
			}
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			_ = os.Remove(p)
			if err := os.Symlink(target, p); err != nil {
				return err
			}
		default:
			_, _ = fmt.Fprintf(warn, "warning: skipping %q: not a file, directory or symlink\n", hdr.Name)
		}
	}
}

func isWithin(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && filepath.IsLocal(rel)
}

// checkNoSymlinkParents refuses to write p through a symbolic link in
// one of its parents below dest (one an earlier entry may have made).
func checkNoSymlinkParents(dest, p string) error {
	rel, err := filepath.Rel(dest, filepath.Dir(p))
	if err != nil || rel == "." {
		return err
	}
	cur := dest
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("refusing to write %s through the symbolic link %s", p, cur)
		}
	}
	return nil
}
