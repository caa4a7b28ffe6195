package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/pkg/client/informers/externalversions"
)

// rec is what the benchmark saw of one Sandbox. Times are zero until seen.
type rec struct {
	createStart, createEnd time.Time
	added                  time.Time // the watch delivered the object
	finalized              time.Time // the watch first showed the manager's finalizer
	placed                 time.Time // the watch first showed a status.nodeName
	node                   string
}

// watcher is a Sandbox informer (the generated one in pkg/client) that
// timestamps the first sighting of each expected Sandbox, of its finalizer
// and of its placement.
type watcher struct {
	mu      sync.Mutex
	recs    map[string]*rec // namespace/name
	added   atomic.Int64
	placed  atomic.Int64
	stopInf context.CancelFunc
}

func startWatcher(ctx context.Context, cl *cluster) (*watcher, error) {
	w := &watcher{recs: map[string]*rec{}}
	f := externalversions.NewSharedInformerFactory(cl.sbx, 0)
	inf := f.Sandbox().V1alpha1().Sandboxes().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { w.observe(o) },
		UpdateFunc: func(_, o any) { w.observe(o) },
	}); err != nil {
		return nil, err
	}
	ictx, cancel := context.WithCancel(ctx)
	w.stopInf = func() { cancel(); f.Shutdown() }
	f.Start(ictx.Done())
	for typ, ok := range f.WaitForCacheSync(ictx.Done()) {
		if !ok {
			w.stopInf()
			return nil, fmt.Errorf("informer for %v did not sync", typ)
		}
	}
	return w, nil
}

func (w *watcher) stop() { w.stopInf() }

func (w *watcher) observe(o any) {
	now := time.Now()
	s, ok := o.(*sandboxv1alpha1.Sandbox)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.recs[s.Namespace+"/"+s.Name]
	if r == nil {
		return
	}
	if r.added.IsZero() {
		r.added = now
		w.added.Add(1)
	}
	if r.finalized.IsZero() && slices.Contains(s.Finalizers, sandboxv1alpha1.ManagerFinalizer) {
		r.finalized = now
	}
	if r.placed.IsZero() && s.Status.NodeName != "" {
		r.placed, r.node = now, s.Status.NodeName
		w.placed.Add(1)
	}
}

// expect registers the Sandboxes about to be created and returns their records.
func (w *watcher) expect(ns string, names []string) []*rec {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]*rec, len(names))
	for i, n := range names {
		out[i] = &rec{}
		w.recs[ns+"/"+n] = out[i]
	}
	w.added.Store(0)
	w.placed.Store(0)
	return out
}

// snapshot copies the records under the lock.
func (w *watcher) snapshot(rs []*rec) []rec {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]rec, len(rs))
	for i, r := range rs {
		out[i] = *r
	}
	return out
}

func newSandbox(ns, name string, state sandboxv1alpha1.DesiredState) *sandboxv1alpha1.Sandbox {
	return &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: sandboxv1alpha1.SandboxSpec{
			Image:     image,
			Resources: sandboxv1alpha1.SandboxResources{CPUs: 1, MemoryMiB: 512},
			State:     state,
		},
	}
}

func sandboxNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

// createAll creates the Sandboxes with `creators` concurrent clients,
// stamping each record's createStart/createEnd (under w.mu: the informer may
// already be looking at the record).
func createAll(ctx context.Context, cl *cluster, w *watcher, ns string, names []string, recs []*rec,
	state sandboxv1alpha1.DesiredState, creators int) error {
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for range creators {
		wg.Go(func() {
			for i := range jobs {
				s := newSandbox(ns, names[i], state)
				start := time.Now()
				w.mu.Lock()
				recs[i].createStart = start
				w.mu.Unlock()
				_, err := cl.sbx.SandboxV1alpha1().Sandboxes(ns).Create(ctx, s, metav1.CreateOptions{})
				end := time.Now()
				w.mu.Lock()
				recs[i].createEnd = end
				w.mu.Unlock()
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("create %s/%s: %w", ns, names[i], err))
					mu.Unlock()
				}
			}
		})
	}
	for i := range names {
		select {
		case jobs <- i:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d creates failed, first: %w", len(errs), len(names), errs[0])
	}
	return ctx.Err()
}

// span returns the earliest createStart and the latest createEnd.
func span(rs []rec) (first, last time.Time) {
	for _, r := range rs {
		if first.IsZero() || r.createStart.Before(first) {
			first = r.createStart
		}
		if r.createEnd.After(last) {
			last = r.createEnd
		}
	}
	return first, last
}

