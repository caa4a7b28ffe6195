package vmm

import (
	"runtime"
	"time"
)

func rdtsc() uint64

// measureTSCkHz counts TSC ticks across a sleep, three times, and keeps the
// lowest rate (a preemption inside a window only inflates it).
func measureTSCkHz() (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	best := 0
	for range 3 {
		t0, c0 := time.Now(), rdtsc()
		time.Sleep(30 * time.Millisecond)
		c1, t1 := rdtsc(), time.Now()
		khz := int(float64(c1-c0) / float64(t1.Sub(t0).Nanoseconds()) * 1e6)
		if best == 0 || khz < best {
			best = khz
		}
	}
	return best, nil
}
