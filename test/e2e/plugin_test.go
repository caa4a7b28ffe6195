//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"golang.org/x/sys/unix"
	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/microvm-dev/sandbox-operator/internal/access"
)

// PluginSpecInput is the input of pluginSpecs.
type PluginSpecInput struct {
	// Namespace holds Sandbox; the specs grant alice the plugin's
	// subresources there (a Role and a RoleBinding they create).
	Namespace string
	// Sandbox is Running while these specs run. Its main process prints
	// "tick N" every second (logs -f follows it); it runs as user app.
	Sandbox string
	// Timing records a measured duration in the suite's timing report.
	Timing func(what string, d time.Duration)
}

// pluginState is what pluginSpecs leaves to pluginLogsAfterRestartSpec: the
// kubeconfig and a `logs -f` started before the agent's restart.
type pluginState struct {
	input      PluginSpecInput
	kubeconfig string
	bin        string
	follower   *pluginProc
}

// pluginProc is a running bin/kubectl-sandbox whose output a test reads.
type pluginProc struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
	err    error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var tickRE = regexp.MustCompile(`(?m)^tick (\d+)\r?$`)

// ticks returns the tick numbers in out, in order.
func ticks(out string) []int {
	var n []int
	for _, m := range tickRE.FindAllStringSubmatch(out, -1) {
		i, _ := strconv.Atoi(m[1])
		n = append(n, i)
	}
	return n
}

func maxTick(out string) int {
	m := -1
	for _, t := range ticks(out) {
		m = max(m, t)
	}
	return m
}