// baseline is the API server's own latency, without the manager.
type baseline struct {
	n             int
	lat           []time.Duration // create start → ADDED seen by the watch, sorted
	p50, p99      time.Duration
	createCallP50 time.Duration // the Create() round trip alone
	createAll     time.Duration // first create start → last create returned
}

// measureBaseline creates n Stopped Sandboxes in their own namespace
// before the manager runs, times create → watch ADDED, then deletes them.
func measureBaseline(ctx context.Context, cl *cluster, w *watcher, n, creators int) (baseline, error) {
	names := sandboxNames("base", n)
	recs := w.expect(baselineNamespace, names)
	logf("baseline: creating %d Sandboxes (spec.state Stopped) in %s with %d creators, no manager running", n, baselineNamespace, creators)
	if err := createAll(ctx, cl, w, baselineNamespace, names, recs, sandboxv1alpha1.DesiredStateStopped, creators); err != nil {
		return baseline{}, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for w.added.Load() < int64(n) {
		if time.Now().After(deadline) {
			return baseline{}, fmt.Errorf("baseline: the watch saw %d of %d Sandboxes in 30s", w.added.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	rs := w.snapshot(recs)
	b := baseline{n: n}
	var calls []time.Duration
	for _, r := range rs {
		b.lat = append(b.lat, r.added.Sub(r.createStart))
		calls = append(calls, r.createEnd.Sub(r.createStart))
	}
	slices.Sort(b.lat)
	b.p50, b.p99 = quantile(b.lat, 0.5), quantile(b.lat, 0.99)
	b.createCallP50 = quantile(sorted(calls), 0.5)
	first, last := span(rs)
	b.createAll = last.Sub(first)

	// They must be gone before the manager starts. No finalizers: nothing
	// but the API server has touched them.
	if err := cl.sbx.SandboxV1alpha1().Sandboxes(baselineNamespace).DeleteCollection(ctx,
		metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		return baseline{}, fmt.Errorf("baseline: failed to delete: %w", err)
	}
	for {
		l, err := cl.sbx.SandboxV1alpha1().Sandboxes(baselineNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return baseline{}, err
		}
		if len(l.Items) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return baseline{}, errors.New("baseline: Sandboxes not deleted in time")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return b, nil
}

// mainResult is the outcome of the main run.
type mainResult struct {
	n, placed       int
	lat             []time.Duration // create start → placement seen, sorted; unplaced count as the deadline (a lower bound)
	finLat          []time.Duration // create start → manager's finalizer seen, sorted (placed ones only)
	callLat         []time.Duration // the Create() round trip, sorted
	scheduledMillis []time.Duration // the manager's own status.timings.scheduledMillis, sorted
	createAll       time.Duration   // first create start → last create returned
	allPlaced       time.Duration   // first create start → last placement seen (or the timeout)
	timedOut        bool
	rssSamples      []float64 // MiB, every 250 ms
	rssPeakSampled  float64
	managerCPU      float64 // CPU seconds the manager used from the first create to the end of the wait
	machineBusy     float64 // share of all CPUs busy over the same span, 0..1
	machineBusyCPU  float64 // busy CPU-seconds of the whole machine over the same span
	waited          time.Duration
	procCPU         map[string]float64 // CPU seconds over the same span by process
	loadAvg         string             // /proc/loadavg just before the main run
	apiBefore       *metricsDump       // kube-apiserver metrics before and after
	apiAfter        *metricsDump
}

func mainRun(ctx context.Context, cl *cluster, w *watcher, mgr *manager, c config) (mainResult, error) {
	names := sandboxNames("sbx", c.sandboxes)
	recs := w.expect(benchNamespace, names)

	// Sample the manager's RSS while it works.
	var rss []float64
	var rssMu sync.Mutex
	sctx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if m, err := mgr.memory(); err == nil {
				rssMu.Lock()
				rss = append(rss, m.rssMiB)
				rssMu.Unlock()
			}
			select {
			case <-sctx.Done():
				return
			case <-t.C:
			}
		}
	}()

	apiBefore, err := cl.scrapeAPIServer(ctx)
	if err != nil {
		logf("%v", err)
	}
	loadAvg := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		loadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	cpu0, _ := mgr.cpuSeconds()
	busy0, total0, _ := machineCPU()
	procs0 := childCPU("kube-apiserver", "etcd")
	self0, _ := procCPUSeconds(os.Getpid())
	logf("main run: creating %d Sandboxes (1 cpu, 512 MiB, %s) in %s with %d creators", c.sandboxes, image, benchNamespace, c.creators)
	start := time.Now()
	deadline := start.Add(c.timeout)
	createErr := make(chan error, 1)
	go func() {
		createErr <- createAll(ctx, cl, w, benchNamespace, names, recs, sandboxv1alpha1.DesiredStateRunning, c.creators)
	}()

	var created bool
	nextLog := time.Now().Add(5 * time.Second)
	timedOut := false
	for w.placed.Load() < int64(c.sandboxes) {
		select {
		case err := <-createErr:
			if err != nil {
				stopSampling()
				return mainResult{}, err
			}
			created = true
			logf("main run: all %d created after %s; %d placed so far", c.sandboxes,
				time.Since(start).Round(time.Millisecond), w.placed.Load())
		case <-ctx.Done():
			stopSampling()
			return mainResult{}, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(nextLog) {
			logf("main run: %s: %d seen, %d placed", time.Since(start).Round(time.Second), w.added.Load(), w.placed.Load())
			nextLog = nextLog.Add(5 * time.Second)
		}
		if time.Now().After(deadline) {
			timedOut = true
			logf("main run: timed out after %s with %d of %d placed", c.timeout, w.placed.Load(), c.sandboxes)
			break
		}
	}
	if !created {
		if err := <-createErr; err != nil {
			stopSampling()
			return mainResult{}, err
		}
	}
	stopSampling()
	<-sampled
	mr := mainResult{n: c.sandboxes, timedOut: timedOut, waited: time.Since(start), loadAvg: loadAvg}
	if cpu1, err := mgr.cpuSeconds(); err == nil {
		mr.managerCPU = cpu1 - cpu0
	}
	if busy1, total1, err := machineCPU(); err == nil && total1 > total0 {
		mr.machineBusy = (busy1 - busy0) / (total1 - total0)
		mr.machineBusyCPU = (busy1 - busy0) / clockTicks
	}
	mr.procCPU = map[string]float64{"manager": mr.managerCPU}
	for name, v := range childCPU("kube-apiserver", "etcd") {
		mr.procCPU[name] = v - procs0[name]
	}
	if self1, err := procCPUSeconds(os.Getpid()); err == nil {
		mr.procCPU["placebench"] = self1 - self0
	}
	mr.apiBefore = apiBefore
	if mr.apiAfter, err = cl.scrapeAPIServer(ctx); err != nil {
		logf("%v", err)
	}

	rs := w.snapshot(recs)
	first, last := span(rs)
	mr.createAll = last.Sub(first)
	var lastPlaced time.Time
	for _, r := range rs {
		mr.callLat = append(mr.callLat, r.createEnd.Sub(r.createStart))
		if r.placed.IsZero() {
			mr.lat = append(mr.lat, deadline.Sub(r.createStart))
			continue
		}
		mr.placed++
		mr.lat = append(mr.lat, r.placed.Sub(r.createStart))
		if !r.finalized.IsZero() {
			mr.finLat = append(mr.finLat, r.finalized.Sub(r.createStart))
		}
		if r.placed.After(lastPlaced) {
			lastPlaced = r.placed
		}
	}
	if timedOut || lastPlaced.IsZero() {
		mr.allPlaced = deadline.Sub(first)
	} else {
		mr.allPlaced = lastPlaced.Sub(first)
	}
	slices.Sort(mr.lat)
	slices.Sort(mr.finLat)
	slices.Sort(mr.callLat)
	mr.rssSamples = rss
	mr.rssPeakSampled = slices.Max(append([]float64{0}, rss...))

	list, err := cl.sbx.SandboxV1alpha1().Sandboxes(benchNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return mainResult{}, fmt.Errorf("failed to list Sandboxes: %w", err)
	}
	for i := range list.Items {
		if t := list.Items[i].Status.Timings; t != nil && t.ScheduledMillis != nil {
			mr.scheduledMillis = append(mr.scheduledMillis, time.Duration(*t.ScheduledMillis)*time.Millisecond)
		}
	}
	slices.Sort(mr.scheduledMillis)
	return mr, nil
}

func sorted(d []time.Duration) []time.Duration {
	out := slices.Clone(d)
	slices.Sort(out)
	return out
}

// quantile is the nearest-rank quantile of sorted samples.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*q+0.999999999) - 1 // ceil(n*q) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}
