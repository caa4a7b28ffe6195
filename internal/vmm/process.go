package vmm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// Process identifies a monitor process across node-agent restarts: a pid
// alone may have been recycled, the pair (pid, start time) may not.
type Process struct {
	// PID is the process id.
	PID int `json:"pid"`
	// StartTime is field 22 of /proc/<pid>/stat: clock ticks after boot.
	StartTime uint64 `json:"startTime"`
	// Cgroup is the VM's own cgroup, if it has one.
	Cgroup *Cgroup `json:"cgroup,omitempty"`
	// Network is the VM's NIC, if it has one: an adopted VM's DialNet
	// tells "no NIC" from "QEMU has not created the socket yet" by it.
	// Records written before NICs existed have none, rightly.
	Network *NetworkDevice `json:"network,omitempty"`
}

// ErrProcessGone is returned for a process that no longer runs (or whose
// pid now belongs to another process).
var ErrProcessGone = errors.New("vmm: process is gone")

// ProcessStartTime reads the start time of pid from procRoot (normally
// "/proc").
func ProcessStartTime(procRoot string, pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if os.IsNotExist(err) {
		return 0, ErrProcessGone
	}
	if err != nil {
		return 0, err
	}
	return parseStatStartTime(b)
}

// parseStatStartTime extracts field 22 from a /proc/<pid>/stat line. The
// second field, the command name in parentheses, may itself hold spaces and
// parentheses, so the fields are counted from the last ')'.
func parseStatStartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("vmm: malformed /proc stat line")
	}
	// After ')' come fields 3, 4, ...: field 22 is the 20th of them.
	fields := bytes.Fields(stat[i+1:])
	if len(fields) < 20 {
		return 0, errors.New("vmm: short /proc stat line")
	}
	v, err := strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("vmm: start time in /proc stat: %w", err)
	}
	return v, nil
}

// Alive reports whether p still runs as the same process.
func (p Process) Alive() (bool, error) {
	st, err := ProcessStartTime("/proc", p.PID)
	if errors.Is(err, ErrProcessGone) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return st == p.StartTime, nil
}

// Same reports whether p and o are the same process.
func (p Process) Same(o Process) bool { return p.PID == o.PID && p.StartTime == o.StartTime }

// WriteProcess records p in file, atomically.
func WriteProcess(file string, p Process) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("vmm: recording the process: %w", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("vmm: recording the process: %w", err)
	}
	return nil
}

// ReadProcess reads a record written by WriteProcess.
func ReadProcess(file string) (Process, error) {
	var p Process
	b, err := os.ReadFile(file)
	if err != nil {
		return p, fmt.Errorf("vmm: reading the process record: %w", err)
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("vmm: reading the process record %s: %w", file, err)
	}
	return p, nil
}
