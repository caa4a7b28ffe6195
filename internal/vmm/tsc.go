package vmm

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

// tscSysfs is where some kernels publish the TSC rate.
const tscSysfs = "/sys/devices/system/cpu/cpu0/tsc_freq_khz"

var hostTSC = sync.OnceValues(func() (int, error) {
	if khz, err := readTSCkHz(tscSysfs); err == nil {
		return khz, nil
	}
	khz, err := measureTSCkHz()
	if err != nil {
		return 0, err
	}
	if khz <= 0 {
		return 0, fmt.Errorf("measured a TSC rate of %d kHz", khz)
	}
	// Round to 100 kHz so that the command line is stable across runs.
	return (khz + 50) / 100 * 100, nil
})

// HostTSCkHz is the host's TSC rate in kHz, for tsc_early_khz under TCG
// (where the guest's RDTSC reads the host TSC). It is read from sysfs where
// the kernel publishes it, otherwise measured with RDTSC once per process
// (~90 ms).
func HostTSCkHz() (int, error) { return hostTSC() }

func readTSCkHz(file string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	khz, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || khz <= 0 {
		return 0, fmt.Errorf("invalid TSC rate %q in %s", strings.TrimSpace(string(b)), file)
	}
	return khz, nil
}
