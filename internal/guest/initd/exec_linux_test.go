package initd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/microvm-dev/sandbox-operator/internal/guest/guesttest"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// helperRoot is a busybox root for the exec helper, or a skip where the
// helper cannot run (it chroots and changes user: root only).
func helperRoot(t *testing.T, extra map[string]guesttest.File) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the exec helper needs root (chroot, setuid)")
	}
	root := t.TempDir()
	// t.TempDir is 0700 by default; the workload's user must traverse it.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	guesttest.BusyboxRoot(t, root, extra)
	return root
}

// runHelper starts st's main process through the exec helper in root, as
// startMain does, and returns its output and exit.
func runHelper(t *testing.T, root string, st protocol.Start) (string, protocol.Exit, error) {
	t.Helper()
	rlimits, err := parseRlimits(st.Rlimits)
	if err != nil {
		return "", protocol.Exit{}, err
	}
	spec, err := mainSpec(root, st)
	if err != nil {
		return "", protocol.Exit{}, err
	}
	spec.Rlimits = rlimits
	var out bytes.Buffer
	cmd, err := startHelper(spec, &out, &out)
	if err != nil {
		return "", protocol.Exit{}, err
	}
	exit := waitExit(cmd, t.Logf)
	return out.String(), exit, nil
}

func TestExecHelper(t *testing.T) {
	root := helperRoot(t, map[string]guesttest.File{"etc/file": {Content: "not a directory"}})
	for _, tc := range []struct {
		name     string
		start    protocol.Start
		wantOut  string
		wantExit protocol.Exit
		wantErr  string
	}{
		{
			name: "user, groups, HOME, working directory and rlimits apply to the program",
			start: protocol.Start{
				Argv: []string{"sh", "-c", `id -u; id -g; id -G; echo "$HOME"; pwd; ulimit -n; ulimit -Hn; echo "$GREETING"`},
				Env:  []string{"PATH=/bin", "GREETING=hi"}, User: "app", Dir: "/work/dir",
				Rlimits: []protocol.Rlimit{{Resource: "nofile", Soft: 123, Hard: 456}},
			},
			wantOut: "1000\n1000\n1000 10\n/home/app\n/work/dir\n123\n456\nhi\n",
		},
		{
			name: "an explicit group and a uid absent from passwd",
			start: protocol.Start{Argv: []string{"/bin/sh", "-c", `id -u; id -G; echo "$HOME"`}, User: "4242:4343",
				Env: []string{"HOME=/custom"}},
			wantOut: "4242\n4343\n/custom\n",
		},
		{
			name:    "without rlimits the program gets the usual NOFILE soft limit, not the one Go raises",
			start:   protocol.Start{Argv: []string{"sh", "-c", "ulimit -n"}, Env: []string{"PATH=/bin"}},
			wantOut: strings.TrimSpace(softNofile(t)) + "\n",
		},
		{
			name:     "the program's exit code is reported",
			start:    protocol.Start{Argv: []string{"sh", "-c", "exit 7"}},
			wantExit: protocol.Exit{Code: 7},
		},
		{
			name:     "a signal is reported",
			start:    protocol.Start{Argv: []string{"sh", "-c", "kill -TERM $$"}},
			wantExit: protocol.Exit{Code: -1, Signal: "SIGTERM"},
		},
		{
			name:    "an unknown user fails the start",
			start:   protocol.Start{Argv: []string{"true"}, User: "nobody"},
			wantErr: `no user "nobody"`,
		},
		{
			name:    "a program missing from the root fails the start",
			start:   protocol.Start{Argv: []string{"/bin/nope"}},
			wantErr: "exec /bin/nope: no such file or directory",
		},
		{
			name:    "a working directory that is a file fails the start",
			start:   protocol.Start{Argv: []string{"true"}, Dir: "/etc/file"},
			wantErr: "/etc/file exists and is not a directory",
		},
		{
			name:    "an rlimit the kernel refuses fails the start in the helper",
			start:   protocol.Start{Argv: []string{"true"}, Rlimits: []protocol.Rlimit{{Resource: "NOFILE", Soft: 1 << 40, Hard: 1 << 40}}},
			wantErr: "setting rlimit nofile to 1099511627776/1099511627776: operation not permitted",
		},
		{
			name:    "an unknown rlimit fails before anything runs",
			start:   protocol.Start{Argv: []string{"true"}, Rlimits: []protocol.Rlimit{{Resource: "files", Soft: 1, Hard: 1}}},
			wantErr: `rlimit "files": unknown resource`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			out, exit, err := runHelper(t, root, tc.start)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(exit).To(Equal(tc.wantExit), "output: %s", out)
			if tc.wantOut != "" {
				g.Expect(out).To(Equal(tc.wantOut))
			}
		})
	}
	// The helper created the missing working directory in the root.
	NewWithT(t).Expect(filepath.Join(root, "work/dir")).To(BeADirectory())
}