// pluginSpecs runs bin/kubectl-sandbox as alice against the real stack:
// exec -it on a pty the test opens, cp both ways, ls/stat/mkdir/mv/rm and
// their errors, logs -f. It returns the state pluginLogsAfterRestartSpec
// needs.
func pluginSpecs(input PluginSpecInput) *pluginState {
	ctx := context.Background()
	st := &pluginState{input: input}
	// plugin runs the plugin to completion (30 s at most).
	plugin := func(args ...string) (string, int) {
		GinkgoHelper()
		runCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(runCtx, st.bin, append([]string{"--kubeconfig", st.kubeconfig, "-n", input.Namespace}, args...)...)
		out, err := cmd.CombinedOutput()
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) {
			Fail(fmt.Sprintf("kubectl-sandbox %v: %v", args, err))
		}
		return string(out), cmd.ProcessState.ExitCode()
	}
	mustPlugin := func(args ...string) string {
		GinkgoHelper()
		out, code := plugin(args...)
		Expect(code).To(BeZero(), "kubectl-sandbox %s:\n%s", strings.Join(args, " "), out)
		return out
	}
	requireSetup := func() {
		GinkgoHelper()
		Expect(st.kubeconfig).NotTo(BeEmpty(), "the plugin specs' setup (BeforeAll) failed")
	}
	target := func(p string) string { return input.Sandbox + ":" + p }

	Describe("the kubectl-sandbox plugin as alice", func() {
		BeforeAll(func() {
			root, err := filepath.Abs(filepath.Join("..", ".."))
			Expect(err).NotTo(HaveOccurred())
			st.bin = filepath.Join(root, "bin", "kubectl-sandbox")
			if err := errIfMissing(st.bin, "run `make build`"); err != nil {
				Fail(err.Error())
			}
			By("granting alice exec, attach, files, log and metrics on sandboxes, and get/list/watch/patch of Sandboxes in " + input.Namespace)
			Expect(k8sClient.Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "sandbox-plugin", Namespace: input.Namespace},
				Rules: []rbacv1.PolicyRule{
					{APIGroups: []string{access.Group}, Resources: []string{"sandboxes/exec", "sandboxes/attach", "sandboxes/files"}, Verbs: []string{"get", "create"}},
					{APIGroups: []string{access.Group}, Resources: []string{"sandboxes/log", "sandboxes/metrics"}, Verbs: []string{"get"}},
					{APIGroups: []string{"sandbox.microvm.dev"}, Resources: []string{"sandboxes"}, Verbs: []string{"get", "list", "watch", "patch"}},
				}})).To(Succeed())
			Expect(k8sClient.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "alice-sandbox-plugin", Namespace: input.Namespace},
				RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "sandbox-plugin"},
				Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: "alice", APIGroup: rbacv1.GroupName}}})).To(Succeed())
			u, err := testEnv.AddUser(envtest.User{Name: "alice"}, nil)
			Expect(err).NotTo(HaveOccurred())
			kc, err := u.KubeConfig()
			Expect(err).NotTo(HaveOccurred())
			path := filepath.Join(workDir, "alice.kubeconfig")
			Expect(os.WriteFile(path, kc, 0o600)).To(Succeed())
			cs, err := kubernetes.NewForConfig(u.Config())
			Expect(err).NotTo(HaveOccurred())
			Eventually(func(g Gomega) {
				for _, sub := range []string{"files", "log"} {
					r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
						Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
							Namespace: input.Namespace, Verb: "get", Group: access.Group, Resource: "sandboxes", Subresource: sub, Name: input.Sandbox}}},
						metav1.CreateOptions{})
					g.Expect(err).NotTo(HaveOccurred())
					g.Expect(r.Status.Allowed).To(BeTrue(), "sandboxes/%s", sub)
				}
			}).Should(Succeed())
			st.kubeconfig = path
		})

		It("runs exec -it /bin/sh on the test's terminal: stty size prints the pty's size, a resize reaches the guest, exit 5 is the plugin's exit code", func() {
			requireSetup()
			start := time.Now()
			master, slavePath := openPTY(30, 100)
			defer func() { _ = master.Close() }()
			out := &syncBuffer{}
			readDone := make(chan struct{})
			go func() {
				defer close(readDone)
				buf := make([]byte, 4096)
				for {
					n, err := master.Read(buf)
					_, _ = out.Write(buf[:n])
					if errors.Is(err, syscall.EIO) { // no process has the terminal open (between the two sessions)
						time.Sleep(20 * time.Millisecond)
						continue
					}
					if err != nil {
						return
					}
				}
			}()
			defer func() { _ = master.Close(); <-readDone }()
			// session starts the plugin with the pty as its controlling
			// terminal (stdin, stdout, stderr).
			session := func(args ...string) (*exec.Cmd, chan struct{}) {
				GinkgoHelper()
				slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
				Expect(err).NotTo(HaveOccurred())
				defer func() { _ = slave.Close() }()
				cmd := exec.Command(st.bin, append([]string{"--kubeconfig", st.kubeconfig, "-n", input.Namespace}, args...)...)
				cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
				cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Pdeathsig: syscall.SIGKILL}
				Expect(cmd.Start()).To(Succeed())
				exited := make(chan struct{})
				go func() { _ = cmd.Wait(); close(exited) }()
				DeferCleanup(func() {
					select {
					case <-exited:
					default:
						_ = cmd.Process.Kill()
						<-exited
					}
				})
				return cmd, exited
			}
			typeIn := func(s string) {
				GinkgoHelper()
				_, err := master.Write([]byte(s))
				Expect(err).NotTo(HaveOccurred())
			}
			termOut := func() string { return fmt.Sprintf("terminal output %q", out.String()) }

			cmd, exited := session("exec", "-it", input.Sandbox, "--", "/bin/sh")
			By("typing `stty size` at 30x100")
			typeIn("stty size\n")
			Eventually(out.String).WithTimeout(30*time.Second).Should(ContainSubstring("30 100\r\n"), termOut)
			input.Timing("plugin: exec -it /bin/sh → first stty size", time.Since(start))

			By("resizing the pty to 40x120 and sending SIGWINCH to the plugin: the running shell sees it")
			Expect(unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 120})).To(Succeed())
			Expect(cmd.Process.Signal(syscall.SIGWINCH)).To(Succeed())
			Eventually(func() string {
				typeIn("stty size\n")
				time.Sleep(300 * time.Millisecond)
				return out.String()
			}).WithTimeout(15*time.Second).Should(ContainSubstring("40 120\r\n"), termOut)

			By("typing `stty size; exit 5`")
			mark := len(out.String())
			typeIn("stty size; exit 5\n")
			Eventually(exited).WithTimeout(30*time.Second).Should(BeClosed(), termOut)
			Expect(cmd.ProcessState.ExitCode()).To(Equal(5), termOut)
			Expect(out.String()[mark:]).To(ContainSubstring("40 120\r\n"), termOut)

			By("starting a new session on the resized terminal: exec -it -- stty size")
			mark = len(out.String())
			cmd, exited = session("exec", "-it", input.Sandbox, "--", "stty", "size")
			Eventually(exited).WithTimeout(30*time.Second).Should(BeClosed(), termOut)
			Expect(cmd.ProcessState.ExitCode()).To(BeZero(), termOut)
			Eventually(func() string { return out.String()[mark:] }).Should(ContainSubstring("40 120\r\n"), termOut)
		})

		It("copies a 10 MiB file to the sandbox and back intact, and a directory tree with a subdirectory and a symlink both ways", func() {
			requireSetup()
			dir := GinkgoT().TempDir()
			payload := make([]byte, 10<<20)
			_, _ = rand.NewChaCha8([32]byte{'c', 'p'}).Read(payload)
			Expect(os.WriteFile(filepath.Join(dir, "big.bin"), payload, 0o644)).To(Succeed())
			start := time.Now()
			mustPlugin("cp", filepath.Join(dir, "big.bin"), target("/tmp/"))
			up := time.Since(start)
			start = time.Now()
			mustPlugin("cp", target("/tmp/big.bin"), filepath.Join(dir, "big.back"))
			down := time.Since(start)
			input.Timing("plugin: cp 10 MiB up", up)
			input.Timing("plugin: cp 10 MiB down", down)
			back, err := os.ReadFile(filepath.Join(dir, "big.back"))
			Expect(err).NotTo(HaveOccurred())
			Expect(sha256.Sum256(back)).To(Equal(sha256.Sum256(payload)), "%d bytes came back", len(back))
			out := mustPlugin("exec", input.Sandbox, "--", "sha256sum", "/tmp/big.bin")
			sum := sha256.Sum256(payload)
			Expect(out).To(HavePrefix(fmt.Sprintf("%x ", sum)), "the guest's sha256sum")

			By("copying tree/ (a.txt, sub/b.txt, link → a.txt) to the sandbox's /tmp")
			tree := filepath.Join(dir, "tree")
			Expect(os.MkdirAll(filepath.Join(tree, "sub"), 0o755)).To(Succeed())
			Expect(os.WriteFile(filepath.Join(tree, "a.txt"), []byte("alpha\n"), 0o644)).To(Succeed())
			Expect(os.WriteFile(filepath.Join(tree, "sub", "b.txt"), []byte("beta\n"), 0o600)).To(Succeed())
			Expect(os.Symlink("a.txt", filepath.Join(tree, "link"))).To(Succeed())
			mustPlugin("cp", tree, target("/tmp"))
			out = mustPlugin("exec", input.Sandbox, "--", "/bin/sh", "-c", "cat /tmp/tree/a.txt /tmp/tree/sub/b.txt; readlink /tmp/tree/link")
			Expect(out).To(Equal("alpha\nbeta\na.txt\n"))

			By("copying it back into an existing local directory (as cp -r: out/tree)")
			outDir := filepath.Join(dir, "out")
			Expect(os.Mkdir(outDir, 0o755)).To(Succeed())
			mustPlugin("cp", target("/tmp/tree"), outDir)
			Expect(os.ReadFile(filepath.Join(outDir, "tree", "a.txt"))).To(Equal([]byte("alpha\n")))
			Expect(os.ReadFile(filepath.Join(outDir, "tree", "sub", "b.txt"))).To(Equal([]byte("beta\n")))
			fi, err := os.Stat(filepath.Join(outDir, "tree", "sub", "b.txt"))
			Expect(err).NotTo(HaveOccurred())
			Expect(fi.Mode().Perm()).To(Equal(os.FileMode(0o600)), "permission bits kept")
			Expect(os.Readlink(filepath.Join(outDir, "tree", "link"))).To(Equal("a.txt"))
		})

		It("lists, stats, makes, renames and removes in the sandbox, and reports a missing path and a permission denied clearly", func() {
			requireSetup()
			out := mustPlugin("ls", target("/tmp/tree"))
			Expect(out).To(And(ContainSubstring("a.txt"), ContainSubstring("sub"), ContainSubstring("link")), "ls:\n%s", out)
			out = mustPlugin("stat", target("/tmp/big.bin"))
			Expect(out).To(And(MatchRegexp(`Size:\s+10485760\n`), MatchRegexp(fmt.Sprintf(`Uid/Gid:\s+%d/%d\n`, appUID, appGID))),
				"stat (the upload belongs to the sandbox's user app):\n%s", out)

			mustPlugin("mkdir", "-p", target("/tmp/made/x/y"))
			mustPlugin("mkdir", "-p", target("/tmp/made/x/y")) // exists: no error with -p
			mustPlugin("mv", target("/tmp/made"), "/tmp/moved")
			out = mustPlugin("exec", input.Sandbox, "--", "/bin/sh", "-c", "test -d /tmp/moved/x/y && echo moved; test -e /tmp/made || echo gone")
			Expect(out).To(Equal("moved\ngone\n"))
			mustPlugin("rm", "-r", target("/tmp/moved"), target("/tmp/tree"), target("/tmp/big.bin"))
			out = mustPlugin("exec", input.Sandbox, "--", "ls", "-a", "/tmp")
			Expect(out).NotTo(Or(ContainSubstring("moved"), ContainSubstring("tree"), ContainSubstring("big.bin")), "ls -a /tmp:\n%s", out)

			By("a missing path")
			for _, args := range [][]string{{"ls", target("/nonexistent")}, {"stat", target("/nonexistent")},
				{"cp", target("/nonexistent"), GinkgoT().TempDir()}, {"rm", target("/nonexistent")}} {
				out, code := plugin(args...)
				fmt.Fprintf(GinkgoWriter, "kubectl-sandbox %s → exit %d: %s", strings.Join(args, " "), code, out)
				Expect(code).NotTo(BeZero(), "%v:\n%s", args, out)
				Expect(strings.ToLower(out)).To(And(ContainSubstring("no such file"), ContainSubstring("/nonexistent")), "%v", args)
				Expect(out).To(Or(ContainSubstring("sandbox "+input.Namespace+"/"+input.Sandbox+": "), ContainSubstring(input.Sandbox+":/nonexistent")),
					"%v: the message names the sandbox", args)
				Expect(strings.Count(strings.TrimSpace(out), "\n")).To(BeNumerically("<", 3), "%v: a short message, not a dump:\n%s", args, out)
			}

			By("permission denied: /root is root's, mode 0700, and file operations run as the sandbox's user app")
			for _, args := range [][]string{{"ls", target("/root")}, {"cp", target("/root/.profile"), GinkgoT().TempDir()},
				{"cp", filepath.Join(GinkgoT().TempDir()), target("/root/")}, {"mkdir", target("/etc/forbidden")}} {
				out, code := plugin(args...)
				fmt.Fprintf(GinkgoWriter, "kubectl-sandbox %s → exit %d: %s", strings.Join(args, " "), code, out)
				Expect(code).NotTo(BeZero(), "%v:\n%s", args, out)
				Expect(strings.ToLower(out)).To(ContainSubstring("permission denied"), "%v", args)
			}
			By("--guest-user 0:0 runs them as root: a directory made in /root, listed, stat says root's")
			mustPlugin("mkdir", "--guest-user", "0:0", target("/root/made-by-root"))
			out = mustPlugin("ls", "--guest-user", "0:0", target("/root"))
			Expect(out).To(ContainSubstring("made-by-root"), "ls /root as root:\n%s", out)
			out = mustPlugin("stat", "--guest-user", "0", target("/root/made-by-root"))
			Expect(out).To(MatchRegexp(`Uid/Gid:\s+0/0`), "stat as root:\n%s", out)
		})

		It("attaches to the main process: its output from now on (not the log's start), live, and refuses -i", func() {
			requireSetup()
			start := time.Now()
			p := startPlugin(st, true, "attach", input.Sandbox)
			Eventually(func() int { return len(ticks(p.out.String())) }).WithTimeout(15*time.Second).Should(BeNumerically(">=", 2),
				func() string { return fmt.Sprintf("attach printed %q", p.out.String()) })
			input.Timing("plugin: attach → two ticks", time.Since(start))
			Expect(p.out.String()).NotTo(ContainSubstring("E2E user="), "attach starts at the present, the log's start is for logs")
			Expect(p.exited).NotTo(BeClosed())

			out, err := exec.Command(st.bin, "--kubeconfig", st.kubeconfig, "-n", input.Namespace, "attach", "-i", input.Sandbox).CombinedOutput()
			Expect(err).To(HaveOccurred())
			Expect(string(out)).To(ContainSubstring("unknown shorthand flag: 'i'"))
		})

		It("follows the sandbox's log live with logs -f", func() {
			requireSetup()
			start := time.Now()
			p := startPlugin(st, false, "logs", "-f", input.Sandbox)
			st.follower = p // left running for pluginLogsAfterRestartSpec, which ends it
			Eventually(func() []int { return ticks(p.out.String()) }).WithTimeout(30*time.Second).Should(Not(BeEmpty()),
				func() string { return fmt.Sprintf("logs -f printed %q", p.out.String()) })
			first := maxTick(p.out.String())
			input.Timing("plugin: logs -f → first tick", time.Since(start))
			Expect(p.out.String()).To(ContainSubstring("E2E user="), "the log from the start (no --tail)")
			Eventually(func() int { return maxTick(p.out.String()) }).WithTimeout(15*time.Second).Should(BeNumerically(">=", first+2),
				func() string { return fmt.Sprintf("logs -f printed %q", p.out.String()) })
			Expect(p.exited).NotTo(BeClosed())
		})
	})
	return st
}

