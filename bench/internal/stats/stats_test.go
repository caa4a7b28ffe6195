package stats

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestOf(t *testing.T) {
	for _, tc := range []struct {
		name          string
		in            []float64
		med, p99, low float64
	}{
		{name: "no samples summarize to zero", in: nil},
		{name: "an odd count takes the middle value", in: []float64{3, 1, 2}, med: 2, p99: 3, low: 1},
		{name: "an even count takes the mean of the middle two", in: []float64{4, 1, 3, 2}, med: 2.5, p99: 4, low: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			s := Of(tc.in)
			g.Expect(s.Median).To(Equal(tc.med))
			g.Expect(s.P99).To(Equal(tc.p99))
			g.Expect(LowTail(tc.in)).To(Equal(tc.low))
		})
	}
}

func TestRatioRoundsAndNeverDividesByZero(t *testing.T) {
	g := NewWithT(t)
	g.Expect(Ratio(1, 3)).To(Equal(0.333))
	g.Expect(Ratio(1, 0)).To(BeZero())
}
