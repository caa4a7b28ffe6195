package initd

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// userHZ is the unit of /proc/stat's times (USER_HZ, 100 on every Linux
// architecture the guest runs on).
const userHZ = 100

// sectorSize is the unit of /proc/diskstats's sector counts, whatever the
// device's own sector size.
const sectorSize = 512

// readProcMetrics fills the /proc parts of m from procDir (/proc, or a
// test's copy). A file that cannot be read leaves its fields zero: a
// heartbeat is never failed for its metrics.
func readProcMetrics(procDir string, m *protocol.Metrics) {
	if b, err := os.ReadFile(filepath.Join(procDir, "stat")); err == nil {
		m.CPUNanos = parseCPUNanos(b)
	}
	if b, err := os.ReadFile(filepath.Join(procDir, "meminfo")); err == nil {
		m.MemoryTotalBytes, m.MemoryAvailableBytes = parseMeminfo(b)
	}
	if b, err := os.ReadFile(filepath.Join(procDir, "diskstats")); err == nil {
		m.DiskReadBytes, m.DiskWriteBytes = parseDiskstats(b)
	}
	if b, err := os.ReadFile(filepath.Join(procDir, "net/dev")); err == nil {
		m.NetRxBytes, m.NetTxBytes = parseNetDev(b)
	}
}

// parseCPUNanos reads the busy time of all CPUs from /proc/stat's "cpu"
// line: every column but idle and iowait (guest and guest_nice are
// already in user and nice, so they are not added again).
func parseCPUNanos(stat []byte) int64 {
	sc := bufio.NewScanner(bytes.NewReader(stat))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != "cpu" {
			continue
		}
		var busy int64
		// user nice system idle iowait irq softirq steal guest guest_nice
		for i, v := range f[1:] {
			if i == 3 || i == 4 || i >= 8 {
				continue
			}
			n, _ := strconv.ParseInt(v, 10, 64)
			busy += n
		}
		return busy * (1e9 / userHZ)
	}
	return 0
}

// parseMeminfo reads MemTotal and MemAvailable (kB) in bytes.
func parseMeminfo(b []byte) (total, avail int64) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			total = n * 1024
		case "MemAvailable:":
			avail = n * 1024
		}
	}
	return total, avail
}

// parseDiskstats sums the sectors read and written of the virtio disks
// (vd*, whole disks only: a partition's I/O is already its disk's).
func parseDiskstats(b []byte) (read, written int64) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// major minor name reads merged sectors ms writes merged sectors …
		if len(f) < 10 || !isWholeVirtioDisk(f[2]) {
			continue
		}
		r, _ := strconv.ParseInt(f[5], 10, 64)
		w, _ := strconv.ParseInt(f[9], 10, 64)
		read += r * sectorSize
		written += w * sectorSize
	}
	return read, written
}

// isWholeVirtioDisk reports whether name is vda, vdb, … (not vda1).
func isWholeVirtioDisk(name string) bool {
	if !strings.HasPrefix(name, "vd") || len(name) < 3 {
		return false
	}
	for _, c := range name[2:] {
		if c < 'a' || c > 'z' {
			return false
		}
	}
	return true
}

// parseNetDev sums the bytes received and sent by every interface but lo.
func parseNetDev(b []byte) (rx, tx int64) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(name) == "lo" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 9 {
			continue
		}
		r, _ := strconv.ParseInt(f[0], 10, 64)
		t, _ := strconv.ParseInt(f[8], 10, 64)
		rx += r
		tx += t
	}
	return rx, tx
}
