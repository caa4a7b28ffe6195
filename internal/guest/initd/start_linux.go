package initd

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/microvm-dev/sandbox-operator/internal/guest/initramfs"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// autoInit is Init.Argv[0] asking sandbox-init to find the image's init.
const autoInit = "auto"

// initCandidates are tried in order for autoInit, inside the root.
var initCandidates = []string{"/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd"}

// startMain configures the root for st and starts the main process there,
// once ready reports the root assembled. The configuration comes first, in
// this order: mounts, host name, /etc/resolv.conf (with st.Network),
// scripts, patches; meanwhile the NIC is configured (st.Network), and the
// main process waits for it too. Then the user is resolved (a patch may have added it to /etc/passwd) and the process is
// started through the exec helper. Any failure fails the start: a sandbox
// half configured would run with a surprise.
//
// The main process's stdout and stderr are teed to the console and to
// stdout and stderr (the host's main output stream).
func startMain(ready func() error, lower, root string, st protocol.Start, logf func(string, ...any), stdout, stderr io.Writer) (MainProcess, error) {
	rlimits, err := parseRlimits(st.Rlimits)
	if err != nil {
		return MainProcess{}, err
	}
	for i, m := range st.Mounts {
		if err := validateMount(m); err != nil {
			return MainProcess{}, fmt.Errorf("mount %d (%s): %w", i, m.Path, err)
		}
	}
	if st.Hostname != "" {
		if err := validHostname(st.Hostname); err != nil {
			return MainProcess{}, err
		}
	}
	var netDone chan error
	if st.Network != nil {
		cfg, err := parseNetwork(*st.Network)
		if err != nil {
			return MainProcess{}, fmt.Errorf("network: %w", err)
		}
		// The NIC comes up (module loads and the device's probe, the slow
		// part under TCG) while the root is prepared and configured.
		netDone = make(chan error, 1)
		go func() { netDone <- configureNetwork(cfg, initramfs.NetworkModulesLoadPath, nicWait, logf) }()
	}
	if err := ready(); err != nil {
		return MainProcess{}, fmt.Errorf("preparing the root filesystem: %w", err)
	}
	if err := applyMounts(root, st.Mounts); err != nil {
		return MainProcess{}, err
	}
	if st.Hostname != "" {
		if err := unix.Sethostname([]byte(st.Hostname)); err != nil {
			return MainProcess{}, fmt.Errorf("setting the host name: %w", err)
		}
		if err := WriteHostnameFiles(root, st.Hostname); err != nil {
			return MainProcess{}, err
		}
	}
	if st.Network != nil {
		// Before the patches: a patch may still edit it.
		if err := WriteResolvConf(root, *st.Network); err != nil {
			return MainProcess{}, fmt.Errorf("network: %w", err)
		}
	}
	if err := WriteScripts(root, st.Shell, st.Scripts); err != nil {
		return MainProcess{}, err
	}
	if err := ApplyPatches(lower, root, st.Patches); err != nil {
		return MainProcess{}, err
	}
	if netDone != nil {
		if err := <-netDone; err != nil {
			return MainProcess{}, fmt.Errorf("network: %w", err)
		}
	}
	if len(st.Argv) == 0 && st.Init == nil {
		return MainProcess{}, nil // configured; nothing to run
	}
	spec, err := mainSpec(root, st)
	if err != nil {
		return MainProcess{}, err
	}
	spec.Rlimits = rlimits

	console, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return MainProcess{}, fmt.Errorf("opening the console: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		_ = console.Close()
		return MainProcess{}, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		_ = console.Close()
		_ = outR.Close()
		_ = outW.Close()
		return MainProcess{}, err
	}
	cmd, err := startHelper(spec, outW, errW)
	_ = outW.Close()
	_ = errW.Close()
	if err != nil {
		_ = console.Close()
		_ = outR.Close()
		_ = errR.Close()
		return MainProcess{}, err
	}
	// The output goes to the console, as it always did, and to the host.
	// Neither pipe is ever left unread: the console write is the only one
	// that may wait, and the host's side buffers (mainout.go).
	var tees sync.WaitGroup
	for _, t := range []struct {
		r    *os.File
		sink io.Writer
	}{{outR, stdout}, {errR, stderr}} {
		tees.Go(func() { teeOutput(t.r, console, t.sink) })
	}
	go func() {
		tees.Wait()
		_ = console.Close()
	}()
	if spec.Handoff {
		logf("handed off to %s, PID 1 of its own PID namespace (PID %d here)", spec.Path, cmd.Process.Pid)
	}
	return MainProcess{PID: cmd.Process.Pid, Wait: func() protocol.Exit { return waitExit(cmd, logf) }}, nil
}

