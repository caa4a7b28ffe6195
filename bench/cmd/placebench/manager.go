package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func buildManager(ctx context.Context, root, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/manager")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("failed to build the manager: %w", err)
	}
	return nil
}

// manager is the manager process under test.
type manager struct {
	cmd         *exec.Cmd
	logPath     string
	logFile     *os.File
	metricsAddr string
	exited      chan struct{}
	waitErr     error
}

// freeLoopbackPort asks the kernel for an unused port on 127.0.0.1.
func freeLoopbackPort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}

func startManager(ctx context.Context, bin, kubeconfig, tmp string, extra []string) (*manager, error) {
	addr, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	m := &manager{logPath: filepath.Join(tmp, "manager.log"), metricsAddr: addr, exited: make(chan struct{})}
	if m.logFile, err = os.Create(m.logPath); err != nil {
		return nil, err
	}
	args := append([]string{
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--metrics-bind-address=" + addr,
		"--health-probe-bind-address=0",
	}, extra...)
	m.cmd = exec.Command(bin, args...)
	m.cmd.Stdout, m.cmd.Stderr = m.logFile, m.logFile
	// Don't outlive the benchmark if it dies.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	logf("starting %s %s", bin, strings.Join(args, " "))
	if err := m.cmd.Start(); err != nil {
		_ = m.logFile.Close()
		return nil, fmt.Errorf("failed to start the manager: %w", err)
	}
	go func() {
		m.waitErr = m.cmd.Wait()
		_ = m.logFile.Close()
		close(m.exited)
	}()
	return m, nil
}

func (m *manager) pid() int { return m.cmd.Process.Pid }

// waitRunning waits until the metrics endpoint answers and the controller
// has started its workers (its informers have synced).
func (m *manager) waitRunning(ctx context.Context, timeout time.Duration) error {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		select {
		case <-m.exited:
			return fmt.Errorf("the manager exited during startup (%v); see %s", m.waitErr, m.logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the manager did not start its workers within %s; see %s", timeout, m.logPath)
		}
		if _, err := m.scrape(ctx); err != nil {
			continue
		}
		b, err := os.ReadFile(m.logPath)
		if err == nil && bytes.Contains(b, []byte("Starting workers")) {
			logf("manager running (workers started) after %s", time.Since(start).Round(time.Millisecond))
			return nil
		}
	}
}

// memStat is the manager's memory from /proc/<pid>/status.
type memStat struct {
	rssMiB, hwmMiB float64
}

func (m *manager) memory() (memStat, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", m.pid()))
	if err != nil {
		return memStat{}, fmt.Errorf("failed to read the manager's memory: %w", err)
	}
	defer func() { _ = f.Close() }()
	var st memStat
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			return memStat{}, fmt.Errorf("bad %s line %q", k, sc.Text())
		}
		if k == "VmRSS" {
			st.rssMiB = kb / 1024
		} else {
			st.hwmMiB = kb / 1024
		}
	}
	if st.rssMiB == 0 {
		return memStat{}, errors.New("no VmRSS in /proc/<pid>/status")
	}
	return st, sc.Err()
}

// cpuSeconds is the manager's user+system CPU time so far.
func (m *manager) cpuSeconds() (float64, error) {
	return procCPUSeconds(m.pid())
}

// procCPUSeconds reads utime+stime of a process from /proc/<pid>/stat.
func procCPUSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields of the whole line.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("bad /proc/<pid>/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc/<pid>/stat")
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (ut + st) / clockTicks, nil
}

