// Package metrics exposes the tenant agent on --http-addr: /metrics for
// Prometheus (commands by outcome, pulls, recreate downtime, Docker and
// control plane reachability, heartbeat age, signature checks) and /healthz for supervisors.
// No label holds a container or command ID.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/executor"
	"github.com/molecule-ai/tenant-agent/agent/runner"
	"github.com/molecule-ai/tenant-agent/agent/signature"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

const namespace = "tenantagent_agent"

// Metrics holds the agent's collectors. It is the channel's Observer and
// the event watcher's OnReachable.
type Metrics struct {
	Registry *prometheus.Registry

	commands        *prometheus.CounterVec
	pullBytes       prometheus.Counter
	pullDuration    prometheus.Histogram
	downtime        prometheus.Histogram
	dockerReachable prometheus.Gauge
	connected       prometheus.Gauge
	signatureChecks *prometheus.CounterVec
	lastHeartbeat   atomic.Int64 // unix nanoseconds; 0: none yet
	now             func() time.Time
}

// New registers the collectors.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "commands_finished_total", Help: "Commands this agent ran to the end, by outcome.",
		}, []string{"outcome"}),
		pullBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "pull_bytes_total", Help: "Image bytes pulled.",
		}),
		pullDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "pull_duration_seconds", Help: "Image pull time (pulls of an image already present are not counted).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14), // 1 s to about 2.3 h
		}),
		downtime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "recreate_downtime_seconds", Help: "Per container: old container stopped to new one running.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 12), // 50 ms to about 100 s
		}),
		dockerReachable: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "docker_reachable", Help: "1 while the Docker Engine answers, 0 while it does not.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "controlplane_connected", Help: "1 while a stream to the control plane is open and welcomed.",
		}),
		signatureChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "signature_checks_total",
			Help: "Image signature checks against the signature policy, by result: verified, cached, refused, warned (warn mode, adopted), error (signatures unreadable).",
		}, []string{"result"}),
		now: time.Now,
	}
	for _, o := range signature.Outcomes {
		m.signatureChecks.WithLabelValues(string(o)) // every result shows, at 0
	}
	heartbeatAge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "heartbeat_age_seconds", Help: "Seconds since the last Hello or health report reached the stream; -1 before the first.",
	}, m.heartbeatAge)
	m.Registry.MustRegister(m.commands, m.pullBytes, m.pullDuration, m.downtime, m.dockerReachable, m.connected, m.signatureChecks, heartbeatAge,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Connected reports the stream welcomed or ended (channel.Observer).
func (m *Metrics) Connected(ok bool) { m.connected.Set(boolFloat(ok)) }

// Heartbeat reports a Hello or health report sent (channel.Observer).
func (m *Metrics) Heartbeat() { m.lastHeartbeat.Store(m.now().UnixNano()) }

// DockerReachable reports Docker's state (docker.WatchOptions.OnReachable).
func (m *Metrics) DockerReachable(ok bool) { m.dockerReachable.Set(boolFloat(ok)) }

// SignatureChecked counts a signature check (signature.Config.Observe).
func (m *Metrics) SignatureChecked(o signature.Outcome) {
	m.signatureChecks.WithLabelValues(string(o)).Inc()
}

func (m *Metrics) heartbeatAge() float64 {
	last := m.lastHeartbeat.Load()
	if last == 0 {
		return -1
	}
	return m.now().Sub(time.Unix(0, last)).Seconds()
}

// observe counts a finished command; nil (a simulated crash) is not one.
func (m *Metrics) observe(res *tenantagentv1.CommandResult) {
	if res == nil {
		return
	}
	m.commands.WithLabelValues(outcomeLabel(res.GetOutcome())).Inc()
	if d := res.GetPullDuration().AsDuration(); d > 0 {
		m.pullDuration.Observe(d.Seconds())
	}
	m.pullBytes.Add(float64(res.GetPulledBytes()))
	for _, c := range res.GetContainers() {
		if d := c.GetDowntime().AsDuration(); d > 0 {
			m.downtime.Observe(d.Seconds())
		}
	}
}

// outcomeLabel is "succeeded", "rolled_back", ...
func outcomeLabel(o tenantagentv1.CommandOutcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "COMMAND_OUTCOME_"))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Executor wraps a runner.Executor to count what it finishes.
func (m *Metrics) Executor(x runner.Executor) runner.Executor { return observed{x, m} }

type observed struct {
	runner.Executor
	m *Metrics
}

func (o observed) Refresh(ctx context.Context, cmd *tenantagentv1.RefreshRuntimeImage, hooks executor.Hooks) (*tenantagentv1.CommandResult, error) {
	res, err := o.Executor.Refresh(ctx, cmd, hooks)
	if err == nil {
		o.m.observe(res)
	}
	return res, err
}

func (o observed) Prefetch(ctx context.Context, cmd *tenantagentv1.PrefetchRuntimeImage, hooks executor.Hooks) *tenantagentv1.CommandResult {
	res := o.Executor.Prefetch(ctx, cmd, hooks)
	o.m.observe(res)
	return res
}

func (o observed) Recover(ctx context.Context, id, ref string, states []docker.RecreateState) *tenantagentv1.CommandResult {
	res := o.Executor.Recover(ctx, id, ref, states)
	o.m.observe(res)
	return res
}

// Handler serves /metrics and /healthz; ping asks Docker whether it
// answers (at each /healthz, so a supervisor sees the state of now).
func (m *Metrics) Handler(ping func(context.Context) error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := ping(ctx); err != nil {
			http.Error(w, "docker unreachable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// ListenAddr is addr with a missing host made loopback: "/metrics" is
// plain HTTP, so exposing it beyond the host must be asked for by name
// ("0.0.0.0:9091", "10.0.0.5:9091"). A bare port ("9091") is allowed.
func ListenAddr(addr string) (string, error) {
	if !strings.Contains(addr, ":") {
		addr = ":" + addr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return "", fmt.Errorf("--http-addr %q: want [host]:port", addr)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// Serve serves h on lis until ctx ends.
func Serve(ctx context.Context, lis net.Listener, h http.Handler, logger *slog.Logger) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("metrics server stopped", "component", "metrics", "error", err)
	}
}