// pluginLogsAfterRestartSpec runs after the probe's node agent was killed
// with SIGKILL and restarted: a new `logs -f` shows lines printed after the
// restart; what the `logs -f` started before does is reported.
func pluginLogsAfterRestartSpec(st *pluginState) {
	It("follows the log with a new logs -f after kill -9 and restart of the sandbox's node agent", func() {
		Expect(st.kubeconfig).NotTo(BeEmpty(), "the plugin specs' setup (BeforeAll) failed")
		now := time.Now()
		var oldMax int
		if st.follower != nil {
			oldMax = maxTick(st.follower.out.String())
		}
		if f := st.follower; f != nil {
			DeferCleanup(f.kill)
		}
		p := startPlugin(st, true, "logs", "-f", "--tail", "1", st.input.Sandbox)
		Eventually(func() []int { return ticks(p.out.String()) }).WithTimeout(30*time.Second).Should(Not(BeEmpty()),
			func() string { return fmt.Sprintf("logs -f printed %q", p.out.String()) })
		first := maxTick(p.out.String())
		Eventually(func() int { return maxTick(p.out.String()) }).WithTimeout(15*time.Second).Should(BeNumerically(">=", first+2),
			func() string { return fmt.Sprintf("logs -f printed %q", p.out.String()) })
		Expect(maxTick(p.out.String())).To(BeNumerically(">", oldMax+1),
			"lines printed after the restart (the old follower's last tick was %d)", oldMax)
		st.input.Timing("plugin: logs -f after the agent's restart → live ticks", time.Since(now))

		By("checking that the logs -f started before the restart resumed: it still runs and printed every tick once, through the restart")
		f := st.follower
		Expect(f).NotTo(BeNil(), "the logs -f spec did not leave its follower")
		Eventually(func() int { return maxTick(f.out.String()) }).WithTimeout(30*time.Second).Should(BeNumerically(">=", maxTick(p.out.String())),
			func() string { return fmt.Sprintf("the old follower printed %q", tail(f.out.String(), 400)) })
		Expect(f.exited).NotTo(BeClosed(), "the old follower exited: %v, %q", f.err, tail(f.out.String(), 400))
		got := ticks(f.out.String())
		Expect(got).NotTo(BeEmpty())
		for i := 1; i < len(got); i++ {
			Expect(got[i]).To(Equal(got[i-1]+1), "ticks %d then %d: the follower lost or repeated lines across the agent's restart (old max %d)",
				got[i-1], got[i], oldMax)
		}
		Expect(got[len(got)-1]).To(BeNumerically(">", oldMax+1), "the old follower printed ticks made after the restart")
	})
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (p *pluginProc) kill() {
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// startPlugin starts bin/kubectl-sandbox as alice, its output collected;
// with cleanup, it is killed at the end of the current spec.
func startPlugin(st *pluginState, cleanup bool, args ...string) *pluginProc {
	GinkgoHelper()
	p := &pluginProc{out: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(st.bin, append([]string{"--kubeconfig", st.kubeconfig, "-n", st.input.Namespace}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	Expect(p.cmd.Start()).To(Succeed())
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	if cleanup {
		DeferCleanup(p.kill)
	}
	return p
}

// openPTY opens a pseudo-terminal at rows x cols: the master (the test's
// side, non-blocking so that Close ends a Read) and the slave's path (the
// plugin's terminal).
func openPTY(rows, cols uint16) (master *os.File, slavePath string) {
	GinkgoHelper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	Expect(err).NotTo(HaveOccurred())
	Expect(unix.SetNonblock(fd, true)).To(Succeed())
	master = os.NewFile(uintptr(fd), "/dev/ptmx")
	Expect(unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0)).To(Succeed(), "unlockpt")
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	Expect(err).NotTo(HaveOccurred(), "ptsname")
	Expect(unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})).To(Succeed())
	return master, "/dev/pts/" + strconv.Itoa(n)
}
