package initd

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// The exec helper: how sandbox-init starts a process in the workload's
// root with its own rlimits and user.
//
// os/exec cannot set a child's rlimits, and setting them on PID 1 first
// would limit sandbox-init itself (and race with every other process it
// starts). So, like runc's init, sandbox-init re-executes itself
// (/proc/self/exe, the initramfs's /init, before any chroot) with argv[0]
// ExecHelperArg0. The helper reads an execSpec from fd 3, applies it to
// itself (rlimits, root, working directory, groups, user) and execs the
// workload's program: the same process, so the parent's exec.Cmd waits
// for the program itself and its PID is the program's. A failure before
// the exec is written to fd 4, a close-on-exec pipe: the parent reads EOF
// with nothing when the exec succeeded, the error text otherwise, so a bad
// user or a missing working directory fails the start, not the program.

// ExecHelperArg0 is argv[0] of sandbox-init re-executed as its exec
// helper; cmd/sandbox-init checks it before anything else.
const ExecHelperArg0 = "sandbox-init-exec"

// The helper's extra file descriptors (exec.Cmd.ExtraFiles start at 3).
const (
	helperSpecFd  = 3
	helperErrorFd = 4
)

// helperExe is the executable re-executed as the helper: this one.
const helperExe = "/proc/self/exe"

// execSpec is what the exec helper applies before it execs Path.
type execSpec struct {
	// Root is the workload's root on this machine (/mnt/root).
	Root string `json:"root"`
	// Handoff makes the helper, which the parent started in new PID and
	// mount namespaces, move Root onto "/" (what switch_root does; pivot_root
	// is not allowed from an initramfs) and mount a /proc of its PID
	// namespace, for an init system run as that namespace's PID 1.
	Handoff bool `json:"handoff,omitempty"`
	// Dir is the working directory inside Root.
	Dir string `json:"dir"`
	// Path is the program inside Root; Argv and Env are its own.
	Path string   `json:"path"`
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	// UID, GID and Groups are who the program runs as.
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups"`
	// Rlimits are set before the exec (as root, so hard limits may rise).
	Rlimits []rlimit `json:"rlimits,omitempty"`
	// File is the operation of the file helper (FileHelperArg0), which
	// runs it itself instead of an exec.
	File *protocol.FileRequest `json:"file,omitempty"`
}

// startHelper starts the exec helper for spec, with stdout and stderr as
// the program's, in new PID and mount namespaces when spec.Handoff is set.
// It returns once the program runs (the helper exec'd it) or with the
// helper's error. Wait on the returned command for the program's end.
func startHelper(spec execSpec, stdout, stderr io.Writer) (*exec.Cmd, error) {
	return startHelperWith(spec, helperIO{Stdout: stdout, Stderr: stderr})
}

// helperIO is the standard I/O of a program the exec helper starts.
type helperIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Ctty makes the program's stdin (a pty's slave) its controlling
	// terminal, in the new session the helper always starts.
	Ctty bool
	// Arg0 is the helper's argv[0]: ExecHelperArg0 unless another mode of
	// the helper (FileHelperArg0) is wanted.
	Arg0 string
}

// startHelperWith is startHelper with every stream and the controlling
// terminal chosen. The helper's error report is JSON (helperReport), so
// that the parent learns the error's kind (a missing program is NotFound,
// one that is not executable PermissionDenied).
func startHelperWith(spec execSpec, hio helperIO) (*exec.Cmd, error) {
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("exec helper: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		_ = specR.Close()
		_ = specW.Close()
		return nil, fmt.Errorf("exec helper: %w", err)
	}
	defer func() { _ = errR.Close() }()
	attr := &syscall.SysProcAttr{Setsid: true, Setctty: hio.Ctty}
	if spec.Handoff {
		attr.Cloneflags = syscall.CLONE_NEWPID | syscall.CLONE_NEWNS
	}
	cmd := &exec.Cmd{
		Path: helperExe, Args: []string{cmp.Or(hio.Arg0, ExecHelperArg0)},
		// The helper's own environment is empty: the program gets spec.Env.
		Env:   []string{},
		Stdin: hio.Stdin, Stdout: hio.Stdout, Stderr: hio.Stderr,
		ExtraFiles:  []*os.File{specR, errW},
		SysProcAttr: attr,
	}
	err = cmd.Start()
	// The child has its copies; the parent's would keep the pipes open.
	_ = specR.Close()
	_ = errW.Close()
	if err != nil {
		_ = specW.Close()
		return nil, fmt.Errorf("starting the exec helper: %w", err)
	}
	// The helper reads the whole spec before anything else, so this write
	// cannot block for long; if the helper died, it fails with EPIPE.
	werr := json.NewEncoder(specW).Encode(spec)
	_ = specW.Close()
	msg, rerr := io.ReadAll(errR)
	if len(msg) > 0 || rerr != nil || werr != nil {
		_ = cmd.Wait()
		if len(msg) == 0 {
			return nil, fmt.Errorf("exec helper: %w", errors.Join(werr, rerr, errors.New("exited with no report")))
		}
		return nil, parseHelperReport(msg)
	}
	return cmd, nil
}

