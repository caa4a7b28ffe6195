// Package stats summarizes a benchmark's samples the way bench/results.json
// reports them: the median and the nearest-rank p99 of latencies, and the
// slow tail of throughputs.
package stats

import (
	"math"
	"slices"
)

// Summary describes a set of samples.
type Summary struct {
	N                     int
	Median, P99, Min, Max float64
}

// Of returns the median (the mean of the two middle values for an even
// count) and the nearest-rank p99 (the maximum for fewer than 100 samples)
// of v.
func Of(v []float64) Summary {
	if len(v) == 0 {
		return Summary{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	i := max(0, min(int(math.Ceil(float64(n)*0.99))-1, n-1))
	return Summary{N: n, Median: med, P99: s[i], Min: s[0], Max: s[n-1]}
}

// LowTail is the throughput counterpart of the p99: the value that 99% of
// the samples reached or beat (nearest rank from the bottom: the minimum
// for fewer than 100 samples).
func LowTail(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[max(0, int(math.Ceil(float64(len(s))*0.01))-1)]
}

// Round rounds v to digits decimal places.
func Round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// Ratio is v / base rounded to 3 places, 0 when base is 0.
func Ratio(v, base float64) float64 {
	if base == 0 {
		return 0
	}
	return Round(v/base, 3)
}
