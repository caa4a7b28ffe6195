package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/utils/exec"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/pkg/client/clientset/versioned"
	"github.com/microvm-dev/sandbox-operator/pkg/client/clientset/versioned/fake"
)

func TestSubresourceURL(t *testing.T) {
	for _, c := range []struct {
		name, host, want string
	}{
		{"a plain server", "https://api:6443", "https://api:6443/apis/subresources.sandbox.microvm.dev/v1alpha1/namespaces/team/sandboxes/dev/files?op=stat&path=%2Fa+b"},
		{"a server behind a path prefix", "https://rancher/k8s/clusters/c-1/", "https://rancher/k8s/clusters/c-1/apis/subresources.sandbox.microvm.dev/v1alpha1/namespaces/team/sandboxes/dev/files?op=stat&path=%2Fa+b"},
		{"a bare host is https", "api:6443", "https://api:6443/apis/subresources.sandbox.microvm.dev/v1alpha1/namespaces/team/sandboxes/dev/files?op=stat&path=%2Fa+b"},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			u, err := subresourceURL(&rest.Config{Host: c.host}, "team", "dev", "files", fileQuery(protocol.FileStat, "/a b"))
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(u.String()).To(Equal(c.want))
		})
	}
}

func TestParseRemote(t *testing.T) {
	for _, c := range []struct {
		in     string
		want   target
		remote bool
		err    bool
	}{
		{in: "dev:/etc/hosts", want: target{Name: "dev", Path: "/etc/hosts"}, remote: true},
		{in: "other/dev:/x", want: target{Namespace: "other", Name: "dev", Path: "/x"}, remote: true},
		{in: "./dev:/x"},
		{in: "/tmp/a:b"},
		{in: "local-file"},
		{in: "dev:relative", remote: true, err: true},
	} {
		t.Run(c.in, func(t *testing.T) {
			g := NewWithT(t)
			got, remote, err := parseRemote(c.in)
			g.Expect(remote).To(Equal(c.remote))
			if c.err {
				g.Expect(err).To(HaveOccurred())
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(c.want))
		})
	}
}

// fakeExecutor records what exec asks for and returns err.
type fakeExecutor struct {
	url  *url.URL
	opts remotecommand.StreamOptions
	err  error
}

func (f *fakeExecutor) Stream(opts remotecommand.StreamOptions) error {
	return f.StreamWithContext(context.Background(), opts)
}

func (f *fakeExecutor) StreamWithContext(_ context.Context, opts remotecommand.StreamOptions) error {
	f.opts = opts
	if opts.Stdout != nil {
		_, _ = opts.Stdout.Write([]byte("out"))
	}
	return f.err
}

