package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/pkg/client/clientset/versioned"
)

const (
	leaseNamespace = "sandbox-system"
	benchNamespace = "bootbench"
	nodeName       = "bootbench-node"
)

// cluster is the envtest control plane and the benchmark's clients.
type cluster struct {
	env        *envtest.Environment
	kube       kubernetes.Interface
	sbx        versioned.Interface
	kubeconfig string
	version    string
}

func startCluster(root, work string) (*cluster, error) {
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		// KUBEBUILDER_ASSETS (the Makefile sets it) wins over this default.
		BinaryAssetsDirectory: filepath.Join(root, "bin", "k8s"),
	}
	start := time.Now()
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("failed to start envtest (run `make control-plane`): %w", err)
	}
	cl := &cluster{env: env}
	fail := func(err error) (*cluster, error) {
		_ = env.Stop()
		return nil, err
	}
	// The manager and the node agent run as processes with a kubeconfig of
	// their own: an admin user, as in `make dev`.
	user, err := env.AddUser(envtest.User{Name: "bootbench-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fail(fmt.Errorf("failed to add the admin user: %w", err))
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fail(fmt.Errorf("failed to build a kubeconfig: %w", err))
	}
	cl.kubeconfig = filepath.Join(work, "kubeconfig")
	if err := os.WriteFile(cl.kubeconfig, kc, 0o600); err != nil {
		return fail(err)
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "bootbench"
	if cl.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return fail(err)
	}
	if cl.sbx, err = versioned.NewForConfig(cfg); err != nil {
		return fail(err)
	}
	if v, err := cl.kube.Discovery().ServerVersion(); err == nil {
		cl.version = v.GitVersion
	}
	logf("control plane up in %s (kube-apiserver %s)", time.Since(start).Round(time.Millisecond), cl.version)
	return cl, nil
}

func (cl *cluster) stop() error { return cl.env.Stop() }

func (cl *cluster) createNamespaces(ctx context.Context, names ...string) error {
	for _, n := range names {
		if _, err := cl.kube.CoreV1().Namespaces().Create(ctx,
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("failed to create namespace %s: %w", n, err)
		}
	}
	return nil
}

// waitNodeReady waits until the node agent has registered its SandboxNode
// and reports it Ready.
func (cl *cluster) waitNodeReady(ctx context.Context, agent *process, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		sn, err := cl.sbx.SandboxV1alpha1().SandboxNodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err == nil && meta.IsStatusConditionTrue(sn.Status.Conditions, sandboxv1alpha1.NodeConditionReady) {
			return nil
		}
		select {
		case <-agent.exited:
			return fmt.Errorf("the node agent exited during startup (%v); see %s", agent.waitErr, agent.logPath)
		case <-ctx.Done():
			return fmt.Errorf("SandboxNode %s not Ready within %s (last error: %v); see %s", nodeName, timeout, err, agent.logPath)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// process is the manager or the node agent, run from its binary.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	exited  chan struct{}
	waitErr error
}

func startProcess(name, bin, logPath string, args ...string) (*process, error) {
	p := &process{name: name, logPath: logPath, exited: make(chan struct{})}
	var err error
	if p.logFile, err = os.Create(logPath); err != nil {
		return nil, err
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.logFile, p.logFile
	// Don't outlive the benchmark if it dies.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	logf("starting %s: %s %s", name, bin, strings.Join(args, " "))
	if err := p.cmd.Start(); err != nil {
		_ = p.logFile.Close()
		return nil, fmt.Errorf("failed to start the %s: %w", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		_ = p.logFile.Close()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// waitLog waits until the process's log holds marker.
func (p *process) waitLog(ctx context.Context, marker string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if b, err := os.ReadFile(p.logPath); err == nil && bytes.Contains(b, []byte(marker)) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the %s did not log %q within %s; see %s", p.name, marker, timeout, p.logPath)
		}
		select {
		case <-p.exited:
			return fmt.Errorf("the %s exited during startup (%v); see %s", p.name, p.waitErr, p.logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and, after grace, SIGKILL.
func (p *process) stop(grace time.Duration) error {
	if !p.alive() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
	return fmt.Errorf("the %s did not stop within %s of SIGTERM: killed", p.name, grace)
}

// buildBinaries builds what the benchmark runs, as `make build` does.
func buildBinaries(ctx context.Context, root string) error {
	for _, b := range []struct {
		out, pkg string
		env      []string
	}{
		{"bin/manager", "./cmd/manager", nil},
		{"bin/node-agent", "./cmd/node-agent", nil},
		{"bin/sandbox-init", "./cmd/sandbox-init", []string{"CGO_ENABLED=0"}},
	} {
		logf("go build -o %s %s", b.out, b.pkg)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(root, b.out), b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), b.env...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("failed to build %s: %w", b.out, err)
		}
	}
	return nil
}
