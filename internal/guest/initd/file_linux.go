package initd

import (
	"archive/tar"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// File operations run in the file helper: sandbox-init re-executed with
// argv[0] FileHelperArg0, which applies the same spec as the exec helper
// (chroot into the root, the user's groups and ids) and then performs the
// operation itself, so that permission checks, symbolic links and mounts
// behave exactly as for the sandbox's processes. The helper streams read
// and tar data on its stdout, consumes write and untar data on its stdin,
// and writes its FileResult as JSON on its stderr before it exits (a Go
// panic there instead reads as an Internal error with the panic's text).
// The sandbox's rlimits do not apply to file operations: they are the
// host's, not the workload's.

// FileHelperArg0 is argv[0] of sandbox-init re-executed as its file
// helper; cmd/sandbox-init checks it before anything else.
const FileHelperArg0 = "sandbox-init-file"

// streamsIn and streamsOut are the operations with data from and to the
// host.
var (
	streamsIn  = map[protocol.FileOp]bool{protocol.FileWrite: true, protocol.FileUntar: true}
	streamsOut = map[protocol.FileOp]bool{protocol.FileRead: true, protocol.FileTar: true}
)

// startFile starts req in root through the file helper, as req.User (the
// Start's user by default).
func startFile(root string, st protocol.Start, req protocol.FileRequest, logf func(string, ...any)) (*FileProcess, error) {
	p, err := guestPath(req.Path)
	if err != nil {
		return nil, &kindError{Kind: protocol.ErrInvalid, Msg: err.Error()}
	}
	req.Path = p
	if req.Op == protocol.FileCopy || req.Op == protocol.FileRename {
		d, err := guestPath(req.Dest)
		if err != nil {
			return nil, &kindError{Kind: protocol.ErrInvalid, Msg: "dest: " + err.Error()}
		}
		req.Dest = d
	}
	cred, err := ResolveUser(root, cmp.Or(req.User, st.User))
	if err != nil {
		return nil, &kindError{Kind: protocol.ErrInvalid, Msg: err.Error()}
	}
	spec := execSpec{Root: root, Dir: "/", UID: cred.UID, GID: cred.GID, Groups: cred.Groups, File: &req}

	var parentEnds, childEnds []*os.File
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			_ = f.Close()
		}
	}
	pipe := func() (r, w *os.File, err error) { return os.Pipe() }
	hio := helperIO{Arg0: FileHelperArg0}
	proc := &FileProcess{}
	if streamsIn[req.Op] {
		r, w, err := pipe()
		if err != nil {
			return nil, err
		}
		childEnds, parentEnds = append(childEnds, r), append(parentEnds, w)
		hio.Stdin, proc.Input = r, w
	}
	if streamsOut[req.Op] {
		r, w, err := pipe()
		if err != nil {
			closeAll(childEnds)
			closeAll(parentEnds)
			return nil, err
		}
		childEnds, parentEnds = append(childEnds, w), append(parentEnds, r)
		hio.Stdout, proc.Output = w, r
	}
	er, ew, err := pipe()
	if err != nil {
		closeAll(childEnds)
		closeAll(parentEnds)
		return nil, err
	}
	childEnds, parentEnds = append(childEnds, ew), append(parentEnds, er)
	hio.Stderr = ew
	cmd, err := startHelperWith(spec, hio)
	closeAll(childEnds)
	if err != nil {
		closeAll(parentEnds)
		return nil, err
	}
	w := newWaiter(cmd, logf, func() { closeAll(parentEnds) })
	proc.Kill = func() { _ = w.signal(cmd.Process.Pid, unix.SIGKILL) }
	proc.Result = func() protocol.FileResult {
		out, _ := io.ReadAll(er)
		exit := w.wait()
		var res protocol.FileResult
		if err := json.Unmarshal(out, &res); err != nil {
			msg := strings.TrimSpace(string(out))
			if msg == "" {
				msg = fmt.Sprintf("the file helper ended with code %d, signal %q, and no result", exit.Code, exit.Signal)
			}
			return protocol.FileResult{Error: &protocol.Error{Kind: protocol.ErrInternal, Message: msg}}
		}
		return res
	}
	return proc, nil
}