// teeOutput copies r to console and sink until r ends, ignoring write
// errors: a missing console must not stop the host's copy.
func teeOutput(r *os.File, console, sink io.Writer) {
	defer func() { _ = r.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			_, _ = console.Write(buf[:n])
			_, _ = sink.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// mainSpec is the exec helper's spec for st's main process (or its init,
// with st.Init), in root after the configuration was applied.
func mainSpec(root string, st protocol.Start) (execSpec, error) {
	if st.Init != nil {
		argv, err := initArgv(root, st.Init.Argv)
		if err != nil {
			return execSpec{}, err
		}
		// The init runs as root in "/", as an init expects to.
		return execSpec{Root: root, Handoff: true, Dir: "/", Path: argv[0], Argv: argv, Env: st.Init.Env,
			Groups: []uint32{0}}, nil
	}
	if len(st.Argv) == 0 {
		return execSpec{}, errors.New("start: empty argv")
	}
	cred, err := ResolveUser(root, st.User)
	if err != nil {
		return execSpec{}, err
	}
	dir := st.Dir
	if dir == "" {
		dir = "/"
	}
	dir, err = guestPath(dir)
	if err != nil {
		return execSpec{}, fmt.Errorf("working directory: %w", err)
	}
	// As OCI runtimes do, a missing working directory is created.
	if _, err := mkdirAllInRoot(root, dir, defaultDirMode); err != nil {
		return execSpec{}, fmt.Errorf("working directory: %w", err)
	}
	argv0, err := LookPath(root, st.Argv[0], st.Env)
	if err != nil {
		return execSpec{}, err
	}
	return execSpec{Root: root, Dir: dir, Path: argv0, Argv: st.Argv, Env: withHome(st.Env, cred.Home),
		UID: cred.UID, GID: cred.GID, Groups: cred.Groups}, nil
}

// initArgv resolves an Init's command line: "auto" becomes the first of
// initCandidates the root has; any other program must be an absolute path
// that exists in the root.
func initArgv(root string, argv []string) ([]string, error) {
	if len(argv) == 0 {
		return nil, errors.New("init: empty argv")
	}
	out := append([]string{}, argv...)
	cands := []string{argv[0]}
	if argv[0] == autoInit {
		cands = initCandidates
	} else if _, err := guestPath(argv[0]); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	for _, c := range cands {
		p, err := resolveInRoot(root, c, false)
		if err != nil {
			continue
		}
		if _, err := os.Lstat(p); err == nil {
			out[0] = c
			return out, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("init: %w", err)
		}
	}
	return nil, fmt.Errorf("init: none of %q exists in the image", cands)
}

// waitExit waits for the main process and reports how it ended.
func waitExit(cmd *exec.Cmd, logf func(string, ...any)) protocol.Exit {
	err := cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		logf("waiting for the main process: %v", err)
		return protocol.Exit{Code: -1}
	}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return protocol.Exit{Code: -1, Signal: unix.SignalName(ws.Signal())}
	}
	return protocol.Exit{Code: cmd.ProcessState.ExitCode()}
}
