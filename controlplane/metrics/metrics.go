// Package metrics exposes the control plane on /metrics for Prometheus and
// dashboards. Label sets are bounded: tenant, runtime, kind and outcome,
// never a container or command ID.
package metrics

import (
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/molecule-ai/tenant-agent/controlplane/fleet"
	"github.com/molecule-ai/tenant-agent/controlplane/session"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
)

const namespace = "tenantagent_controlplane"

// Metrics holds the control plane's collectors.
type Metrics struct {
	Registry *prometheus.Registry

	commands        *prometheus.CounterVec
	commandDuration *prometheus.HistogramVec
	pullBytes       prometheus.Counter
	pullDuration    prometheus.Histogram
	downtime        prometheus.Histogram
	containers      *prometheus.CounterVec
	refused         *prometheus.CounterVec
	handshakes      *prometheus.CounterVec
}

// New registers the collectors; the gauges read the live session registry
// and fleet at scrape time.
func New(sessions *session.Registry, f *fleet.Fleet) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "commands_finished_total", Help: "Commands that ended, by kind and final state.",
		}, []string{"kind", "state"}),
		commandDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "command_duration_seconds", Help: "Time from journaling a command to its end.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14), // 1 s to about 2.3 h
		}, []string{"kind"}),
		pullBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "pull_bytes_total", Help: "Image bytes agents reported pulling.",
		}),
		pullDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "pull_duration_seconds", Help: "Image pull time reported by agents.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14),
		}),
		downtime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "recreate_downtime_seconds", Help: "Per container: old container stopped to new one running.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 12), // 50 ms to about 100 s
		}),
		containers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "containers_refreshed_total", Help: "Containers handled by refreshes, by outcome.",
		}, []string{"outcome"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "agent_admissions_refused_total",
			Help: "Agent connections closed over the connection cap (reason=connection_cap), streams refused for reconnecting too often (reason=reconnect_rate) and connections told to come back later over the handshake bound (reason=handshakes).",
		}, []string{"reason"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "tls_handshakes_total", Help: "TLS handshakes completed on the agent address, by whether they resumed a session.",
		}, []string{"resumed"}),
	}
	m.Registry.MustRegister(m.commands, m.commandDuration, m.pullBytes, m.pullDuration, m.downtime, m.containers, m.refused, m.handshakes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&liveCollector{sessions: sessions, fleet: f})
	return m
}

// ConnRefused counts an agent connection closed over the connection cap.
func (m *Metrics) ConnRefused() { m.refused.WithLabelValues("connection_cap").Inc() }

// ReconnectRefused counts an agent stream refused for reconnecting too often.
func (m *Metrics) ReconnectRefused() { m.refused.WithLabelValues("reconnect_rate").Inc() }

// HandshakeShed counts an agent connection over the handshake bound.
func (m *Metrics) HandshakeShed() { m.refused.WithLabelValues("handshakes").Inc() }

// Handshake counts a completed TLS handshake on the agent address.
func (m *Metrics) Handshake(resumed bool) {
	m.handshakes.WithLabelValues(strconv.FormatBool(resumed)).Inc()
}

// CommandFinished records a command that ended (dispatch.Observer).
func (m *Metrics) CommandFinished(c *store.Command) {
	kind := lower(c.Kind.String(), "COMMAND_KIND_")
	m.commands.WithLabelValues(kind, lower(c.State.String(), "COMMAND_STATE_")).Inc()
	m.commandDuration.WithLabelValues(kind).Observe(c.UpdatedAt.Sub(c.CreatedAt).Seconds())
	r := c.Result
	if r == nil {
		return
	}
	m.pullBytes.Add(float64(r.GetPulledBytes()))
	if d := r.GetPullDuration().AsDuration(); d > 0 {
		m.pullDuration.Observe(d.Seconds())
	}
	for _, ct := range r.GetContainers() {
		m.containers.WithLabelValues(lower(ct.GetOutcome().String(), "CONTAINER_OUTCOME_")).Inc()
		if d := ct.GetDowntime().AsDuration(); d > 0 {
			m.downtime.Observe(d.Seconds())
		}
	}
}

func lower(s, prefix string) string { return strings.ToLower(strings.TrimPrefix(s, prefix)) }

// liveCollector reads connected agents, heartbeat ages and pin drift when
// scraped, so they are never stale.
type liveCollector struct {
	sessions *session.Registry
	fleet    *fleet.Fleet
}

var (
	connectedDesc = prometheus.NewDesc(namespace+"_connected_agents", "Agents with an open stream.", nil, nil)
	heartbeatDesc = prometheus.NewDesc(namespace+"_heartbeat_age_seconds", "Seconds since the tenant's agents last sent anything (the oldest of its connected agents).", []string{"tenant"}, nil)
	containerDesc = prometheus.NewDesc(namespace+"_containers", "Managed containers reported by agents, by runtime and whether they run the pin.", []string{"runtime", "on_pin"}, nil)
)

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- connectedDesc
	ch <- heartbeatDesc
	ch <- containerDesc
}

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	sessions := c.sessions.List()
	ch <- prometheus.MustNewConstMetric(connectedDesc, prometheus.GaugeValue, float64(len(sessions)))
	now := time.Now()
	oldest := map[string]time.Duration{}
	for _, s := range sessions {
		age := now.Sub(s.LastSeen())
		if prev, ok := oldest[s.Identity.Tenant]; !ok || age > prev {
			oldest[s.Identity.Tenant] = age
		}
	}
	for tenant, age := range oldest {
		ch <- prometheus.MustNewConstMetric(heartbeatDesc, prometheus.GaugeValue, age.Seconds(), tenant)
	}
	for runtime, n := range c.fleet.PinCounts() {
		ch <- prometheus.MustNewConstMetric(containerDesc, prometheus.GaugeValue, float64(n.On), runtime, "true")
		ch <- prometheus.MustNewConstMetric(containerDesc, prometheus.GaugeValue, float64(n.Off), runtime, "false")
	}
}
