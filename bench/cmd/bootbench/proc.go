package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// vmMemory is a QEMU process's memory as /proc shows it.
type vmMemory struct {
	// rssMiB is VmRSS: everything resident, guest RAM included.
	rssMiB float64
	// guestRAMMiB is the resident part of the guest RAM mapping (the
	// anonymous mapping of exactly memoryMiB): the guest memory touched so
	// far. Zero when the mapping was not found.
	guestRAMMiB float64
	// guestRAMFound says whether the guest RAM mapping was identified.
	guestRAMFound bool
	// tcgMiB is the resident part of the largest private rwx anonymous
	// mapping, TCG's translation cache (zero under KVM).
	tcgMiB float64
}

// beyondGuestMiB is what QEMU holds besides the guest RAM it touched.
func (m vmMemory) beyondGuestMiB() float64 { return m.rssMiB - m.guestRAMMiB }

// readVMMemory reads VmRSS from /proc/<pid>/status and splits it with
// /proc/<pid>/smaps: the guest RAM is the anonymous mapping whose size is
// the guest's memory (QEMU maps it in one piece on microvm).
func readVMMemory(pid, memoryMiB int) (vmMemory, error) {
	var m vmMemory
	st, err := readStatusKB(pid, "VmRSS")
	if err != nil {
		return m, err
	}
	m.rssMiB = kbToMiB(st)
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return m, err
	}
	defer func() { _ = f.Close() }()
	type mapping struct {
		perms     string
		anonymous bool
		sizeKB    int64
		rssKB     int64
	}
	var maps []mapping
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			// A mapping header: address perms offset dev inode [path].
			maps = append(maps, mapping{perms: fields[1], anonymous: fields[4] == "0" && len(fields) == 5})
			continue
		}
		if len(maps) == 0 || len(fields) < 2 {
			continue
		}
		cur := &maps[len(maps)-1]
		v, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "Size:":
			cur.sizeKB = v
		case "Rss:":
			cur.rssKB = v
		}
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	var tcg mapping
	for _, mp := range maps {
		if !mp.anonymous {
			continue
		}
		if mp.sizeKB == int64(memoryMiB)*1024 && strings.HasPrefix(mp.perms, "rw") && !m.guestRAMFound {
			m.guestRAMMiB, m.guestRAMFound = kbToMiB(mp.rssKB), true
		}
		if mp.perms == "rwxp" && mp.sizeKB > tcg.sizeKB {
			tcg = mp
		}
	}
	m.tcgMiB = kbToMiB(tcg.rssKB)
	return m, nil
}

// readStatusKB reads one "<key>: <n> kB" line of /proc/<pid>/status.
func readStatusKB(pid int, key string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || k != key {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/status %s: %w", pid, key, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, key)
}

func rssMiB(pid int) (float64, error) {
	kb, err := readStatusKB(pid, "VmRSS")
	return kbToMiB(kb), err
}

func kbToMiB(kb int64) float64 { return float64(kb) / 1024 }

// cmdline is /proc/<pid>/cmdline as arguments.
func cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}

// cpuBusy reads the machine's busy and total jiffies from /proc/stat.
func cpuBusy() (busy, total float64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, 0, fmt.Errorf("unexpected /proc/stat line %q", line)
	}
	for i, f := range fields[1:] {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return 0, 0, err
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total, nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
