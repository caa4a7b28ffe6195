package initd

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// tree builds a directory tree under a new temp dir: a key ending in "/"
// is a directory, "->target" a symlink, anything else a file's content.
func tree(t *testing.T, entries map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, v := range entries {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case strings.HasSuffix(name, "/"):
			err = os.MkdirAll(p, 0o755)
		case strings.HasPrefix(v, "->"):
			err = os.Symlink(strings.TrimPrefix(v, "->"), p)
		default:
			err = os.WriteFile(p, []byte(v), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestResolveInRoot(t *testing.T) {
	root := tree(t, map[string]string{
		"usr/lib/":           "",
		"lib":                "->usr/lib",      // relative, as usrmerge does
		"etc/resolv.conf":    "->/run/resolv",  // absolute: only meaningful in root
		"etc/escape":         "->../../../tmp", // climbs above root
		"etc/loop":           "->loop",
		"etc/file":           "x",
		"run/":               "",
		"deep/a/b/":          "",
		"deep/up":            "->../..",
		"usr/lib/os-release": "ID=test",
	})
	for _, tc := range []struct {
		name, path  string
		followFinal bool
		want        string // relative to root; "" when an error is expected
		wantErr     string
	}{
		{name: "a plain path", path: "/usr/lib/os-release", want: "usr/lib/os-release"},
		{name: "a relative symlink in the middle", path: "/lib/os-release", want: "usr/lib/os-release"},
		{name: "an absolute symlink starts again at root", path: "/etc/resolv.conf", followFinal: true, want: "run/resolv"},
		{name: "a final symlink is kept without followFinal", path: "/etc/resolv.conf", want: "etc/resolv.conf"},
		{name: "a symlink climbing above root stops at root", path: "/etc/escape/x", want: "tmp/x"},
		{name: "a symlink's .. climbs inside root", path: "/deep/up/lib/os-release", want: "usr/lib/os-release"},
		{name: "missing components are kept", path: "/usr/new/dir/f", want: "usr/new/dir/f"},
		{name: "below a missing component, .. is clamped lexically", path: "/nope/../../etc", want: "etc"},
		{name: "a symlink loop fails", path: "/etc/loop/x", wantErr: "too many levels"},
		{name: "a file in the middle fails", path: "/etc/file/x", wantErr: "not a directory"},
		{name: "the root itself", path: "/", want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := resolveInRoot(root, tc.path, tc.followFinal)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(filepath.Join(root, tc.want)))
		})
	}
}

func TestGuestPath(t *testing.T) {
	for _, tc := range []struct {
		in, want, wantErr string
	}{
		{in: "/etc//hosts/", want: "/etc/hosts"},
		{in: "/./etc", want: "/etc"},
		{in: "etc/hosts", wantErr: "not absolute"},
		{in: "/etc/../root", wantErr: `".."`},
		{in: "/..", wantErr: `".."`},
		{in: "/a\x00b", wantErr: "NUL"},
	} {
		g := NewWithT(t)
		got, err := guestPath(tc.in)
		if tc.wantErr != "" {
			g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)), tc.in)
			continue
		}
		g.Expect(err).NotTo(HaveOccurred(), tc.in)
		g.Expect(got).To(Equal(tc.want))
	}
}

// lowerAndMerged is an image ("lower") and the workload's root ("merged"),
// which starts as a copy of it, as the overlay shows it at boot.
func lowerAndMerged(t *testing.T) (lower, merged string) {
	img := map[string]string{
		"etc/passwd":      "root:x:0:0::/root:/bin/sh\n",
		"etc/resolv.conf": "->/run/resolv.conf",
		"bin/":            "",
		"lib":             "->usr/lib",
		"usr/lib/libc.so": "elf",
		"var/log/app.log": "old\n",
		"opt/data/":       "",
		"opt/data/f":      "x",
	}
	return tree(t, img), tree(t, img)
}

