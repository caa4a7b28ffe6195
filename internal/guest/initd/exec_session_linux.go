package initd

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// Default window of a tty exec whose Exec gives none.
const (
	defaultRows = 24
	defaultCols = 80
)

// execSpecFor resolves ex in root, with the Start's Env, Dir and User as
// defaults and its rlimits: an exec runs exactly as the main process
// would. Unlike the main process's, a missing working directory is not
// created (Invalid): an exec must not change the root behind the host's
// back. Under an init hand-off (Start.Init) an exec still runs in the
// guest's PID and mount namespaces, chrooted into the root: it sees the
// init's files, not its PID namespace.
func execSpecFor(root string, st protocol.Start, ex protocol.Exec) (execSpec, error) {
	env := ex.Env
	if len(env) == 0 {
		env = st.Env
	}
	rlimits, err := parseRlimits(st.Rlimits)
	if err != nil {
		return execSpec{}, &kindError{Kind: protocol.ErrInvalid, Msg: err.Error()}
	}
	cred, err := ResolveUser(root, cmp.Or(ex.User, st.User))
	if err != nil {
		return execSpec{}, &kindError{Kind: protocol.ErrInvalid, Msg: err.Error()}
	}
	dir, err := guestPath(cmp.Or(ex.Dir, st.Dir, "/"))
	if err != nil {
		return execSpec{}, &kindError{Kind: protocol.ErrInvalid, Msg: "working directory: " + err.Error()}
	}
	argv0, err := LookPath(root, ex.Argv[0], env)
	if err != nil {
		return execSpec{}, &kindError{Kind: protocol.ErrNotFound, Msg: err.Error()}
	}
	return execSpec{Root: root, Dir: dir, Path: argv0, Argv: ex.Argv, Env: withHome(env, cred.Home),
		UID: cred.UID, GID: cred.GID, Groups: cred.Groups, Rlimits: rlimits}, nil
}

// startExec starts ex's process in root through the exec helper, on pipes
// or on a new pty.
func startExec(root string, st protocol.Start, ex protocol.Exec, logf func(string, ...any)) (*ExecProcess, error) {
	spec, err := execSpecFor(root, st, ex)
	if err != nil {
		return nil, err
	}
	if ex.Tty {
		return startTtyExec(spec, ex, logf)
	}
	var parentEnds, childEnds []*os.File
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			_ = f.Close()
		}
	}
	fail := func(err error) (*ExecProcess, error) {
		closeAll(parentEnds)
		closeAll(childEnds)
		return nil, err
	}
	hio := helperIO{}
	proc := &ExecProcess{}
	if ex.Stdin {
		r, w, err := os.Pipe()
		if err != nil {
			return fail(err)
		}
		childEnds, parentEnds = append(childEnds, r), append(parentEnds, w)
		hio.Stdin, proc.Stdin = r, w
	} else {
		null, err := os.Open(os.DevNull)
		if err != nil {
			return fail(err)
		}
		childEnds = append(childEnds, null)
		hio.Stdin = null
	}
	or, ow, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	childEnds, parentEnds = append(childEnds, ow), append(parentEnds, or)
	er, ew, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	childEnds, parentEnds = append(childEnds, ew), append(parentEnds, er)
	hio.Stdout, hio.Stderr = ow, ew
	proc.Stdout, proc.Stderr = or, er
	cmd, err := startHelperWith(spec, hio)
	closeAll(childEnds)
	childEnds = nil
	if err != nil {
		return fail(err)
	}
	pid := cmd.Process.Pid
	w := newWaiter(cmd, logf, func() { closeAll(parentEnds) })
	proc.PID = pid
	// Setsid made the process a group leader: signals go to its group.
	proc.Signal = func(sig unix.Signal) error { return w.signal(-pid, sig) }
	proc.Kill = func() { _ = w.signal(-pid, unix.SIGKILL) }
	proc.Wait = w.wait
	return proc, nil
}

// waiter guards a process's signals against PID reuse after its end.
type waiter struct {
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  bool
	logf    func(string, ...any)
	release func()
}

