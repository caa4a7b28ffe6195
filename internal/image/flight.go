package image

import (
	"context"
	"sync"
)

// ProgressFunc receives the bytes of compressed layers downloaded so far and
// their total. It is called from the pulling goroutine, serially, and must
// return quickly.
type ProgressFunc func(done, total int64)

// group deduplicates concurrent calls with the same key, like
// golang.org/x/sync/singleflight, with two differences the node agent
// needs: every waiter (not only the first) receives progress reports, and
// the work is cancelled only when all of its waiters have given up, so one
// impatient caller cannot fail a pull that others are waiting for.
type group[T any] struct {
	mu    sync.Mutex
	calls map[string]*call[T]
}

// call is one execution of the work for a key.
type call[T any] struct {
	done   chan struct{}
	val    T
	err    error
	cancel context.CancelFunc

	// waiters is guarded by group.mu.
	waiters int

	pmu       sync.Mutex
	subs      map[int]ProgressFunc
	nextSub   int
	reported  bool
	lastDone  int64
	lastTotal int64
}

// do runs fn once for concurrent callers with the same key and returns its
// result to all of them. fn runs with a context that keeps the first
// caller's values but is cancelled only when every waiter's context is done.
func (g *group[T]) do(ctx context.Context, key string, progress ProgressFunc,
	fn func(ctx context.Context, report ProgressFunc) (T, error)) (T, error) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[string]*call[T]{}
	}
	c, ok := g.calls[key]
	if !ok {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &call[T]{done: make(chan struct{}), cancel: cancel, subs: map[int]ProgressFunc{}}
		g.calls[key] = c
		go g.run(fctx, key, c, fn)
	}
	c.waiters++
	g.mu.Unlock()

	id := c.subscribe(progress)
	defer c.unsubscribe(id)

	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		g.mu.Lock()
		c.waiters--
		abandoned := c.waiters == 0
		if abandoned && g.calls[key] == c {
			// Later callers start afresh instead of joining a cancelled call.
			delete(g.calls, key)
		}
		g.mu.Unlock()
		if abandoned {
			c.cancel()
		}
		var zero T
		return zero, context.Cause(ctx)
	}
}

func (g *group[T]) run(ctx context.Context, key string, c *call[T],
	fn func(ctx context.Context, report ProgressFunc) (T, error)) {
	defer c.cancel()
	c.val, c.err = fn(ctx, c.report)
	g.mu.Lock()
	if g.calls[key] == c {
		delete(g.calls, key)
	}
	g.mu.Unlock()
	close(c.done)
}

// report fans a progress update out to all current waiters.
func (c *call[T]) report(done, total int64) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	c.reported, c.lastDone, c.lastTotal = true, done, total
	for _, fn := range c.subs {
		fn(done, total)
	}
}

// subscribe adds a waiter's progress function and replays the last update,
// so that a caller joining a running pull sees where it stands.
func (c *call[T]) subscribe(fn ProgressFunc) int {
	if fn == nil {
		return -1
	}
	c.pmu.Lock()
	defer c.pmu.Unlock()
	id := c.nextSub
	c.nextSub++
	c.subs[id] = fn
	if c.reported {
		fn(c.lastDone, c.lastTotal)
	}
	return id
}

func (c *call[T]) unsubscribe(id int) {
	if id < 0 {
		return
	}
	c.pmu.Lock()
	defer c.pmu.Unlock()
	delete(c.subs, id)
}
