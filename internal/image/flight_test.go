package image

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestGroupSharesWorkAndCancelsOnlyWhenAllWaitersLeave(t *testing.T) {
	tests := []struct {
		name string
		// cancel says which of the two callers give up before the work ends.
		cancel    [2]bool
		wantCalls int32
		wantErrs  [2]error
		// wantWorkCancelled: the work's context was cancelled.
		wantWorkCancelled bool
	}{
		{
			name:      "two callers share one execution and its result",
			wantCalls: 1,
		},
		{
			name:      "a caller that gives up does not cancel the work for the other",
			cancel:    [2]bool{true, false},
			wantCalls: 1, wantErrs: [2]error{context.Canceled, nil},
		},
		{
			name:      "the work is cancelled when every caller has given up",
			cancel:    [2]bool{true, true},
			wantCalls: 1, wantErrs: [2]error{context.Canceled, context.Canceled},
			wantWorkCancelled: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			var grp group[string]
			var calls atomic.Int32
			release := make(chan struct{})
			started := make(chan struct{})
			workCancelled := make(chan bool, 1)
			fn := func(ctx context.Context, report ProgressFunc) (string, error) {
				calls.Add(1)
				report(1, 2)
				close(started)
				select {
				case <-release:
					workCancelled <- false
					return "done", nil
				case <-ctx.Done():
					workCancelled <- true
					return "", ctx.Err()
				}
			}

			var wg sync.WaitGroup
			var vals [2]string
			var errs [2]error
			var progress [2]atomic.Int64
			var cancels [2]context.CancelFunc
			joined := make(chan struct{}, 2)
			for i := range 2 {
				ctx, cancel := context.WithCancel(context.Background())
				cancels[i] = cancel
				defer cancel()
				wg.Go(func() {
					if i == 1 {
						<-started
					}
					joined <- struct{}{}
					vals[i], errs[i] = grp.do(ctx, "key", func(done, _ int64) { progress[i].Store(done) }, fn)
				})
			}
			<-joined
			<-joined
			// Both callers are inside do (or about to be); let them subscribe.
			g.Eventually(func() int {
				grp.mu.Lock()
				defer grp.mu.Unlock()
				if c := grp.calls["key"]; c != nil {
					return c.waiters
				}
				return 0
			}).Should(Equal(2))
			for i := range 2 {
				if tt.cancel[i] {
					cancels[i]()
				}
			}
			if !tt.cancel[0] || !tt.cancel[1] {
				// Give a cancelled caller time to leave before the work ends.
				time.Sleep(20 * time.Millisecond)
				close(release)
			}
			wg.Wait()

			g.Expect(calls.Load()).To(Equal(tt.wantCalls))
			g.Expect(<-workCancelled).To(Equal(tt.wantWorkCancelled))
			for i := range 2 {
				if tt.wantErrs[i] != nil {
					g.Expect(errors.Is(errs[i], tt.wantErrs[i])).To(BeTrue(), "caller %d: %v", i, errs[i])
					continue
				}
				g.Expect(errs[i]).NotTo(HaveOccurred())
				g.Expect(vals[i]).To(Equal("done"))
				g.Expect(progress[i].Load()).To(Equal(int64(1)), "caller %d got the progress report", i)
			}
		})
	}
}