// The streaming itself (websocket v5 and the SPDY fallback) needs the
// real stack: the e2e tests cover it. Here: the URL, the query and the
// streams handed to the executor, and the exit code.
func TestExecBuildsTheRequest(t *testing.T) {
	g := NewWithT(t)
	api := newStandInAPI(t)
	p := newPluginRun(t, api.srv.URL, "input")
	f := &fakeExecutor{}
	var gotCfg *rest.Config
	p.opts.newExecutor = func(cfg *rest.Config, u *url.URL) (remotecommand.Executor, error) {
		gotCfg, f.url = cfg, u
		return f, nil
	}

	g.Expect(p.run("exec", "-i", "dev", "--", "sh", "-c", "echo hi")).To(Succeed())
	g.Expect(f.url.Path).To(Equal(standInPrefix + "team/sandboxes/dev/exec"))
	g.Expect(f.url.Query()).To(Equal(url.Values{"command": {"sh", "-c", "echo hi"}, "stdin": {"true"}, "stdout": {"true"}, "stderr": {"true"}}))
	g.Expect(gotCfg.BearerToken).To(Equal("secret-token"), "the kubeconfig's credentials: %#v", gotCfg)
	g.Expect(f.opts.Stdin).NotTo(BeNil())
	g.Expect(f.opts.Stderr).NotTo(BeNil())
	g.Expect(f.opts.Tty).To(BeFalse())
	g.Expect(p.stdout.String()).To(Equal("out"))

	// -n and no -i: no stdin stream.
	g.Expect(p.run("-n", "other", "exec", "dev", "--", "true")).To(Succeed())
	g.Expect(f.url.Path).To(Equal(standInPrefix + "other/sandboxes/dev/exec"))
	g.Expect(f.url.Query()).To(Equal(url.Values{"command": {"true"}, "stdout": {"true"}, "stderr": {"true"}}))
	g.Expect(f.opts.Stdin).To(BeNil())

	// -t on input that is no terminal falls back to pipes, as kubectl does.
	g.Expect(p.run("exec", "-it", "dev", "--", "sh")).To(Succeed())
	g.Expect(f.url.Query().Get("tty")).To(BeEmpty())
	g.Expect(p.stderr.String()).To(ContainSubstring("Unable to use a TTY"))

	// The remote exit code comes back as an exec.ExitError for main.
	f.err = exec.CodeExitError{Err: errors.New("command terminated with non-zero exit code"), Code: 3}
	err := p.run("exec", "dev", "--", "false")
	var exitErr exec.ExitError
	g.Expect(errors.As(err, &exitErr)).To(BeTrue())
	g.Expect(exitErr.ExitStatus()).To(Equal(3))

	g.Expect(p.run("exec", "dev", "ls")).To(MatchError(ContainSubstring("SANDBOX -- COMMAND")))
}

func TestAttachAsksForOutputOnlyAndPassesTheExitCode(t *testing.T) {
	g := NewWithT(t)
	api := newStandInAPI(t)
	p := newPluginRun(t, api.srv.URL, "")
	f := &fakeExecutor{}
	p.opts.newExecutor = func(_ *rest.Config, u *url.URL) (remotecommand.Executor, error) {
		f.url = u
		return f, nil
	}
	g.Expect(p.run("attach", "dev")).To(Succeed())
	g.Expect(f.url.Path).To(Equal(standInPrefix + "team/sandboxes/dev/attach"))
	g.Expect(f.url.Query()).To(Equal(url.Values{"stdout": {"true"}, "stderr": {"true"}}))
	g.Expect(f.opts.Stdin).To(BeNil())
	g.Expect(f.opts.Tty).To(BeFalse())
	g.Expect(p.stdout.String()).To(Equal("out"))

	f.err = exec.CodeExitError{Err: errors.New("the main process ended with exit code 4"), Code: 4}
	var exitErr exec.ExitError
	g.Expect(errors.As(p.run("attach", "dev"), &exitErr)).To(BeTrue())
	g.Expect(exitErr.ExitStatus()).To(Equal(4))

	g.Expect(p.run("attach", "-i", "dev")).To(MatchError(ContainSubstring("unknown shorthand flag")))
}

func TestExecQueryWithATerminalMergesStderr(t *testing.T) {
	g := NewWithT(t)
	g.Expect(execQuery([]string{"sh"}, true, true, false, true)).To(Equal(url.Values{"command": {"sh"}, "stdin": {"true"}, "stdout": {"true"}, "tty": {"true"}}))
}