// FileHelperMain is sandbox-init run as its file helper (argv[0]
// FileHelperArg0). It does not return.
func FileHelperMain() {
	spec, err := readHelperSpec()
	if err == nil && spec.File == nil {
		err = errors.New("file helper: no operation in its spec")
	}
	if err == nil {
		err = enterSpec(spec)
	}
	if err != nil {
		writeHelperReport(err)
		os.Exit(startFailedCode)
	}
	// Started: the parent's startHelper reads EOF on the error pipe.
	_ = os.NewFile(helperErrorFd, "exec-error").Close()
	// Modes are the request's, not reduced by a umask.
	syscall.Umask(0)
	res := runFileOp(*spec.File, os.Stdin, os.Stdout)
	_ = os.Stdout.Close()
	b, _ := json.Marshal(res)
	_, _ = os.Stderr.Write(b)
	os.Exit(0)
}

// readHelperSpec reads the helper's spec from its fd 3 and makes both
// helper pipes close-on-exec.
func readHelperSpec() (execSpec, error) {
	for _, fd := range []int{helperSpecFd, helperErrorFd} {
		unix.CloseOnExec(fd)
	}
	specFile := os.NewFile(helperSpecFd, "exec-spec")
	var spec execSpec
	err := json.NewDecoder(specFile).Decode(&spec)
	_ = specFile.Close()
	if err != nil {
		return execSpec{}, fmt.Errorf("exec helper: reading its spec: %w", err)
	}
	return spec, nil
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// runFileOp performs req in this process's root, reading streamed data
// from in and writing it to out. Paths are the request's, already checked
// absolute and free of "..".
func runFileOp(req protocol.FileRequest, in io.Reader, out io.Writer) protocol.FileResult {
	var res protocol.FileResult
	var err error
	switch req.Op {
	case protocol.FileRead:
		res.Bytes, err = readFile(req, out)
	case protocol.FileWrite:
		res.Bytes, err = writeFile(req, in)
	case protocol.FileList:
		res.Entries, err = listDir(req.Path)
	case protocol.FileStat:
		var fi fs.FileInfo
		if fi, err = os.Lstat(req.Path); err == nil {
			info := fileInfo(req.Path, fi)
			info.Name = req.Path
			res.Stat = &info
		}
	case protocol.FileMkdir:
		mode := unixMode(modeOr(req.Mode, 0o755))
		if req.Recursive {
			err = os.MkdirAll(req.Path, mode)
		} else {
			err = os.Mkdir(req.Path, mode)
		}
	case protocol.FileRemove:
		if _, err = os.Lstat(req.Path); err == nil {
			if req.Recursive {
				err = os.RemoveAll(req.Path)
			} else {
				err = os.Remove(req.Path)
			}
		}
	case protocol.FileCopy:
		err = copyPath(req.Path, req.Dest, req.Recursive)
	case protocol.FileRename:
		err = os.Rename(req.Path, req.Dest)
	case protocol.FileExists:
		// A dangling symlink exists: it is an entry of its directory.
		_, err = os.Lstat(req.Path)
		res.Exists = err == nil
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
	case protocol.FileTar:
		cw := &countingWriter{w: out}
		err = tarPath(req.Path, cw)
		res.Bytes = cw.n
	case protocol.FileUntar:
		res.Bytes, err = untar(req.Path, in)
	default:
		err = &kindError{Kind: protocol.ErrInvalid, Msg: fmt.Sprintf("unknown file operation %q", req.Op)}
	}
	if err != nil {
		res.Error = protoError(err)
	}
	return res
}

// readFile streams req.Path from req.Offset, at most req.Length bytes.
func readFile(req protocol.FileRequest, out io.Writer) (int64, error) {
	f, err := os.Open(req.Path)
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.IsDir() {
		return 0, &fs.PathError{Op: "read", Path: req.Path, Err: syscall.EISDIR}
	}
	if req.Offset > 0 {
		if _, err := f.Seek(req.Offset, io.SeekStart); err != nil {
			return 0, err
		}
	}
	var r io.Reader = f
	if req.Length > 0 {
		r = io.LimitReader(f, req.Length)
	}
	n, err := io.Copy(out, r)
	if err != nil {
		return n, fmt.Errorf("read %s: %w", req.Path, err)
	}
	return n, nil
}

// writeFile writes the streamed bytes to req.Path.
func writeFile(req protocol.FileRequest, in io.Reader) (int64, error) {
	flags := os.O_WRONLY | os.O_CREATE
	switch {
	case req.Append:
		flags |= os.O_APPEND
	default:
		flags |= os.O_TRUNC
	}
	if req.CreateOnly {
		flags |= os.O_EXCL
	}
	f, err := os.OpenFile(req.Path, flags, unixMode(modeOr(req.Mode, 0o644)))
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, in)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("write %s: %w", req.Path, err)
	}
	return n, nil
}

