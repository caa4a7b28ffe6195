package nodeagent

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Per-sandbox metrics on the agent's Prometheus endpoint, from the guest's
// latest heartbeat. Labels are the Sandbox's namespace and name only:
// bounded by the sandboxes on this node (--max-sandboxes), and a series
// disappears with its VM.
var (
	guestCPU = prometheus.NewDesc("sandbox_guest_cpu_seconds_total",
		"CPU time the guest's CPUs spent busy since boot.", []string{"namespace", "name"}, nil)
	guestMemTotal = prometheus.NewDesc("sandbox_guest_memory_total_bytes",
		"The guest's RAM (MemTotal).", []string{"namespace", "name"}, nil)
	guestMemAvailable = prometheus.NewDesc("sandbox_guest_memory_available_bytes",
		"The guest's available memory (MemAvailable).", []string{"namespace", "name"}, nil)
	guestDisk = prometheus.NewDesc("sandbox_guest_disk_bytes_total",
		"Bytes the guest read from or wrote to its disks.", []string{"namespace", "name", "direction"}, nil)
	guestNet = prometheus.NewDesc("sandbox_guest_network_bytes_total",
		"Bytes the guest received or sent on its network interfaces.", []string{"namespace", "name", "direction"}, nil)
	guestUpper = prometheus.NewDesc("sandbox_guest_writable_layer_bytes",
		"The writable layer's used and free bytes.", []string{"namespace", "name", "state"}, nil)
	guestUptime = prometheus.NewDesc("sandbox_guest_uptime_seconds",
		"Time since the guest kernel started.", []string{"namespace", "name"}, nil)

	// The node side of the sandbox's network (internal/netstack), from the
	// current stack: counters restart with the agent. "class" is the
	// policy's decision class (rule, default, group:<group>, reserved, dns,
	// rebind, ...): a small fixed set.
	netDenied = prometheus.NewDesc("sandbox_network_denied_total",
		"Guest flows, DNS names and DNS answers the egress policy refused.", []string{"namespace", "name", "class"}, nil)
	netFlows = prometheus.NewDesc("sandbox_network_flows_total",
		"Guest flows the egress policy allowed and the node re-originated.", []string{"namespace", "name", "protocol"}, nil)
	netDialFailures = prometheus.NewDesc("sandbox_network_dial_failures_total",
		"Allowed guest flows whose destination could not be reached from the node.", []string{"namespace", "name"}, nil)
	netDNS = prometheus.NewDesc("sandbox_network_dns_queries_total",
		"DNS queries the guest sent to the node's resolver.", []string{"namespace", "name"}, nil)
	netBytes = prometheus.NewDesc("sandbox_network_flow_bytes_total",
		"Bytes of the guest's flows through the node: sent by the guest (transmit) or to it (receive).",
		[]string{"namespace", "name", "direction"}, nil)
)

// sandboxCollector reports the sandboxes of every reconciler in this
// process (one per agent; tests run several).
type sandboxCollector struct {
	mu          sync.Mutex
	reconcilers map[*SandboxReconciler]struct{}
}

var collector = &sandboxCollector{reconcilers: map[*SandboxReconciler]struct{}{}}

var registerCollector sync.Once

// trackMetrics adds r's sandboxes to the agent's metrics.
func trackMetrics(r *SandboxReconciler) {
	registerCollector.Do(func() { metrics.Registry.MustRegister(collector) })
	collector.mu.Lock()
	collector.reconcilers[r] = struct{}{}
	collector.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (c *sandboxCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{guestCPU, guestMemTotal, guestMemAvailable, guestDisk, guestNet, guestUpper, guestUptime,
		netDenied, netFlows, netDialFailures, netDNS, netBytes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *sandboxCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	rs := make([]*SandboxReconciler, 0, len(c.reconcilers))
	for r := range c.reconcilers {
		rs = append(rs, r)
	}
	c.mu.Unlock()
	for _, r := range rs {
		r.mu.Lock()
		var hs []*vmHandle
		for _, st := range r.sandboxes {
			if st.handle != nil {
				hs = append(hs, st.handle)
			}
		}
		r.mu.Unlock()
		for _, h := range hs {
			h.mu.Lock()
			m := h.metrics
			exited := !h.exitedAt.IsZero()
			h.mu.Unlock()
			if exited {
				continue
			}
			ns, name := h.key.Namespace, h.key.Name
			gauge := func(d *prometheus.Desc, t prometheus.ValueType, v float64, extra ...string) {
				ch <- prometheus.MustNewConstMetric(d, t, v, append([]string{ns, name}, extra...)...)
			}
			if vn := h.net; vn != nil {
				st := &vn.stack.Stats
				for class, n := range vn.stack.Denials.Snapshot().ByClass {
					gauge(netDenied, prometheus.CounterValue, float64(n), class)
				}
				gauge(netFlows, prometheus.CounterValue, float64(st.TCPAllowed.Load()), "TCP")
				gauge(netFlows, prometheus.CounterValue, float64(st.UDPAllowed.Load()), "UDP")
				gauge(netDialFailures, prometheus.CounterValue, float64(st.DialFailures.Load()))
				gauge(netDNS, prometheus.CounterValue, float64(st.DNSQueries.Load()))
				gauge(netBytes, prometheus.CounterValue, float64(st.BytesOut.Load()), "transmit")
				gauge(netBytes, prometheus.CounterValue, float64(st.BytesIn.Load()), "receive")
			}
			if m == nil {
				continue
			}
			gauge(guestCPU, prometheus.CounterValue, float64(m.CPUNanos)/1e9)
			gauge(guestMemTotal, prometheus.GaugeValue, float64(m.MemoryTotalBytes))
			gauge(guestMemAvailable, prometheus.GaugeValue, float64(m.MemoryAvailableBytes))
			gauge(guestDisk, prometheus.CounterValue, float64(m.DiskReadBytes), "read")
			gauge(guestDisk, prometheus.CounterValue, float64(m.DiskWriteBytes), "write")
			gauge(guestNet, prometheus.CounterValue, float64(m.NetRxBytes), "receive")
			gauge(guestNet, prometheus.CounterValue, float64(m.NetTxBytes), "transmit")
			gauge(guestUpper, prometheus.GaugeValue, float64(m.UpperUsedBytes), "used")
			gauge(guestUpper, prometheus.GaugeValue, float64(m.UpperFreeBytes), "free")
			gauge(guestUptime, prometheus.GaugeValue, float64(m.UptimeNanos)/1e9)
		}
	}
}
