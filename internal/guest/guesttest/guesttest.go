// Package guesttest builds what tests of the guest agent need: a minimal
// busybox root filesystem (a directory, or an ext4 image as the node agent
// makes one from an OCI image) and an initramfs holding the sandbox-init of
// the working tree.
package guesttest

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/microvm-dev/sandbox-operator/internal/guest/initramfs"
)

// File is an extra entry of a BusyboxRoot.
type File struct {
	// Content is a regular file's content.
	Content string
	// Mode is its permission bits; 0 means 0644.
	Mode fs.FileMode
	// Link, when set, makes the entry a symlink to Link instead.
	Link string
	// Dir, when set, makes the entry a directory instead.
	Dir bool
}

// Applets are the busybox applets a BusyboxRoot links in /bin.
var Applets = []string{
	"sh", "cat", "echo", "env", "false", "grep", "head", "hostname", "id", "ls",
	"mkdir", "pwd", "readlink", "sleep", "sync", "test", "tr", "true", "wc",
	// For exec sessions: ttys, signals, checksums.
	"stty", "tty", "kill", "sha256sum",
	// For the network checks.
	"ip", "ping",
}

// Users of a BusyboxRoot: root, and app (1000:1000, home /home/app), a
// member of the supplementary group wheel (10).
const (
	Passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
	Group  = "root:x:0:\nwheel:x:10:app\napp:x:1000:\n"
)

// Busybox returns the path of a statically linked busybox, skipping the
// test when the machine has none (hack/setup.sh installs busybox-static).
func Busybox(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("no busybox on this machine (run hack/setup.sh)")
	}
	return p
}

// BusyboxRoot writes a minimal root filesystem into dir: bin/busybox with
// its Applets linked, etc/passwd and etc/group (see Passwd, Group), the
// mount points a guest root needs (proc, sys, dev, tmp), then extra (paths
// relative to dir).
func BusyboxRoot(t testing.TB, dir string, extra map[string]File) {
	t.Helper()
	bb, err := os.ReadFile(Busybox(t))
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]File{
		"bin/busybox": {Content: string(bb), Mode: 0o755},
		"etc/passwd":  {Content: Passwd},
		"etc/group":   {Content: Group},
		"home/app":    {Dir: true},
		"root":        {Dir: true},
		"proc":        {Dir: true},
		"sys":         {Dir: true},
		"dev":         {Dir: true},
		"tmp":         {Dir: true},
	}
	for _, a := range Applets {
		entries["bin/"+a] = File{Link: "busybox"}
	}
	for k, v := range extra {
		entries[k] = v
	}
	for name, f := range entries {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case f.Dir:
			err = os.MkdirAll(p, 0o755)
		case f.Link != "":
			err = os.Symlink(f.Link, p)
		default:
			mode := f.Mode
			if mode == 0 {
				mode = 0o644
			}
			err = os.WriteFile(p, []byte(f.Content), mode)
			if err == nil {
				err = os.Chmod(p, mode) // past the umask
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// app owns its home, as an image's would.
	if os.Geteuid() == 0 {
		if err := os.Chown(filepath.Join(dir, "home/app"), 1000, 1000); err != nil {
			t.Fatal(err)
		}
	}
}

// Ext4 makes an ext4 image of sizeMiB at image holding the tree at src
// ("" for an empty filesystem), with mkfs.ext4 -d as the node agent does.
func Ext4(t testing.TB, src, image string, sizeMiB int) {
	t.Helper()
	args := []string{"-q", "-F"}
	if src != "" {
		args = append(args, "-d", src)
	}
	args = append(args, image, strconv.Itoa(sizeMiB)+"M")
	if out, err := exec.Command("mkfs.ext4", args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %v: %v\n%s", args, err, out)
	}
}

// Initrd compiles sandbox-init (static) into dir and packs it with the
// default and network modules from modules (vmtest.Prereqs finds them), as
// the node agent does; it returns the initramfs's path.
func Initrd(t testing.TB, dir, modules string) string {
	t.Helper()
	bin := filepath.Join(dir, "sandbox-init")
	// No -trimpath: the build then shares the cache with go test.
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", bin,
		"github.com/microvm-dev/sandbox-operator/cmd/sandbox-init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building sandbox-init: %v\n%s", err, out)
	}
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := initramfs.WriteFile(initrd, initramfs.Spec{Init: bin, KernelModulesDir: modules, Modules: initramfs.DefaultModules,
		NetworkModules: initramfs.NetworkModules}); err != nil {
		t.Fatal(err)
	}
	return initrd
}