// listDir lists dir, sorted by name.
func listDir(dir string) ([]protocol.FileInfo, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := make([]protocol.FileInfo, 0, len(des))
	for _, de := range des {
		fi, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, fileInfo(path.Join(dir, de.Name()), fi))
	}
	slices.SortFunc(out, func(a, b protocol.FileInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// fileInfo describes the file at p (for a symlink's target).
func fileInfo(p string, fi fs.FileInfo) protocol.FileInfo {
	info := protocol.FileInfo{Name: fi.Name(), Size: fi.Size(), Mode: permBits(fi.Mode()), ModTimeNanos: fi.ModTime().UnixNano()}
	switch {
	case fi.Mode().IsRegular():
		info.Kind = protocol.KindFile
	case fi.IsDir():
		info.Kind = protocol.KindDir
	case fi.Mode()&fs.ModeSymlink != 0:
		info.Kind = protocol.KindSymlink
		info.Link, _ = os.Readlink(p)
	default:
		info.Kind = protocol.KindOther
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.UID, info.GID = st.Uid, st.Gid
	}
	return info
}

// permBits is m's permission bits with setuid, setgid and sticky, as
// Unix numbers them.
func permBits(m fs.FileMode) uint32 {
	b := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

// copyPath copies src to dst: a file (its content and mode, replacing a
// file at dst), a symlink (as a symlink), or with recursive a directory
// tree (merged into dst when it exists).
func copyPath(src, dst string, recursive bool) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		if !recursive {
			return &fs.PathError{Op: "copy", Path: src, Err: syscall.EISDIR}
		}
		if dst == src || strings.HasPrefix(dst, src+"/") {
			return &kindError{Kind: protocol.ErrInvalid, Msg: fmt.Sprintf("copy %s: into itself (%s)", src, dst)}
		}
		if err := os.Mkdir(dst, fi.Mode().Perm()); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		des, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, de := range des {
			if err := copyPath(path.Join(src, de.Name()), path.Join(dst, de.Name()), true); err != nil {
				return err
			}
		}
		return os.Chmod(dst, fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return os.Symlink(target, dst)
	case fi.Mode().IsRegular():
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer func() { _ = in.Close() }()
		out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
		if err != nil {
			return err
		}
		_, err = io.Copy(out, in)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("copy %s to %s: %w", src, dst, err)
		}
		return os.Chmod(dst, fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
	default:
		return &kindError{Kind: protocol.ErrInvalid, Msg: fmt.Sprintf("copy %s: not a file, directory or symlink", src)}
	}
}

// tarPath writes a tar archive of p to w, entries named relative to p's
// parent (`tar -C dir(p) -c base(p)`). Symlinks are archived as links.
func tarPath(p string, w io.Writer) error {
	if _, err := os.Lstat(p); err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	parent := path.Dir(p)
	err := filepath.WalkDir(p, func(file string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := de.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(file); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return fmt.Errorf("tar %s: %w", file, err)
		}
		name := strings.TrimPrefix(strings.TrimPrefix(file, parent), "/")
		if fi.IsDir() {
			name += "/"
		}
		hdr.Name = name
		hdr.Uname, hdr.Gname = "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(file)
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }()
		if _, err := io.Copy(tw, f); err != nil {
			return fmt.Errorf("tar %s: %w", file, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// untar extracts the tar stream in into the directory dir (created if
// needed). An entry whose name is absolute, climbs with "..", or would be
// reached through a symlink (one in the archive or already in dir) is
// refused: extraction never writes outside dir. Modes and modification
// times are applied; owners are not (the operation runs as its user).
func untar(dir string, in io.Reader) (int64, error) {
	cr := &countingReader{r: in}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	tr := tar.NewReader(cr)
	type dirTime struct {
		path string
		t    time.Time
	}
	var dirTimes []dirTime
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return cr.n, fmt.Errorf("untar into %s: %w", dir, err)
		}
		target, err := untarTarget(dir, hdr.Name)
		if err != nil {
			return cr.n, err
		}
		if target == dir {
			continue // "./"
		}
		mode := fs.FileMode(hdr.Mode) & fs.ModePerm
		if hdr.Mode&0o4000 != 0 {
			mode |= fs.ModeSetuid
		}
		if hdr.Mode&0o2000 != 0 {
			mode |= fs.ModeSetgid
		}
		if hdr.Mode&0o1000 != 0 {
			mode |= fs.ModeSticky
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(target, mode.Perm()); err != nil && !errors.Is(err, fs.ErrExist) {
				return cr.n, err
			}
			if err := os.Chmod(target, mode); err != nil {
				return cr.n, err
			}
			dirTimes = append(dirTimes, dirTime{target, hdr.ModTime})
			continue
		case tar.TypeReg: // the reader reports the old TypeRegA as TypeReg
			if err := removeNonDir(target); err != nil {
				return cr.n, err
			}
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode.Perm())
			if err != nil {
				return cr.n, err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Chmod(target, mode)
			}
			if err != nil {
				return cr.n, fmt.Errorf("untar %s: %w", target, err)
			}
		case tar.TypeSymlink:
			if err := removeNonDir(target); err != nil {
				return cr.n, err
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return cr.n, err
			}
			continue // no times on the link itself
		case tar.TypeLink:
			src, err := untarTarget(dir, hdr.Linkname)
			if err != nil {
				return cr.n, err
			}
			if err := removeNonDir(target); err != nil {
				return cr.n, err
			}
			if err := os.Link(src, target); err != nil {
				return cr.n, err
			}
			continue
		default:
			// Devices and FIFOs need privileges a user does not have:
			// skipped, as tar does for a non-root user.
			continue
		}
		_ = os.Chtimes(target, hdr.ModTime, hdr.ModTime)
	}
	// Directories last: their entries changed their times.
	for _, d := range slices.Backward(dirTimes) {
		_ = os.Chtimes(d.path, d.t, d.t)
	}
	return cr.n, nil
}

// untarTarget is where the entry name lands under dir, or an Invalid
// error when it would leave dir: an absolute name, a ".." component, or an
// existing symlink on the way (an earlier entry may have planted one).
func untarTarget(dir, name string) (string, error) {
	escape := func(why string) error {
		return &kindError{Kind: protocol.ErrInvalid, Msg: fmt.Sprintf("untar into %s: entry %q %s", dir, name, why)}
	}
	if path.IsAbs(name) {
		return "", escape("is absolute")
	}
	clean := path.Clean(name)
	for _, c := range strings.Split(clean, "/") {
		if c == ".." {
			return "", escape(`climbs with ".."`)
		}
	}
	if clean == "." {
		return dir, nil
	}
	parts := strings.Split(clean, "/")
	cur := dir
	for _, c := range parts[:len(parts)-1] {
		cur = path.Join(cur, c)
		fi, err := os.Lstat(cur)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// A parent the archive lists later (or never): created here.
			if err := os.Mkdir(cur, 0o755); err != nil {
				return "", err
			}
		case err != nil:
			return "", err
		case fi.Mode()&fs.ModeSymlink != 0:
			return "", escape("goes through the symlink " + cur)
		case !fi.IsDir():
			return "", &fs.PathError{Op: "untar", Path: cur, Err: syscall.ENOTDIR}
		}
	}
	return path.Join(dir, clean), nil
}

// removeNonDir removes what is at p unless it is a directory (or
// nothing), so that an entry replaces a file or a symlink instead of
// writing through it.
func removeNonDir(p string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return &fs.PathError{Op: "untar", Path: p, Err: syscall.EISDIR}
	}
	return os.Remove(p)
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}
