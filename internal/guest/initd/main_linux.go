package initd

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

const (
	// rootDisk is the image's root filesystem: the first virtio-blk disk.
	rootDisk = "/dev/vda"
	// rootDiskWait bounds the wait for rootDisk after virtio_blk is loaded.
	rootDiskWait = 10 * time.Second
	// Where the workload's root is assembled: the read-only image at
	// lowerMnt, a tmpfs for the writes at upperMnt, the overlay at RootMnt.
	lowerMnt = "/mnt/lower"
	upperMnt = "/mnt/upper"
	// RootMnt is the workload's root directory (the main process's chroot).
	RootMnt = "/mnt/root"
)

// prepareRoot mounts the image's disk read-only under a tmpfs-backed
// overlay at RootMnt, with proc, sys, dev and a tmpfs /tmp inside it.
func prepareRoot(logf func(string, ...any)) error {
	t0 := time.Now()
	deadline := t0.Add(rootDiskWait)
	for {
		_, err := os.Stat(rootDisk)
		if err == nil {
			break
		}
		if !os.IsNotExist(err) {
			return fmt.Errorf("root disk: %w", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no root disk %s after %v", rootDisk, rootDiskWait)
		}
		time.Sleep(2 * time.Millisecond)
	}
	for _, d := range []string{lowerMnt, upperMnt, RootMnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount(rootDisk, lowerMnt, "ext4", unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mounting %s on %s: %w", rootDisk, lowerMnt, err)
	}
	if err := unix.Mount("tmpfs", upperMnt, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mounting tmpfs on %s: %w", upperMnt, err)
	}
	upper, work := filepath.Join(upperMnt, "upper"), filepath.Join(upperMnt, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	opts := "lowerdir=" + lowerMnt + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", RootMnt, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting the overlay on %s: %w", RootMnt, err)
	}
	for _, m := range []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"/dev", "dev", "", unix.MS_BIND | unix.MS_REC, ""},
		{"tmpfs", "tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	} {
		dst := filepath.Join(RootMnt, m.dst)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, dst, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mounting %s on %s: %w", m.src, dst, err)
		}
	}
	logf("root filesystem ready at %s in %v", RootMnt, time.Since(t0).Round(time.Millisecond))
	return nil
}

// startMain starts the main process in root (after ready reported the root
// mounted) with its output on the console.
func startMain(ready func() error, root string, st protocol.Start, logf func(string, ...any)) (func() protocol.Exit, error) {
	if err := ready(); err != nil {
		return nil, err
	}
	argv0, err := LookPath(root, st.Argv[0], st.Env)
	if err != nil {
		return nil, err
	}
	console, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the console: %w", err)
	}
	dir := st.Dir
	if dir == "" {
		dir = "/"
	}
	cmd := &exec.Cmd{
		Path: argv0, Args: st.Argv, Env: st.Env, Dir: dir,
		Stdout: console, Stderr: console,
		// Chroot comes before the chdir to Dir in the child.
		SysProcAttr: &syscall.SysProcAttr{Chroot: root, Setsid: true},
	}
	err = cmd.Start()
	_ = console.Close()
	if err != nil {
		return nil, err
	}
	return func() protocol.Exit {
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
	}, nil
}
