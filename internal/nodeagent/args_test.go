package nodeagent

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestValidateLease(t *testing.T) {
	for _, tc := range []struct {
		name            string
		duration, renew time.Duration
		err             string
	}{
		{name: "the defaults", duration: DefaultArgs().LeaseDuration, renew: DefaultArgs().RenewInterval},
		{name: "one second, renewed every 200 ms", duration: time.Second, renew: 200 * time.Millisecond},
		{name: "under a second is refused: a Lease counts whole seconds", duration: 500 * time.Millisecond, renew: 100 * time.Millisecond, err: "at least 1s"},
		{name: "renewals as slow as the Lease are refused", duration: 10 * time.Second, renew: 10 * time.Second, err: "shorter than --lease-duration"},
		{name: "no renewals are refused", duration: 10 * time.Second, renew: 0, err: "must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			err := Args{LeaseDuration: tc.duration, RenewInterval: tc.renew}.validateLease()
			if tc.err == "" {
				g.Expect(err).NotTo(HaveOccurred())
				return
			}
			g.Expect(err).To(MatchError(ContainSubstring(tc.err)))
		})
	}
}
