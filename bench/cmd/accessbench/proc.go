package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

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

// killAgentVMs kills the QEMU processes recorded under the agent's state
// directory (the agent leaves its VMs running when it stops, by design).
func killAgentVMs(stateDir string) int {
	dirs, _ := filepath.Glob(filepath.Join(stateDir, "vms", "*"))
	n := 0
	for _, d := range dirs {
		p, err := vmm.ReadProcess(vmm.PathsIn(d).Process)
		if err != nil {
			continue
		}
		if alive, err := p.Alive(); err == nil && alive {
			if proc, err := os.FindProcess(p.PID); err == nil && proc.Kill() == nil {
				n++
			}
		}
	}
	return n
}

// freeLoopbackPort asks the kernel for an unused port on 127.0.0.1.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}
