package initd

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// rlimitResources maps protocol.Rlimit names (RLIMIT_* without the prefix,
// lower case) to Linux resource numbers.
var rlimitResources = map[string]int{
	"cpu":        unix.RLIMIT_CPU,
	"fsize":      unix.RLIMIT_FSIZE,
	"data":       unix.RLIMIT_DATA,
	"stack":      unix.RLIMIT_STACK,
	"core":       unix.RLIMIT_CORE,
	"rss":        unix.RLIMIT_RSS,
	"nproc":      unix.RLIMIT_NPROC,
	"nofile":     unix.RLIMIT_NOFILE,
	"memlock":    unix.RLIMIT_MEMLOCK,
	"as":         unix.RLIMIT_AS,
	"locks":      unix.RLIMIT_LOCKS,
	"sigpending": unix.RLIMIT_SIGPENDING,
	"msgqueue":   unix.RLIMIT_MSGQUEUE,
	"nice":       unix.RLIMIT_NICE,
	"rtprio":     unix.RLIMIT_RTPRIO,
	"rttime":     unix.RLIMIT_RTTIME,
}

// rlimit is one resource limit ready for setrlimit(2).
type rlimit struct {
	Resource int    `json:"resource"`
	Cur      uint64 `json:"cur"`
	Max      uint64 `json:"max"`
}

// rlimitValue maps a protocol value to setrlimit's: negative is unlimited.
func rlimitValue(v int64) uint64 {
	if v < 0 {
		return unix.RLIM_INFINITY
	}
	return uint64(v)
}

// parseRlimits checks the Start's rlimits and converts them, before
// anything is started, so that a typo fails the start with a clear message
// instead of in the exec helper. Names are matched case-insensitively and
// an "rlimit_" prefix is tolerated (RLIMIT_NOFILE is how people write it).
// A later entry for the same resource wins, as a second setrlimit would.
func parseRlimits(in []protocol.Rlimit) ([]rlimit, error) {
	out := make([]rlimit, 0, len(in))
	for _, r := range in {
		name := strings.TrimPrefix(strings.ToLower(r.Resource), "rlimit_")
		res, ok := rlimitResources[name]
		if !ok {
			return nil, fmt.Errorf("rlimit %q: unknown resource", r.Resource)
		}
		l := rlimit{Resource: res, Cur: rlimitValue(r.Soft), Max: rlimitValue(r.Hard)}
		if l.Cur > l.Max {
			return nil, fmt.Errorf("rlimit %q: soft limit %d exceeds hard limit %d", r.Resource, r.Soft, r.Hard)
		}
		out = append(out, l)
	}
	return out, nil
}