func TestApplyPatches(t *testing.T) {
	type check struct {
		path    string
		content string      // for files
		link    string      // for symlinks
		mode    fs.FileMode // when non-zero
		dir     bool
		absent  bool
	}
	for _, tc := range []struct {
		name    string
		patches []protocol.Patch
		checks  []check
		wantErr string
	}{
		{
			name:    "Text creates a file with its parents, mode 0644 by default",
			patches: []protocol.Patch{{Type: protocol.PatchText, Path: "/etc/app/config.toml", Content: []byte("a = 1\n")}},
			checks:  []check{{path: "etc/app/config.toml", content: "a = 1\n", mode: 0o644}, {path: "etc/app", dir: true, mode: 0o755}},
		},
		{
			name:    "File honours its mode, setuid included",
			patches: []protocol.Patch{{Type: protocol.PatchFile, Path: "/bin/tool", Content: []byte{0x7f, 'E'}, Mode: 0o4750}},
			checks:  []check{{path: "bin/tool", content: "\x7fE", mode: 0o750 | fs.ModeSetuid}},
		},
		{
			name:    "Text on a path the image has fails without replace",
			patches: []protocol.Patch{{Type: protocol.PatchText, Path: "/etc/passwd", Content: []byte("x")}},
			wantErr: "patch 0 (Text /etc/passwd): the path exists in the image; set replace",
		},
		{
			name:    "Text on a path the image has, with replace",
			patches: []protocol.Patch{{Type: protocol.PatchText, Path: "/etc/passwd", Content: []byte("x"), Replace: true}},
			checks:  []check{{path: "etc/passwd", content: "x"}},
		},
		{
			name: "a path only the writable layer has (an earlier boot's) is replaced without replace",
			patches: []protocol.Patch{
				{Type: protocol.PatchText, Path: "/etc/motd", Content: []byte("1")},
				{Type: protocol.PatchText, Path: "/etc/motd", Content: []byte("2")},
			},
			checks: []check{{path: "etc/motd", content: "2"}},
		},
		{
			name:    "the image is checked through its own symlinks",
			patches: []protocol.Patch{{Type: protocol.PatchText, Path: "/lib/new.so", Content: []byte("x")}, {Type: protocol.PatchText, Path: "/lib/libc.so"}},
			wantErr: "patch 1 (Text /lib/libc.so): the path exists in the image",
		},
		{
			name:    "a path with .. is refused",
			patches: []protocol.Patch{{Type: protocol.PatchText, Path: "/lib/../etc/passwd"}},
			wantErr: `patch 0 (Text /lib/../etc/passwd): path "/lib/../etc/passwd" contains ".."`,
		},
		{
			name:    "Text replaces a symlink instead of writing through it",
			patches: []protocol.Patch{{Type: protocol.PatchText, Path: "/etc/resolv.conf", Content: []byte("nameserver 1.1.1.1\n"), Replace: true}},
			checks:  []check{{path: "etc/resolv.conf", content: "nameserver 1.1.1.1\n"}, {path: "run/resolv.conf", absent: true}},
		},
		{
			name:    "a write through an intermediate symlink lands inside the root",
			patches: []protocol.Patch{{Type: protocol.PatchText, Path: "/lib/libx.so", Content: []byte("so")}},
			checks:  []check{{path: "usr/lib/libx.so", content: "so"}},
		},
		{
			name:    "Symlink creates a link; the image check applies",
			patches: []protocol.Patch{{Type: protocol.PatchSymlink, Path: "/usr/bin/python", Target: "/usr/bin/python3"}},
			checks:  []check{{path: "usr/bin/python", link: "/usr/bin/python3"}},
		},
		{
			name:    "Symlink over an image path fails without replace",
			patches: []protocol.Patch{{Type: protocol.PatchSymlink, Path: "/var/log/app.log", Target: "/dev/stdout"}},
			wantErr: "exists in the image",
		},
		{
			name:    "Symlink over an image path with replace",
			patches: []protocol.Patch{{Type: protocol.PatchSymlink, Path: "/var/log/app.log", Target: "/dev/stdout", Replace: true}},
			checks:  []check{{path: "var/log/app.log", link: "/dev/stdout"}},
		},
		{
			name:    "Symlink needs a target",
			patches: []protocol.Patch{{Type: protocol.PatchSymlink, Path: "/x"}},
			wantErr: "needs a target",
		},
		{
			name:    "Mkdir creates parents; the mode applies to the directory itself",
			patches: []protocol.Patch{{Type: protocol.PatchMkdir, Path: "/srv/www/cache", Mode: 0o700}},
			checks:  []check{{path: "srv/www/cache", dir: true, mode: 0o700}, {path: "srv/www", dir: true, mode: 0o755}},
		},
		{
			name:    "Mkdir of an existing directory is fine (an image path needs no replace)",
			patches: []protocol.Patch{{Type: protocol.PatchMkdir, Path: "/opt/data"}},
			checks:  []check{{path: "opt/data/f", content: "x"}},
		},
		{
			name:    "Mkdir over a file fails",
			patches: []protocol.Patch{{Type: protocol.PatchMkdir, Path: "/etc/passwd"}},
			wantErr: "not a directory",
		},
		{
			name:    "Remove removes a tree; a missing path is fine",
			patches: []protocol.Patch{{Type: protocol.PatchRemove, Path: "/opt/data"}, {Type: protocol.PatchRemove, Path: "/nope"}},
			checks:  []check{{path: "opt/data", absent: true}, {path: "opt", dir: true}},
		},
		{
			name:    "Remove of a symlink removes the link, not its target",
			patches: []protocol.Patch{{Type: protocol.PatchRemove, Path: "/lib"}},
			checks:  []check{{path: "lib", absent: true}, {path: "usr/lib", dir: true}},
		},
		{
			name: "Append appends, and creates a missing file",
			patches: []protocol.Patch{
				{Type: protocol.PatchAppend, Path: "/var/log/app.log", Content: []byte("new\n")},
				{Type: protocol.PatchAppend, Path: "/etc/profile.d/env.sh", Content: []byte("export A=1\n")},
			},
			checks: []check{{path: "var/log/app.log", content: "old\nnew\n"}, {path: "etc/profile.d/env.sh", content: "export A=1\n", mode: 0o644}},
		},
		{
			name:    "the root itself cannot be patched",
			patches: []protocol.Patch{{Type: protocol.PatchRemove, Path: "/"}},
			wantErr: "root directory itself",
		},
		{
			name:    "a relative path is refused",
			patches: []protocol.Patch{{Type: protocol.PatchText, Path: "etc/x"}},
			wantErr: "not absolute",
		},
		{
			name:    "an unknown type is refused",
			patches: []protocol.Patch{{Type: "CopyDir", Path: "/x"}},
			wantErr: `patch 0 (CopyDir /x): unknown patch type "CopyDir"`,
		},
		{
			name: "patches apply in order and stop at the first failure",
			patches: []protocol.Patch{
				{Type: protocol.PatchText, Path: "/a", Content: []byte("a")},
				{Type: protocol.PatchText, Path: "/etc/passwd"},
				{Type: protocol.PatchText, Path: "/c", Content: []byte("c")},
			},
			wantErr: "patch 1 (Text /etc/passwd)",
			checks:  []check{{path: "a", content: "a"}, {path: "c", absent: true}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			lower, merged := lowerAndMerged(t)
			err := ApplyPatches(lower, merged, tc.patches)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
			} else {
				g.Expect(err).NotTo(HaveOccurred())
			}
			for _, c := range tc.checks {
				p := filepath.Join(merged, c.path)
				fi, err := os.Lstat(p)
				if c.absent {
					g.Expect(err).To(MatchError(fs.ErrNotExist), c.path)
					continue
				}
				g.Expect(err).NotTo(HaveOccurred(), c.path)
				switch {
				case c.link != "":
					g.Expect(os.Readlink(p)).To(Equal(c.link), c.path)
				case c.dir:
					g.Expect(fi.IsDir()).To(BeTrue(), c.path)
				default:
					g.Expect(fi.Mode().IsRegular()).To(BeTrue(), c.path)
					g.Expect(os.ReadFile(p)).To(Equal([]byte(c.content)), c.path)
				}
				if c.mode != 0 {
					g.Expect(fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)).To(Equal(c.mode), c.path)
				}
			}
			// Nothing ever lands in the image.
			g.Expect(os.ReadFile(filepath.Join(lower, "etc/passwd"))).To(Equal([]byte("root:x:0:0::/root:/bin/sh\n")))
		})
	}
}

