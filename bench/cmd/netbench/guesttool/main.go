// Command guesttool is the network benchmark's client and server, run in
// the guest (netbench builds it static, CGO_ENABLED=0, and puts it in the
// guest's root as /bin/nettool) and, for the baselines, on the host. Each
// result is one JSON line on stdout.
//
//	nettool send ADDR BYTES     one transfer to a sink: {"bytes":…,"seconds":…}
//	nettool connect ADDR N      N connect+echo round trips: {"millis":[…]}
//	nettool sink ADDR N         serves N transfers; prints "listening ADDR", then one line per transfer
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"

	"github.com/microvm-dev/sandbox-operator/bench/cmd/netbench/internal/tcpprobe"
)

const usage = "usage: nettool send ADDR BYTES | nettool connect ADDR N | nettool sink ADDR N"

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	addr := os.Args[2]
	n, err := strconv.ParseInt(os.Args[3], 10, 64)
	if err != nil || n < 1 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "send":
		var t tcpprobe.Transfer
		if t, err = tcpprobe.Send(ctx, addr, n); err == nil {
			err = emit(t)
		}
	case "connect":
		var ms []float64
		if ms, err = tcpprobe.Connect(ctx, addr, int(n)); err == nil {
			err = emit(map[string][]float64{"millis": ms})
		}
	case "sink":
		err = sink(ctx, addr, int(n))
	default:
		err = errors.New(usage)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nettool:", err)
		os.Exit(1)
	}
}

// sink serves n transfers on addr, then returns.
func sink(ctx context.Context, addr string, n int) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	fmt.Println("listening", ln.Addr())
	var (
		mu   sync.Mutex
		seen int
		werr error
	)
	err = tcpprobe.Sink(ln, func(t tcpprobe.Transfer) {
		mu.Lock()
		defer mu.Unlock()
		if err := emit(t); err != nil && werr == nil {
			werr = err
		}
		if seen++; seen == n {
			_ = ln.Close()
		}
	})
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	return errors.Join(err, werr)
}

func emit(v any) error { return json.NewEncoder(os.Stdout).Encode(v) }
