package initd

import (
	"golang.org/x/sys/unix"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// readMetrics reads the guest's resource usage: /proc, the writable
// layer's filesystem (upperDir) and CLOCK_BOOTTIME.
func readMetrics(procDir, upperDir string) *protocol.Metrics {
	m := &protocol.Metrics{UptimeNanos: bootNanos()}
	readProcMetrics(procDir, m)
	var st unix.Statfs_t
	if err := unix.Statfs(upperDir, &st); err == nil {
		bs := st.Bsize
		m.UpperUsedBytes = (int64(st.Blocks) - int64(st.Bfree)) * bs
		m.UpperFreeBytes = int64(st.Bavail) * bs
	}
	return m
}