func newWaiter(cmd *exec.Cmd, logf func(string, ...any), release func()) *waiter {
	return &waiter{cmd: cmd, logf: logf, release: release}
}

// signal sends sig to pid (a group when negative) while the process was
// not reaped.
func (w *waiter) signal(pid int, sig unix.Signal) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.exited {
		return nil
	}
	return unix.Kill(pid, sig)
}

func (w *waiter) wait() protocol.Exit {
	exit := waitExit(w.cmd, w.logf)
	w.mu.Lock()
	w.exited = true
	w.mu.Unlock()
	w.release()
	return exit
}

// startTtyExec starts spec's program on a new pty of ex's size, as its
// controlling terminal.
func startTtyExec(spec execSpec, ex protocol.Exec, logf func(string, ...any)) (*ExecProcess, error) {
	master, slave, err := openPty(cmp.Or(ex.Rows, defaultRows), cmp.Or(ex.Cols, defaultCols))
	if err != nil {
		return nil, &kindError{Kind: protocol.ErrInternal, Msg: "opening a pty: " + err.Error()}
	}
	// The user owns its terminal, as login does.
	_ = slave.Chown(int(spec.UID), int(spec.GID))
	cmd, err := startHelperWith(spec, helperIO{Stdin: slave, Stdout: slave, Stderr: slave, Ctty: true})
	_ = slave.Close()
	if err != nil {
		_ = master.Close()
		return nil, err
	}
	pid := cmd.Process.Pid
	w := newWaiter(cmd, logf, func() { _ = master.Close() })
	proc := &ExecProcess{PID: pid, Stdout: master, Tty: true, Wait: w.wait}
	if ex.Stdin {
		proc.Stdin = master
	}
	proc.Resize = func(rows, cols uint16) error {
		return ptyControl(master, func(fd int) error {
			return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
		})
	}
	proc.Signal = func(sig unix.Signal) error {
		// The terminal's foreground group (a shell's job), as a typed ^C
		// would; the session's own group when there is none.
		pgrp := pid
		_ = ptyControl(master, func(fd int) error {
			g, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
			if err == nil && g > 0 {
				pgrp = g
			}
			return err
		})
		return w.signal(-pgrp, sig)
	}
	proc.Kill = func() { _ = w.signal(-pid, unix.SIGKILL) }
	return proc, nil
}

// openPty opens a new pseudo-terminal pair of rows x cols: /dev/ptmx,
// unlocked, and its /dev/pts/N.
func openPty(rows, cols uint16) (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	var n int
	err = ptyControl(master, func(fd int) error {
		if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
			return fmt.Errorf("unlockpt: %w", err)
		}
		var err error
		if n, err = unix.IoctlGetInt(fd, unix.TIOCGPTN); err != nil {
			return fmt.Errorf("ptsname: %w", err)
		}
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
	if err == nil {
		slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	}
	if err != nil {
		_ = master.Close()
		return nil, nil, err
	}
	return master, slave, nil
}

// ptyControl runs fn on f's descriptor without taking it out of Go's
// poller (which f.Fd would).
func ptyControl(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// RunExecIn is a Session.RunExec running exec sessions in root through the
// exec helper. The running binary must dispatch ExecHelperArg0 as
// cmd/sandbox-init does (a test binary, in its TestMain), and run as root.
func RunExecIn(root string, logf func(string, ...any)) func(protocol.Start, protocol.Exec) (*ExecProcess, error) {
	return func(st protocol.Start, ex protocol.Exec) (*ExecProcess, error) { return startExec(root, st, ex, logf) }
}

// RunFileIn is a Session.RunFile running file operations in root through
// the file helper (FileHelperArg0, dispatched like ExecHelperArg0).
func RunFileIn(root string, logf func(string, ...any)) func(protocol.Start, protocol.FileRequest) (*FileProcess, error) {
	return func(st protocol.Start, req protocol.FileRequest) (*FileProcess, error) {
		return startFile(root, st, req, logf)
	}
}