func TestLogsMapsFlags(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		want url.Values
		err  string
	}{
		{name: "no flags: the whole log", want: url.Values{}},
		// Following asks for timestamps (to resume after a break) and strips them.
		{name: "follow and tail", args: []string{"-f", "--tail", "20"}, want: url.Values{"follow": {"true"}, "tailLines": {"20"}, "timestamps": {"true"}}},
		{name: "tail 0", args: []string{"--tail=0"}, want: url.Values{"tailLines": {"0"}}},
		{name: "since rounds up to seconds", args: []string{"--since", "1500ms"}, want: url.Values{"sinceSeconds": {"2"}}},
		{name: "since 5m", args: []string{"--since", "5m", "--timestamps"}, want: url.Values{"sinceSeconds": {"300"}, "timestamps": {"true"}}},
		{name: "since-time", args: []string{"--since-time", "2026-01-02T15:04:05Z"}, want: url.Values{"sinceTime": {"2026-01-02T15:04:05Z"}}},
		{name: "since and since-time conflict", args: []string{"--since", "5m", "--since-time", "2026-01-02T15:04:05Z"}, err: "at most one"},
		{name: "since-time must be RFC3339", args: []string{"--since-time", "yesterday"}, err: "RFC3339"},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			api := newStandInAPI(t)
			api.handle["log"] = func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("line 1\nline 2\n")) }
			p := newPluginRun(t, api.srv.URL, "")
			err := p.run(append([]string{"logs", "dev"}, c.args...)...)
			if c.err != "" {
				g.Expect(err).To(MatchError(ContainSubstring(c.err)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			r := api.last()
			g.Expect(r.Method).To(Equal(http.MethodGet))
			g.Expect(r.Path).To(Equal(standInPrefix + "team/sandboxes/dev/log"))
			g.Expect(r.Query).To(Equal(c.want))
			g.Expect(p.stdout.String()).To(Equal("line 1\nline 2\n"))
		})
	}
}

// TestLogsFollowResumesAfterABreak: a followed stream that breaks (the
// node agent restarted) is reopened from the last line's time, without
// losing or repeating lines.
func TestLogsFollowResumesAfterABreak(t *testing.T) {
	g := NewWithT(t)
	api := newStandInAPI(t)
	const t1, t2, t3 = "2026-11-28T20:00:01.000000001Z", "2026-11-28T20:00:02.000000002Z", "2026-11-28T20:00:03.000000003Z"
	calls := 0
	var sinceSeen string
	api.handle["log"] = func(w http.ResponseWriter, r *http.Request) {
		calls++
		if calls == 1 {
			_, _ = w.Write([]byte(t1 + " a\n" + t2 + " b1\n" + t2 + " b2\n" + t3 + " partial"))
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // the stream breaks mid-line
		}
		sinceSeen = r.URL.Query().Get("sinceTime")
		// The since bound is inclusive: the lines of t2 come again.
		_, _ = w.Write([]byte(t2 + " b1\n" + t2 + " b2\n" + t3 + " partial line\n"))
	}
	p := newPluginRun(t, api.srv.URL, "")
	g.Expect(p.run("logs", "-f", "dev")).To(Succeed())
	g.Expect(calls).To(Equal(2))
	g.Expect(sinceSeen).To(Equal(t2))
	g.Expect(p.stdout.String()).To(Equal("a\nb1\nb2\npartial line\n"))
}

func TestStatusErrorsAreSurfaced(t *testing.T) {
	g := NewWithT(t)
	api := newStandInAPI(t)
	p := newPluginRun(t, api.srv.URL, "")

	err := p.run("ls", "dev:/missing")
	g.Expect(err).To(MatchError("/missing: no such file or directory"))
	g.Expect(apierrors.IsNotFound(err)).To(BeTrue())

	err = p.run("ls", "nope:/")
	g.Expect(apierrors.IsNotFound(err)).To(BeTrue())
	g.Expect(err.Error()).To(ContainSubstring(`"nope" not found`))

	api.handle["metrics"] = func(w http.ResponseWriter, _ *http.Request) {
		standInStatus(w, apierrors.NewForbidden(sandboxesResource("sandboxes/metrics"), "dev", errors.New(`user "bob" cannot get resource "sandboxes/metrics"`)))
	}
	err = p.run("top", "dev")
	g.Expect(apierrors.IsForbidden(err)).To(BeTrue())
	g.Expect(err.Error()).To(ContainSubstring(`user "bob" cannot get`))

	api.handle["log"] = func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte("upstream down"))
	}
	err = p.run("logs", "dev")
	g.Expect(err).To(MatchError("upstream down"))
	g.Expect(apierrors.ReasonForError(err)).To(BeEquivalentTo(""))
}