// softNofile is the NOFILE soft limit a child of this process gets: what
// the test binary started with, which Go restores for its children.
func softNofile(t *testing.T) string {
	t.Helper()
	out, err := execOutput("sh", "-c", "ulimit -n")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestExecHelperHandsOffToAnInitInItsOwnPIDNamespace(t *testing.T) {
	g := NewWithT(t)
	root := helperRoot(t, map[string]guesttest.File{
		// What "auto" finds first.
		"sbin/init": {Content: "#!/bin/sh\necho \"pid=$$\"\nls /proc | grep -c '^[0-9]'\nexit 5\n", Mode: 0o755},
	})
	out, exit, err := runHelper(t, root, protocol.Start{Init: &protocol.Init{Argv: []string{"auto"}, Env: []string{"PATH=/bin"}}})
	if err != nil && strings.Contains(err.Error(), "operation not permitted") {
		t.Skipf("this machine does not allow new namespaces: %v", err)
	}
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(exit).To(Equal(protocol.Exit{Code: 5}))
	lines := strings.Fields(out)
	g.Expect(lines).To(HaveLen(2), out)
	g.Expect(lines[0]).To(Equal("pid=1"), "the init is PID 1 of its namespace")
	// Its /proc is its own: the shell, ls and grep at most, not the host's.
	g.Expect(lines[1]).To(BeElementOf("1", "2", "3"), "processes in the init's /proc")
	// The host's root is untouched: nothing moved, no /proc mounted in root.
	g.Expect(filepath.Join(root, "proc/self")).NotTo(BeAnExistingFile())
}

func TestInitArgv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   map[string]string
		argv    []string
		want    []string
		wantErr string
	}{
		{name: "auto finds /sbin/init first", files: map[string]string{"sbin/init": "->/lib/systemd/systemd", "lib/systemd/systemd": "x"},
			argv: []string{"auto", "--log-level=info"}, want: []string{"/sbin/init", "--log-level=info"}},
		{name: "auto falls back to systemd", files: map[string]string{"usr/lib/systemd/systemd": "x"},
			argv: []string{"auto"}, want: []string{"/usr/lib/systemd/systemd"}},
		{name: "auto without an init fails", files: map[string]string{"bin/": ""}, argv: []string{"auto"}, wantErr: "none of"},
		{name: "an explicit init", files: map[string]string{"sbin/tini": "x"}, argv: []string{"/sbin/tini", "--"}, want: []string{"/sbin/tini", "--"}},
		{name: "an explicit init must be absolute", files: map[string]string{"bin/": ""}, argv: []string{"tini"}, wantErr: "not absolute"},
		{name: "an empty argv fails", files: map[string]string{"bin/": ""}, wantErr: "empty argv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := initArgv(tree(t, tc.files), tc.argv)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tc.want))
		})
	}
}

func TestParseRlimits(t *testing.T) {
	const inf = ^uint64(0)
	for _, tc := range []struct {
		name    string
		in      []protocol.Rlimit
		want    []rlimit
		wantErr string
	}{
		{name: "every name maps", in: []protocol.Rlimit{
			{Resource: "cpu"}, {Resource: "fsize"}, {Resource: "data"}, {Resource: "stack"}, {Resource: "core"},
			{Resource: "rss"}, {Resource: "nproc"}, {Resource: "nofile"}, {Resource: "memlock"}, {Resource: "as"},
			{Resource: "locks"}, {Resource: "sigpending"}, {Resource: "msgqueue"}, {Resource: "nice"},
			{Resource: "rtprio"}, {Resource: "rttime"},
		}, want: []rlimit{
			{Resource: 0}, {Resource: 1}, {Resource: 2}, {Resource: 3}, {Resource: 4}, {Resource: 5}, {Resource: 6},
			{Resource: 7}, {Resource: 8}, {Resource: 9}, {Resource: 10}, {Resource: 11}, {Resource: 12}, {Resource: 13},
			{Resource: 14}, {Resource: 15},
		}},
		{name: "negative is unlimited", in: []protocol.Rlimit{{Resource: "core", Soft: -1, Hard: -1}, {Resource: "nofile", Soft: 1024, Hard: -1}},
			want: []rlimit{{Resource: 4, Cur: inf, Max: inf}, {Resource: 7, Cur: 1024, Max: inf}}},
		{name: "upper case and the RLIMIT_ prefix are tolerated", in: []protocol.Rlimit{{Resource: "RLIMIT_NOFILE", Soft: 1, Hard: 2}},
			want: []rlimit{{Resource: 7, Cur: 1, Max: 2}}},
		{name: "an unknown name fails", in: []protocol.Rlimit{{Resource: "openfiles"}}, wantErr: `rlimit "openfiles": unknown resource`},
		{name: "soft above hard fails", in: []protocol.Rlimit{{Resource: "nofile", Soft: 10, Hard: 5}}, wantErr: "soft limit 10 exceeds hard limit 5"},
		{name: "a finite soft under an unlimited hard is fine, the reverse is not", in: []protocol.Rlimit{{Resource: "nofile", Soft: -1, Hard: 5}},
			wantErr: "exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := parseRlimits(tc.in)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tc.want))
		})
	}
}

// execOutput runs a command on this machine and returns its output.
func execOutput(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).Output()
	return string(out), err
}