// helperReport is what the helper writes to its error pipe on failure.
type helperReport struct {
	Message string             `json:"message"`
	Kind    protocol.ErrorKind `json:"kind,omitempty"`
}

// parseHelperReport turns the helper's report into an error carrying its
// kind (plain text, from an older helper, is an Internal error).
func parseHelperReport(msg []byte) error {
	var r helperReport
	if err := json.Unmarshal(msg, &r); err != nil || r.Message == "" {
		return &kindError{Kind: protocol.ErrInternal, Msg: string(msg)}
	}
	return &kindError{Kind: r.Kind, Msg: r.Message}
}

// writeHelperReport writes err, with its kind, to the helper's error pipe.
func writeHelperReport(err error) {
	errPipe := os.NewFile(helperErrorFd, "exec-error")
	b, _ := json.Marshal(helperReport{Message: err.Error(), Kind: errorKind(err)})
	_, _ = errPipe.Write(b)
}

// ExecHelperMain is sandbox-init run as its exec helper (argv[0]
// ExecHelperArg0): it applies the spec on fd 3 and execs the program. It
// does not return: on failure it writes the error to fd 4 and exits with
// startFailedCode.
func ExecHelperMain() {
	err := execHelper()
	writeHelperReport(err)
	os.Exit(startFailedCode)
}

// execHelper returns only on failure.
func execHelper() error {
	// Neither pipe may leak into the program: a leaked error pipe would
	// make the parent wait for the program's end.
	for _, fd := range []int{helperSpecFd, helperErrorFd} {
		unix.CloseOnExec(fd)
	}
	specFile := os.NewFile(helperSpecFd, "exec-spec")
	var spec execSpec
	err := json.NewDecoder(specFile).Decode(&spec)
	_ = specFile.Close()
	if err != nil {
		return fmt.Errorf("exec helper: reading its spec: %w", err)
	}
	if err := enterSpec(spec); err != nil {
		return err
	}
	if err := syscall.Exec(spec.Path, spec.Argv, spec.Env); err != nil {
		return fmt.Errorf("exec %s: %w", spec.Path, err)
	}
	return errors.New("exec returned without an error") // unreachable
}

// enterSpec applies spec to this process: rlimits, root, working
// directory, groups and user.
func enterSpec(spec execSpec) error {
	for _, l := range spec.Rlimits {
		// syscall.Setrlimit, not unix.Setrlimit: it tells syscall.Exec not
		// to restore the NOFILE soft limit Go raised at start-up.
		if err := syscall.Setrlimit(l.Resource, &syscall.Rlimit{Cur: l.Cur, Max: l.Max}); err != nil {
			return fmt.Errorf("setting rlimit %s to %s/%s: %w", rlimitName(l.Resource), limitString(l.Cur), limitString(l.Max), err)
		}
	}
	if spec.Handoff {
		if err := enterHandoffRoot(spec.Root); err != nil {
			return err
		}
	} else if err := syscall.Chroot(spec.Root); err != nil {
		return fmt.Errorf("chroot to %s: %w", spec.Root, err)
	}
	if err := syscall.Chdir(spec.Dir); err != nil {
		// The working directory is the request's: a bad one is Invalid.
		return &kindError{Kind: protocol.ErrInvalid, Msg: fmt.Sprintf("working directory %s: %v", spec.Dir, err)}
	}
	groups := make([]int, len(spec.Groups))
	for i, g := range spec.Groups {
		groups[i] = int(g)
	}
	// Groups, then group, then user: after setuid nothing else is allowed.
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setting supplementary groups %v: %w", spec.Groups, err)
	}
	if err := syscall.Setgid(int(spec.GID)); err != nil {
		return fmt.Errorf("setting group %d: %w", spec.GID, err)
	}
	if err := syscall.Setuid(int(spec.UID)); err != nil {
		return fmt.Errorf("setting user %d: %w", spec.UID, err)
	}
	return nil
}

// enterHandoffRoot makes root the root of the helper's own mount namespace
// and mounts a /proc that shows its own PID namespace (an init system reads
// /proc/1 and expects to find itself). The guest's namespace is untouched:
// propagation is made private first.
func enterHandoffRoot(root string) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making the mounts private: %w", err)
	}
	// MS_MOVE needs a mount point; a recursive bind of root onto itself is
	// one and keeps what is mounted below it (proc, sys, dev, volumes).
	if err := unix.Mount(root, root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("binding %s onto itself: %w", root, err)
	}
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("entering %s: %w", root, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving %s onto /: %w", root, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	// The /proc inherited from the guest shows the guest's PID namespace.
	if err := unix.Unmount("/proc", unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting the guest's /proc: %w", err)
	}
	if err := os.MkdirAll("/proc", 0o555); err != nil {
		return err
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting /proc for the init's PID namespace: %w", err)
	}
	return nil
}

// rlimitName is the protocol name of a resource number, for messages.
func rlimitName(res int) string {
	for name, r := range rlimitResources {
		if r == res {
			return name
		}
	}
	return strconv.Itoa(res)
}

// limitString formats a limit, "unlimited" for RLIM_INFINITY.
func limitString(v uint64) string {
	if v == unix.RLIM_INFINITY {
		return "unlimited"
	}
	return strconv.FormatUint(v, 10)
}