func TestFileCommands(t *testing.T) {
	g := NewWithT(t)
	api := newStandInAPI(t)
	p := newPluginRun(t, api.srv.URL, "")

	g.Expect(p.run("mkdir", "dev:/a")).To(Succeed())
	g.Expect(api.last()).To(Equal(recorded{Method: http.MethodPost, Path: standInPrefix + "team/sandboxes/dev/files", Query: url.Values{"op": {"mkdir"}, "path": {"/a"}}}))
	g.Expect(p.run("mkdir", "dev:/a")).To(MatchError("/a: file exists"))
	g.Expect(p.run("mkdir", "-p", "--mode", "0700", "dev:/a/b/c", "dev:/d")).To(Succeed())
	g.Expect(api.last().Query).To(Equal(url.Values{"op": {"mkdir"}, "path": {"/d"}, "recursive": {"true"}, "mode": {"0700"}}))
	g.Expect(filepath.Join(api.root, "a/b/c")).To(BeADirectory())

	g.Expect(os.WriteFile(filepath.Join(api.root, "a/f.txt"), []byte("hello"), 0o640)).To(Succeed())
	g.Expect(os.Symlink("f.txt", filepath.Join(api.root, "a/l"))).To(Succeed())
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	g.Expect(os.Chtimes(filepath.Join(api.root, "a/f.txt"), mtime, mtime)).To(Succeed())

	g.Expect(p.run("ls", "dev:/a")).To(Succeed())
	g.Expect(api.last()).To(Equal(recorded{Method: http.MethodGet, Path: standInPrefix + "team/sandboxes/dev/files", Query: url.Values{"op": {"list"}, "path": {"/a"}}}))
	lines := strings.Split(strings.TrimSpace(p.stdout.String()), "\n")
	g.Expect(lines).To(HaveLen(4))
	g.Expect(strings.Fields(lines[0])).To(Equal([]string{"MODE", "SIZE", "MODIFIED", "NAME"}))
	g.Expect(strings.Fields(lines[1])).To(HaveExactElements(HavePrefix("drwx"), Not(BeEmpty()), Not(BeEmpty()), Equal("b")))
	g.Expect(strings.Fields(lines[2])).To(Equal([]string{"-rw-r-----", "5", "2026-01-02T03:04:05Z", "f.txt"}))
	g.Expect(strings.Fields(lines[3])).To(HaveExactElements(HavePrefix("L"), Not(BeEmpty()), Not(BeEmpty()), Equal("l"), Equal("->"), Equal("f.txt")))

	g.Expect(p.run("ls", "-o", "json", "dev:/a")).To(Succeed())
	var entries []protocol.FileInfo
	g.Expect(json.Unmarshal(p.stdout.Bytes(), &entries)).To(Succeed())
	g.Expect(entries).To(HaveLen(3))

	g.Expect(p.run("stat", "dev:/a/f.txt")).To(Succeed())
	g.Expect(api.last().Query).To(Equal(url.Values{"op": {"stat"}, "path": {"/a/f.txt"}}))
	g.Expect(p.stdout.String()).To(And(ContainSubstring("Kind:     file"), ContainSubstring("Size:     5"), ContainSubstring("-rw-r----- (0640)")))

	g.Expect(p.run("mv", "dev:/a/f.txt", "/a/g.txt")).To(Succeed())
	g.Expect(api.last().Query).To(Equal(url.Values{"op": {"rename"}, "path": {"/a/f.txt"}, "dest": {"/a/g.txt"}}))
	g.Expect(filepath.Join(api.root, "a/g.txt")).To(BeAnExistingFile())
	g.Expect(p.run("mv", "dev:/a/g.txt", "other:/x")).To(MatchError(ContainSubstring("inside one sandbox")))

	g.Expect(p.run("rm", "dev:/a")).To(HaveOccurred())
	g.Expect(p.run("rm", "-r", "dev:/a")).To(Succeed())
	g.Expect(api.last()).To(Equal(recorded{Method: http.MethodPost, Path: standInPrefix + "team/sandboxes/dev/files", Query: url.Values{"op": {"remove"}, "path": {"/a"}, "recursive": {"true"}}}))
	g.Expect(filepath.Join(api.root, "a")).NotTo(BeADirectory())
	g.Expect(p.run("rm", "dev:/a")).To(MatchError("/a: no such file or directory"))
	g.Expect(p.run("rm", "-f", "dev:/a")).To(Succeed())
	g.Expect(p.run("rm", "-f", "gone:/a")).To(HaveOccurred(), "a missing sandbox is no missing file")

	// --guest-user reaches the files subresource as its user parameter.
	g.Expect(p.run("ls", "--guest-user", "0:0", "dev:/")).To(Succeed())
	g.Expect(api.last().Query).To(Equal(url.Values{"op": {"list"}, "path": {"/"}, "user": {"0:0"}}))
}

