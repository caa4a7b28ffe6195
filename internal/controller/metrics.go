package controller

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

var (
	placementsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sandbox_placements_total",
		Help: "Placement decisions by result (placed, unschedulable). An unschedulable sandbox counts once per new reason.",
	}, []string{"result"})

	placementLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "sandbox_placement_duration_seconds",
		Help:    "Time from a run's request (creation, start or restart) to its placement on a node.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	})

	crPhaseTransitions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sandbox_phase_transitions_total",
		Help: "Phase changes written by the manager, by new phase.",
	}, []string{"phase"})

	unschedulableGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sandbox_unschedulable",
		Help: "Sandboxes currently waiting for a node that fits (Scheduled=False, Unschedulable).",
	})

	// unschedulable tracks which sandboxes are unschedulable now, behind
	// the gauge.
	unschedulable = &keySet{m: map[types.NamespacedName]struct{}{}, gauge: unschedulableGauge}
)

func init() {
	metrics.Registry.MustRegister(placementsTotal, placementLatency, crPhaseTransitions, unschedulableGauge)
}

type keySet struct {
	mu    sync.Mutex
	m     map[types.NamespacedName]struct{}
	gauge prometheus.Gauge
}

// set adds k and reports whether it was new.
func (s *keySet) set(k types.NamespacedName) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, had := s.m[k]
	s.m[k] = struct{}{}
	s.gauge.Set(float64(len(s.m)))
	return !had
}

func (s *keySet) forget(k types.NamespacedName) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, k)
	s.gauge.Set(float64(len(s.m)))
}

// PhaseCollector exports sandbox_phase{phase} (Sandboxes by phase), counted
// from the manager's informer cache at scrape time: no bookkeeping that
// could drift.
type PhaseCollector struct {
	Reader client.Reader
	desc   *prometheus.Desc
}

// NewPhaseCollector returns a collector reading Sandboxes from reader.
func NewPhaseCollector(reader client.Reader) *PhaseCollector {
	return &PhaseCollector{Reader: reader, desc: prometheus.NewDesc("sandbox_phase",
		"Sandboxes by status.phase (\"\" before the manager has seen them).", []string{"phase"}, nil)}
}

// Describe implements prometheus.Collector.
func (c *PhaseCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *PhaseCollector) Collect(ch chan<- prometheus.Metric) {
	var list sandboxv1alpha1.SandboxList
	if err := c.Reader.List(context.Background(), &list, client.UnsafeDisableDeepCopy); err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	counts := map[sandboxv1alpha1.SandboxPhase]int{
		sandboxv1alpha1.PhaseCreated: 0, sandboxv1alpha1.PhaseStarting: 0, sandboxv1alpha1.PhaseRunning: 0,
		sandboxv1alpha1.PhaseDraining: 0, sandboxv1alpha1.PhaseStopped: 0, sandboxv1alpha1.PhaseCrashed: 0,
	}
	for i := range list.Items {
		counts[list.Items[i].Status.Phase]++
	}
	for p, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), string(p))
	}
}