func TestWriteScripts(t *testing.T) {
	for _, tc := range []struct {
		name    string
		shell   string
		scripts map[string]string
		want    map[string]string
		wantErr string
	}{
		{
			name:    "a script without #! gets the default shell's",
			scripts: map[string]string{"setup": "echo hi\n"},
			want:    map[string]string{"setup": "#!/bin/sh\necho hi\n"},
		},
		{
			name:    "a script without #! gets the configured shell's",
			shell:   "/bin/bash",
			scripts: map[string]string{"setup": "echo hi"},
			want:    map[string]string{"setup": "#!/bin/bash\necho hi"},
		},
		{
			name:    "a script with #! is kept as it is",
			scripts: map[string]string{"py": "#!/usr/bin/env python3\nprint(1)\n"},
			want:    map[string]string{"py": "#!/usr/bin/env python3\nprint(1)\n"},
		},
		{name: "a name with a slash is refused", scripts: map[string]string{"a/b": ""}, wantErr: `script "a/b"`},
		{name: "a name .. is refused", scripts: map[string]string{"..": ""}, wantErr: `script ".."`},
		{name: "a relative shell is refused", shell: "sh", scripts: map[string]string{"a": ""}, wantErr: "not an absolute path"},
		{name: "no scripts write nothing", want: map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			root := t.TempDir()
			err := WriteScripts(root, tc.shell, tc.scripts)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			for name, body := range tc.want {
				p := filepath.Join(root, protocol.ScriptsDir, name)
				g.Expect(os.ReadFile(p)).To(Equal([]byte(body)))
				fi, err := os.Stat(p)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(fi.Mode().Perm()).To(Equal(fs.FileMode(0o755)))
			}
		})
	}
}