// writeTree makes a small tree: dir/{top.txt, sub/{deep.bin, link -> ../top.txt}, empty/}.
func writeTree(g Gomega, dir string) {
	g.Expect(os.MkdirAll(filepath.Join(dir, "sub"), 0o755)).To(Succeed())
	g.Expect(os.MkdirAll(filepath.Join(dir, "empty"), 0o750)).To(Succeed())
	g.Expect(os.WriteFile(filepath.Join(dir, "top.txt"), []byte("top\n"), 0o644)).To(Succeed())
	g.Expect(os.WriteFile(filepath.Join(dir, "sub/deep.bin"), []byte{0, 1, 2, 255}, 0o755)).To(Succeed())
	g.Expect(os.Symlink("../top.txt", filepath.Join(dir, "sub/link"))).To(Succeed())
}

func expectTree(g Gomega, dir string) {
	g.Expect(os.ReadFile(filepath.Join(dir, "top.txt"))).To(Equal([]byte("top\n")))
	g.Expect(os.ReadFile(filepath.Join(dir, "sub/deep.bin"))).To(Equal([]byte{0, 1, 2, 255}))
	fi, err := os.Stat(filepath.Join(dir, "sub/deep.bin"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(fi.Mode().Perm()).To(Equal(os.FileMode(0o755)))
	g.Expect(os.Readlink(filepath.Join(dir, "sub/link"))).To(Equal("../top.txt"))
	g.Expect(filepath.Join(dir, "empty")).To(BeADirectory())
}

func TestCpFile(t *testing.T) {
	g := NewWithT(t)
	api := newStandInAPI(t)
	p := newPluginRun(t, api.srv.URL, "")
	local := t.TempDir()
	g.Expect(os.WriteFile(filepath.Join(local, "app.py"), []byte("print(1)\n"), 0o600)).To(Succeed())
	g.Expect(os.Mkdir(filepath.Join(api.root, "work"), 0o755)).To(Succeed())

	// To a new name.
	g.Expect(p.run("cp", filepath.Join(local, "app.py"), "dev:/work/main.py")).To(Succeed())
	g.Expect(api.last()).To(Equal(recorded{Method: http.MethodPost, Path: standInPrefix + "team/sandboxes/dev/files", Query: url.Values{"op": {"write"}, "path": {"/work/main.py"}, "mode": {"0600"}}}))
	g.Expect(os.ReadFile(filepath.Join(api.root, "work/main.py"))).To(Equal([]byte("print(1)\n")))

	// Into an existing directory, under its own name.
	g.Expect(p.run("cp", filepath.Join(local, "app.py"), "dev:/work")).To(Succeed())
	g.Expect(api.last().Query.Get("path")).To(Equal("/work/app.py"))

	// Back, to a new name and into an existing directory.
	back := t.TempDir()
	g.Expect(p.run("cp", "dev:/work/main.py", filepath.Join(back, "copy.py"))).To(Succeed())
	g.Expect(api.last()).To(Equal(recorded{Method: http.MethodGet, Path: standInPrefix + "team/sandboxes/dev/files", Query: url.Values{"op": {"read"}, "path": {"/work/main.py"}}}))
	g.Expect(os.ReadFile(filepath.Join(back, "copy.py"))).To(Equal([]byte("print(1)\n")))
	g.Expect(p.run("cp", "dev:/work/main.py", back)).To(Succeed())
	g.Expect(os.ReadFile(filepath.Join(back, "main.py"))).To(Equal([]byte("print(1)\n")))

	g.Expect(p.run("cp", "dev:/work/nope", back)).To(MatchError(ContainSubstring("no such file or directory")))
	g.Expect(p.run("cp", "a", "b")).To(MatchError(ContainSubstring("exactly one")))
}

func TestCpDirectoryRoundTrip(t *testing.T) {
	g := NewWithT(t)
	api := newStandInAPI(t)
	p := newPluginRun(t, api.srv.URL, "")
	local := filepath.Join(t.TempDir(), "src")
	writeTree(g, local)

	// To a new path: it becomes the copy (tar entries "src/...", untar into its parent).
	g.Expect(p.run("cp", local, "dev:/copy")).To(Succeed())
	g.Expect(api.last()).To(Equal(recorded{Method: http.MethodPost, Path: standInPrefix + "team/sandboxes/dev/files", Query: url.Values{"op": {"untar"}, "path": {"/"}}}))
	expectTree(g, filepath.Join(api.root, "copy"))

	// Into an existing directory: under its own name.
	g.Expect(p.run("cp", local, "dev:/copy")).To(Succeed())
	g.Expect(api.last().Query).To(Equal(url.Values{"op": {"untar"}, "path": {"/copy"}}))
	expectTree(g, filepath.Join(api.root, "copy/src"))

	// And back: to a new path, then into an existing directory.
	back := t.TempDir()
	g.Expect(p.run("cp", "dev:/copy", filepath.Join(back, "out"))).To(Succeed())
	g.Expect(api.last()).To(Equal(recorded{Method: http.MethodGet, Path: standInPrefix + "team/sandboxes/dev/files", Query: url.Values{"op": {"tar"}, "path": {"/copy"}}}))
	expectTree(g, filepath.Join(back, "out"))
	expectTree(g, filepath.Join(back, "out/src"))
	g.Expect(p.run("cp", "dev:/copy/src", back)).To(Succeed())
	expectTree(g, filepath.Join(back, "src"))
}

func TestCpFromASandboxKeepsTimesAndRefusesLinksOutOfTheDestination(t *testing.T) {
	g := NewWithT(t)
	api := newStandInAPI(t)
	p := newPluginRun(t, api.srv.URL, "")
	dir := filepath.Join(api.root, "evil")
	g.Expect(os.MkdirAll(dir, 0o755)).To(Succeed())
	g.Expect(os.Symlink("/etc", filepath.Join(dir, "abs"))).To(Succeed())
	g.Expect(os.Symlink("../../..", filepath.Join(dir, "up"))).To(Succeed())
	g.Expect(os.WriteFile(filepath.Join(dir, "ok"), []byte("ok"), 0o644)).To(Succeed())
	mtime := time.Date(2025, 6, 7, 8, 9, 10, 0, time.UTC)
	g.Expect(os.Chtimes(filepath.Join(dir, "ok"), mtime, mtime)).To(Succeed())

	back := filepath.Join(t.TempDir(), "out")
	g.Expect(p.run("cp", "dev:/evil", back)).To(Succeed())
	g.Expect(os.ReadFile(filepath.Join(back, "ok"))).To(Equal([]byte("ok")))
	fi, err := os.Stat(filepath.Join(back, "ok"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(fi.ModTime().UTC()).To(Equal(mtime), "modification times come along")
	g.Expect(filepath.Join(back, "abs")).NotTo(BeAnExistingFile())
	g.Expect(filepath.Join(back, "up")).NotTo(BeAnExistingFile())
	g.Expect(p.stderr.String()).To(ContainSubstring(`skipping symlink "evil/abs"`))
}

func TestTop(t *testing.T) {
	g := NewWithT(t)
	api := newStandInAPI(t)
	var n atomic.Int32
	api.handle["metrics"] = func(w http.ResponseWriter, _ *http.Request) {
		i := int64(n.Add(1))
		// 1.5 CPUs busy over one second of guest time.
		m := protocol.Metrics{CPUNanos: i * 1_500_000_000, UptimeNanos: 3600e9 + i*1e9,
			MemoryTotalBytes: 1 << 30, MemoryAvailableBytes: 768 << 20, DiskReadBytes: 10 << 20, DiskWriteBytes: 512,
			NetRxBytes: 2048, NetTxBytes: 3 << 30}
		_ = json.NewEncoder(w).Encode(m)
	}
	p := newPluginRun(t, api.srv.URL, "")
	g.Expect(p.run("top", "dev", "--interval", "10ms")).To(Succeed())
	g.Expect(n.Load()).To(BeEquivalentTo(2))
	g.Expect(api.last()).To(Equal(recorded{Method: http.MethodGet, Path: standInPrefix + "team/sandboxes/dev/metrics", Query: url.Values{}}))
	lines := strings.Split(strings.TrimSpace(p.stdout.String()), "\n")
	g.Expect(lines).To(HaveLen(2))
	g.Expect(strings.Fields(lines[1])).To(Equal([]string{"dev", "150.0%", "256.0Mi", "/", "1.0Gi", "10.0Mi", "/", "512B", "2.0Ki", "/", "3.0Gi", "1h0m2s"}))
}

func TestCPUPercentNeedsProgress(t *testing.T) {
	g := NewWithT(t)
	a := &protocol.Metrics{CPUNanos: 10, UptimeNanos: 100}
	g.Expect(cpuPercent(a, a)).To(BeEquivalentTo(-1))
	g.Expect(cpuPercent(a, &protocol.Metrics{CPUNanos: 5, UptimeNanos: 200})).To(BeEquivalentTo(-1), "a reboot in between")
	g.Expect(cpuPercent(a, &protocol.Metrics{CPUNanos: 60, UptimeNanos: 200})).To(BeNumerically("~", 50, 0.001))
}

func sandbox(phase sandboxv1alpha1.SandboxPhase, state sandboxv1alpha1.DesiredState) *sandboxv1alpha1.Sandbox {
	return &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: "dev", Namespace: "team", Generation: 1},
		Spec:       sandboxv1alpha1.SandboxSpec{State: state},
		Status:     sandboxv1alpha1.SandboxStatus{Phase: phase, ObservedGeneration: 1},
	}
}

// newFakeClientset makes the generated fake with sbx created through
// the typed client: the trackers file objects given to the constructors
// under a guessed resource, "sandboxs".
func newFakeClientset(g Gomega, sbx *sandboxv1alpha1.Sandbox) *fake.Clientset {
	// NewClientset's field-managed tracker needs a type converter with
	// our schemas, which the generated fake does not have; merge patches
	// and watches are all these tests need.
	cs := fake.NewSimpleClientset()
	_, err := cs.SandboxV1alpha1().Sandboxes(sbx.Namespace).Create(context.Background(), sbx, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	return cs
}

func TestStopAndStartPatchTheSpec(t *testing.T) {
	g := NewWithT(t)
	g.Expect(string(startPatch())).To(Equal(`{"spec":{"state":"Running"}}`))
	g.Expect(string(stopPatch("", nil))).To(Equal(`{"spec":{"state":"Stopped"}}`))
	gp := int64(30)
	g.Expect(string(stopPatch(sandboxv1alpha1.StopDrain, &gp))).To(Equal(`{"spec":{"state":"Stopped","stopPolicy":{"gracePeriodSeconds":30,"mode":"Drain"}}}`))

	cs := newFakeClientset(g, sandbox(sandboxv1alpha1.PhaseRunning, sandboxv1alpha1.DesiredStateRunning))
	p := newPluginRun(t, "https://unused.invalid", "")
	p.opts.NewClientset = func(*rest.Config) (versioned.Interface, error) { return cs, nil }
	get := func() *sandboxv1alpha1.Sandbox {
		s, err := cs.SandboxV1alpha1().Sandboxes("team").Get(context.Background(), "dev", metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		return s
	}

	g.Expect(p.run("stop", "dev", "--kill")).To(Succeed())
	g.Expect(get().Spec.State).To(Equal(sandboxv1alpha1.DesiredStateStopped))
	g.Expect(get().Spec.StopPolicy.Mode).To(Equal(sandboxv1alpha1.StopKill))
	g.Expect(p.stdout.String()).To(Equal("sandbox.sandbox.microvm.dev/dev patched (spec.state=Stopped)\n"))

	g.Expect(p.run("stop", "dev", "--drain", "--grace-period", "30")).To(Succeed())
	g.Expect(get().Spec.StopPolicy).To(Equal(sandboxv1alpha1.StopPolicy{Mode: sandboxv1alpha1.StopDrain, GracePeriodSeconds: &gp}))
	g.Expect(p.run("stop", "dev", "--drain", "--kill")).To(MatchError(ContainSubstring("at most one")))
	g.Expect(p.run("stop", "dev", "--grace-period", "4000")).To(MatchError(ContainSubstring("between 0 and 3600")))

	g.Expect(p.run("start", "dev")).To(Succeed())
	g.Expect(get().Spec.State).To(Equal(sandboxv1alpha1.DesiredStateRunning))
	g.Expect(get().Spec.StopPolicy.Mode).To(Equal(sandboxv1alpha1.StopDrain), "start leaves the stop policy alone")

	g.Expect(p.run("-n", "other", "start", "dev")).To(MatchError(ContainSubstring("not found")))
}

func TestStartWaitsForRunning(t *testing.T) {
	g := NewWithT(t)
	cs := newFakeClientset(g, sandbox(sandboxv1alpha1.PhaseStopped, sandboxv1alpha1.DesiredStateStopped))
	p := newPluginRun(t, "https://unused.invalid", "")
	p.opts.NewClientset = func(*rest.Config) (versioned.Interface, error) { return cs, nil }

	done := make(chan error, 1)
	go func() { done <- p.run("start", "dev", "--wait", "--timeout", "20s") }()
	// The controller's part: Starting, then Running.
	for _, phase := range []sandboxv1alpha1.SandboxPhase{sandboxv1alpha1.PhaseStarting, sandboxv1alpha1.PhaseRunning} {
		time.Sleep(100 * time.Millisecond)
		g.Consistently(done, 50*time.Millisecond).ShouldNot(Receive())
		s, err := cs.SandboxV1alpha1().Sandboxes("team").Get(context.Background(), "dev", metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		s.Status.Phase = phase
		_, err = cs.SandboxV1alpha1().Sandboxes("team").UpdateStatus(context.Background(), s, metav1.UpdateOptions{})
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Eventually(done, 10*time.Second).Should(Receive(Not(HaveOccurred())))
	g.Expect(p.stdout.String()).To(HaveSuffix("sandbox.sandbox.microvm.dev/dev Running\n"))
}

func TestWaitEndsOnACrashOrTheTimeout(t *testing.T) {
	g := NewWithT(t)
	cs := newFakeClientset(g, sandbox(sandboxv1alpha1.PhaseCrashed, sandboxv1alpha1.DesiredStateRunning))
	_, err := waitForPhase(context.Background(), cs, "team", "dev", 1, sandboxv1alpha1.PhaseRunning, 5*time.Second)
	g.Expect(err).To(MatchError(ContainSubstring("crashed")))
	phase, err := waitForPhase(context.Background(), cs, "team", "dev", 1, sandboxv1alpha1.PhaseStopped, 5*time.Second)
	g.Expect(err).NotTo(HaveOccurred(), "a crashed sandbox is stopped")
	g.Expect(phase).To(Equal(sandboxv1alpha1.PhaseCrashed))
	// A status from before the patch does not count.
	_, err = waitForPhase(context.Background(), cs, "team", "dev", 2, sandboxv1alpha1.PhaseRunning, 200*time.Millisecond)
	g.Expect(err).To(MatchError(ContainSubstring("timed out")))
}

func TestHumanBytes(t *testing.T) {
	g := NewWithT(t)
	for n, want := range map[int64]string{0: "0B", 1023: "1023B", 1024: "1.0Ki", 1536: "1.5Ki", 5 << 30: "5.0Gi"} {
		g.Expect(humanBytes(n)).To(Equal(want), fmt.Sprint(n))
	}
}