// childCPU returns the CPU seconds of this process's direct children that
// are named in names (kube-apiserver and etcd, started by envtest), by name.
func childCPU(names ...string) map[string]float64 {
	out := map[string]float64{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if i < 0 || j < i {
			continue
		}
		comm := string(b[i+1 : j])
		f := strings.Fields(string(b[j+1:]))
		if len(f) < 2 || !slices.Contains(names, comm) {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid != self {
			continue
		}
		if cpu, err := procCPUSeconds(pid); err == nil {
			out[comm] += cpu
		}
	}
	return out
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// machineCPU returns the busy and total jiffies of all CPUs from /proc/stat.
func machineCPU() (busy, total float64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, errors.New("bad /proc/stat")
	}
	for i, v := range f[1:] {
		if i >= 8 { // guest time is already in user/nice
			break
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, 0, err
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total, nil
}

// stop sends SIGTERM and waits; it kills the process after grace.
func (m *manager) stop(grace time.Duration) error {
	select {
	case <-m.exited:
		return fmt.Errorf("had already exited: %v", m.waitErr)
	default:
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
		return nil
	case <-time.After(grace):
		_ = m.cmd.Process.Kill()
		<-m.exited
		return fmt.Errorf("did not exit within %s of SIGTERM; killed", grace)
	}
}

// metricsDump is one scrape of the manager's Prometheus endpoint.
type metricsDump struct {
	raw     string
	samples []sample
}

type sample struct {
	name   string
	labels map[string]string
	value  float64
}

func (m *manager) scrape(ctx context.Context) (*metricsDump, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.metricsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	return parseMetrics(string(body)), nil
}

// parseMetrics reads the Prometheus text format, enough for the samples
// this benchmark summarises (no escapes inside label values are expected).
func parseMetrics(text string) *metricsDump {
	d := &metricsDump{raw: text}
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var name, lbls, rest string
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			name, lbls, rest = line[:i], line[i+1:j], strings.TrimSpace(line[j+1:])
		} else {
			name, rest, _ = strings.Cut(line, " ")
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		s := sample{name: name, labels: map[string]string{}, value: v}
		for kv := range strings.SplitSeq(lbls, ",") {
			k, val, ok := strings.Cut(kv, "=")
			if ok {
				s.labels[strings.TrimSpace(k)] = strings.Trim(val, `"`)
			}
		}
		d.samples = append(d.samples, s)
	}
	return d
}

// sum adds the samples named name whose labels include match.
func (d *metricsDump) sum(name string, match map[string]string) float64 {
	if d == nil {
		return 0
	}
	var t float64
	for _, s := range d.samples {
		if s.name == name && labelsMatch(s.labels, match) {
			t += s.value
		}
	}
	return t
}

func labelsMatch(l, match map[string]string) bool {
	for k, v := range match {
		if l[k] != v {
			return false
		}
	}
	return true
}

// histBucket finds the histogram bucket holding quantile q: the answer
// lies in (lo, hi] seconds (hi is +Inf past the last finite bucket).
func (d *metricsDump) histBucket(name string, match map[string]string, q float64) (lo, hi float64, ok bool) {
	if d == nil {
		return 0, 0, false
	}
	agg := map[float64]float64{} // le → cumulative count, summed over matching series
	for _, s := range d.samples {
		if s.name != name+"_bucket" || !labelsMatch(s.labels, match) {
			continue
		}
		le, err := strconv.ParseFloat(s.labels["le"], 64)
		if err != nil {
			continue
		}
		agg[le] += s.value
	}
	les := slices.Sorted(maps.Keys(agg))
	if len(les) == 0 || agg[les[len(les)-1]] == 0 {
		return 0, 0, false
	}
	rank := q * agg[les[len(les)-1]]
	for _, le := range les {
		if agg[le] >= rank {
			return lo, le, true
		}
		lo = le
	}
	return lo, math.Inf(1), true
}

// bucketString renders histBucket's answer, e.g. "10–30 s".
func (d *metricsDump) bucketString(name string, match map[string]string, q float64) string {
	lo, hi, ok := d.histBucket(name, match, q)
	switch {
	case !ok:
		return "n/a"
	case math.IsInf(hi, 1):
		return fmt.Sprintf("> %s", secs(lo))
	}
	return fmt.Sprintf("%s–%s", secs(lo), secs(hi))
}

func secs(v float64) string {
	if v < 1 {
		return fmt.Sprintf("%g ms", v*1000)
	}
	return fmt.Sprintf("%g s", v)
}