func TestWriteHostnameFiles(t *testing.T) {
	for _, tc := range []struct {
		name      string
		hosts     *string
		hostname  string
		wantHosts string
		wantErr   string
	}{
		{
			name:      "an image without /etc/hosts gets one",
			hostname:  "box",
			wantHosts: "127.0.0.1\tlocalhost box\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		},
		{
			name:      "a line is appended to the image's",
			hosts:     ptr("127.0.0.1 localhost\n::1 localhost"),
			hostname:  "box",
			wantHosts: "127.0.0.1 localhost\n::1 localhost\n127.0.0.1\tbox\n",
		},
		{
			name:      "a line that names the host already is enough",
			hosts:     ptr("# comment box\n10.0.0.5 box.example box\n"),
			hostname:  "box",
			wantHosts: "# comment box\n10.0.0.5 box.example box\n",
		},
		{name: "a name with an underscore is refused", hostname: "a_b", wantErr: "invalid character"},
		{name: "a label starting with - is refused", hostname: "-a", wantErr: "starting or ending"},
		{name: "a name over 64 bytes is refused", hostname: strings.Repeat("a", 65), wantErr: "1 to 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			root := t.TempDir()
			if tc.hosts != nil {
				g.Expect(os.MkdirAll(filepath.Join(root, "etc"), 0o755)).To(Succeed())
				g.Expect(os.WriteFile(filepath.Join(root, "etc/hosts"), []byte(*tc.hosts), 0o644)).To(Succeed())
			}
			err := WriteHostnameFiles(root, tc.hostname)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(os.ReadFile(filepath.Join(root, "etc/hostname"))).To(Equal([]byte(tc.hostname + "\n")))
			g.Expect(os.ReadFile(filepath.Join(root, "etc/hosts"))).To(Equal([]byte(tc.wantHosts)))
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestValidateMount(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mount   protocol.Mount
		wantErr string
	}{
		{name: "a tmpfs", mount: protocol.Mount{Path: "/cache", TmpfsMiB: 64}},
		{name: "a disk", mount: protocol.Mount{Path: "/data", Disk: "vol-0", ReadOnly: true}},
		{name: "files, nested names", mount: protocol.Mount{Path: "/etc/app", Files: []protocol.File{{Name: "a.conf"}, {Name: "sub/b.conf"}}}},
		{name: "an empty files projection is still a mount", mount: protocol.Mount{Path: "/etc/app", Files: []protocol.File{}}},
		{name: "no source", mount: protocol.Mount{Path: "/x"}, wantErr: "exactly one"},
		{name: "two sources", mount: protocol.Mount{Path: "/x", TmpfsMiB: 1, Disk: "vol-0"}, wantErr: "exactly one"},
		{name: "a relative path", mount: protocol.Mount{Path: "x", TmpfsMiB: 1}, wantErr: "not absolute"},
		{name: "the root", mount: protocol.Mount{Path: "/", TmpfsMiB: 1}, wantErr: "root directory"},
		{name: "a path with ..", mount: protocol.Mount{Path: "/a/../b", TmpfsMiB: 1}, wantErr: `".."`},
		{name: "a file name with ..", mount: protocol.Mount{Path: "/x", Files: []protocol.File{{Name: "../../etc/shadow"}}}, wantErr: `file "../../etc/shadow"`},
		{name: "an absolute file name", mount: protocol.Mount{Path: "/x", Files: []protocol.File{{Name: "/etc/shadow"}}}, wantErr: "absolute"},
		{name: "a file name with an empty component", mount: protocol.Mount{Path: "/x", Files: []protocol.File{{Name: "a//b"}}}, wantErr: "component"},
		{name: "an empty file name", mount: protocol.Mount{Path: "/x", Files: []protocol.File{{Name: ""}}}, wantErr: "empty name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			err := validateMount(tc.mount)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
		})
	}
}

func TestWriteFiles(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	g.Expect(WriteFiles(dir, []protocol.File{
		{Name: "app.conf", Content: []byte("a")},
		{Name: "tls/key.pem", Content: []byte("k"), Mode: 0o400},
	})).To(Succeed())
	g.Expect(os.ReadFile(filepath.Join(dir, "app.conf"))).To(Equal([]byte("a")))
	fi, err := os.Stat(filepath.Join(dir, "tls/key.pem"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(fi.Mode().Perm()).To(Equal(fs.FileMode(0o400)))
	// Checked again when written: a name never escapes the mount.
	g.Expect(WriteFiles(dir, []protocol.File{{Name: "../escape"}})).To(MatchError(ContainSubstring("..")))
	g.Expect(filepath.Join(filepath.Dir(dir), "escape")).NotTo(BeAnExistingFile())
}

func TestFindDisk(t *testing.T) {
	sysfs := t.TempDir()
	for dev, serial := range map[string]string{"vda": "vol-0", "vdb": "root", "vdc": "upper\x00\x00", "vdd": "-"} {
		d := filepath.Join(sysfs, "block", dev)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if serial != "-" {
			if err := os.WriteFile(filepath.Join(d, "serial"), []byte(serial), 0o444); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct{ serial, want string }{
		{serial: "root", want: "vdb"}, // not vda: microvm's slot order is its own
		{serial: "upper", want: "vdc"},
		{serial: "vol-0", want: "vda"},
		{serial: "vol-1", want: ""},
	} {
		g := NewWithT(t)
		got, err := FindDisk(sysfs, tc.serial)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(got).To(Equal(tc.want), tc.serial)
	}
}

func TestParseRootConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cmdline string
		want    RootConfig
		wantErr string
	}{
		{name: "no parameters: a tmpfs of the default size", cmdline: "quiet", want: RootConfig{}},
		{name: "a disk", cmdline: "sandbox.upper=upper", want: RootConfig{UpperDisk: "upper"}},
		{name: "a sized tmpfs", cmdline: "sandbox.upper_mib=256", want: RootConfig{UpperMiB: 256}},
		{name: "a bad size", cmdline: "sandbox.upper_mib=lots", wantErr: "positive number"},
		{name: "a zero size", cmdline: "sandbox.upper_mib=0", wantErr: "positive number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := ParseRootConfig(ParseCmdline(tc.cmdline))
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tc.want))
		})
	}
}

func TestOpenFreshVolume(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries map[string]string
		want    fs.FileMode
	}{
		{name: "a fresh volume becomes world-writable", entries: map[string]string{"lost+found/": ""}, want: 0o777},
		{name: "an empty one too", entries: map[string]string{}, want: 0o777},
		{name: "a used volume keeps its mode", entries: map[string]string{"lost+found/": "", "data": "x"}, want: 0o700},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			dir := tree(t, tc.entries)
			g.Expect(os.Chmod(dir, 0o700)).To(Succeed())
			g.Expect(openFreshVolume(dir)).To(Succeed())
			fi, err := os.Stat(dir)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(fi.Mode().Perm()).To(Equal(tc.want))
		})
	}
}
