// Package server assembles the control plane: the store, the agent and
// admin listeners (each mTLS, each with its own services), the HTTP port for
// /metrics and /healthz, and graceful shutdown.
package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/admission"
	"github.com/molecule-ai/tenant-agent/controlplane/auth"
	"github.com/molecule-ai/tenant-agent/controlplane/signing"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
	"github.com/molecule-ai/tenant-agent/pkg/sigpolicy"
)

// Config is the control plane's configuration; the binary fills it from
// flags and CONTROLPLANE_* variables.
type Config struct {
	// AgentAddr serves tenantagent.v1.AgentService only.
	AgentAddr string
	// AdminAddr serves controlplane.v1.AdminService, reflection and health.
	AdminAddr string
	// HTTPAddr serves /metrics and /healthz (plain HTTP: no secrets there,
	// but tenant names; loopback by default).
	HTTPAddr string
	// TLS is the control plane's server certificate, key and the CA bundle
	// clients are verified against.
	TLS         mtls.Files
	TrustDomain string
	// StorePath is the SQLite file, or a postgres:// or postgresql:// URL
	// of the PostgreSQL database replicas share.
	StorePath string
	// ServiceGrants limits service identities, see auth.ParseGrants.
	ServiceGrants string

	HeartbeatInterval time.Duration
	// KeepaliveMinTime is the most often agents may ping (they ping every
	// 30 s); KeepaliveTime and KeepaliveTimeout are the server's own pings
	// to find dead connections.
	KeepaliveMinTime time.Duration
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration

	// CommandTTL is how long a command may wait to start before it expires.
	CommandTTL time.Duration
	// HistoryRetention is how long finished commands are kept; zero keeps
	// them forever.
	HistoryRetention time.Duration
	// DefaultParallelTenants bounds a rollout that does not say.
	DefaultParallelTenants int
	// ReconcileBackoff is the first wait after a failed automatic refresh;
	// it doubles up to ReconcileBackoffMax.
	ReconcileBackoff    time.Duration
	ReconcileBackoffMax time.Duration
	// SendQueue is each agent session's queue length.
	SendQueue int

	// HandshakeTimeout bounds a new connection's TLS and HTTP/2 handshake
	// on both gRPC listeners (grpc-go's own default is 120 s, long enough
	// for idle sockets to pile up).
	HandshakeTimeout time.Duration
	// MaxAgentConns caps the agent listener's open connections; one more
	// is closed as soon as it is accepted.
	MaxAgentConns int
	// MaxHandshakes bounds concurrent TLS handshakes on the agent
	// listener; a connection that waits over HandshakeTimeout for one is
	// told to come back later (admission.Handshakes).
	MaxHandshakes int
	// MaxStreamsPerConn caps concurrent streams on one agent connection
	// (an agent needs one).
	MaxStreamsPerConn int
	// AgentIdleTimeout closes an agent connection that has had no stream
	// for this long.
	AgentIdleTimeout time.Duration
	// ReconnectBurst streams per agent identity are admitted at once, then
	// one per ReconnectInterval; more are refused with ResourceExhausted
	// and a retry hint.
	ReconnectBurst    int
	ReconnectInterval time.Duration
	// ShutdownGrace bounds draining streams at shutdown; ReconnectStagger
	// bounds how long the agents' reconnects are spread over (0.5 ms an
	// agent, see reconnectSpread).
	ShutdownGrace    time.Duration
	ReconnectStagger time.Duration
	// ClusterSweep is how often a replica on PostgreSQL re-reads the store
	// for what a lost doorbell would have told it (pending commands for its
	// agents, who holds which stream); ReplicaTTL is how long a replica
	// that stopped checking in counts as alive; RolloutLease is how long a
	// rollout's owner may go silent before another replica takes it over.
	ClusterSweep time.Duration
	ReplicaTTL   time.Duration
	RolloutLease time.Duration
	// Pprof serves net/http/pprof on the HTTP address, for profiling.
	Pprof bool

	// SignaturePolicy, if set, is the signature policy file (pkg/sigpolicy)
	// every promoted image, and a refresh's explicit digest, is checked
	// against before anything is recorded (controlplane/signing). It is
	// re-read when it or a key file changes. Empty: no check.
	SignaturePolicy string
	// RegistryCredentials, if set, is the Docker config file the signature
	// check reads the registry with (auths, credHelpers, credsStore);
	// empty is anonymous.
	RegistryCredentials string
	// SignatureTimeout bounds one signature check.
	SignatureTimeout time.Duration

	Logger *slog.Logger
}

// Defaults returns the configuration the binary starts from.
func Defaults() Config {
	return Config{
		// /metrics names every connected tenant: loopback unless told.
		AgentAddr: ":7443", AdminAddr: ":7444", HTTPAddr: "127.0.0.1:9090",
		TLS:         mtls.Files{Cert: "certs/dev/controlplane.pem", Key: "certs/dev/controlplane-key.pem", CA: "certs/dev/ca.pem"},
		TrustDomain: "molecule.local", StorePath: "var/controlplane.db",
		HeartbeatInterval: 15 * time.Second,
		KeepaliveMinTime:  15 * time.Second, KeepaliveTime: time.Minute, KeepaliveTimeout: 20 * time.Second,
		CommandTTL: 24 * time.Hour, HistoryRetention: 90 * 24 * time.Hour, DefaultParallelTenants: 10,
		ReconcileBackoff: time.Minute, ReconcileBackoffMax: time.Hour,
		SendQueue:        256,
		HandshakeTimeout: 10 * time.Second, MaxAgentConns: 25000, MaxHandshakes: admission.DefaultMaxHandshakes(), MaxStreamsPerConn: 4, AgentIdleTimeout: 5 * time.Minute,
		ReconnectBurst: 5, ReconnectInterval: 10 * time.Second,
		ShutdownGrace: 10 * time.Second, ReconnectStagger: 30 * time.Second,
		ClusterSweep: 3 * time.Second, ReplicaTTL: 30 * time.Second, RolloutLease: 15 * time.Second,
		SignatureTimeout: signing.DefaultTimeout,
	}
}

// CheckAndSetDefaults validates everything once, at start, and reports
// every problem together.
func (c *Config) CheckAndSetDefaults() error {
	d := Defaults()
	var errs []error
	for _, a := range []struct{ name, v string }{{"agent-addr", c.AgentAddr}, {"admin-addr", c.AdminAddr}, {"http-addr", c.HTTPAddr}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			errs = append(errs, fmt.Errorf("--%s %q: want host:port (%v)", a.name, a.v, err))
		}
	}
	if err := c.TLS.CheckAndSetDefaults(); err != nil {
		errs = append(errs, fmt.Errorf("TLS (--cert, --key, --ca): %w", err))
	}
	if c.TrustDomain == "" {
		errs = append(errs, errors.New("--trust-domain is empty"))
	}
	if c.StorePath == "" {
		errs = append(errs, errors.New("--store is empty"))
	}
	if _, err := auth.ParseGrants(c.ServiceGrants); err != nil {
		errs = append(errs, fmt.Errorf("--service-grants: %w", err))
	}
	positive := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"heartbeat-interval", &c.HeartbeatInterval, d.HeartbeatInterval},
		{"keepalive-min-time", &c.KeepaliveMinTime, d.KeepaliveMinTime},
		{"keepalive-time", &c.KeepaliveTime, d.KeepaliveTime},
		{"keepalive-timeout", &c.KeepaliveTimeout, d.KeepaliveTimeout},
		{"command-ttl", &c.CommandTTL, d.CommandTTL},
		{"reconcile-backoff", &c.ReconcileBackoff, d.ReconcileBackoff},
		{"reconcile-backoff-max", &c.ReconcileBackoffMax, d.ReconcileBackoffMax},
		{"shutdown-grace", &c.ShutdownGrace, d.ShutdownGrace},
		{"handshake-timeout", &c.HandshakeTimeout, d.HandshakeTimeout},
		{"agent-idle-timeout", &c.AgentIdleTimeout, d.AgentIdleTimeout},
		{"reconnect-interval", &c.ReconnectInterval, d.ReconnectInterval},
		{"cluster-sweep", &c.ClusterSweep, d.ClusterSweep},
		{"replica-ttl", &c.ReplicaTTL, d.ReplicaTTL},
		{"rollout-lease", &c.RolloutLease, d.RolloutLease},
		{"signature-timeout", &c.SignatureTimeout, d.SignatureTimeout},
	}
	for _, p := range positive {
		switch {
		case *p.v < 0:
			errs = append(errs, fmt.Errorf("--%s is negative", p.name))
		case *p.v == 0:
			*p.v = p.def
		}
	}
	if c.ReplicaTTL < 3*c.ClusterSweep {
		errs = append(errs, fmt.Errorf("--replica-ttl %s must be at least 3 × --cluster-sweep %s: a live replica checks in once per sweep", c.ReplicaTTL, c.ClusterSweep))
	}
	if c.KeepaliveMinTime > 30*time.Second {
		errs = append(errs, fmt.Errorf("--keepalive-min-time %s would refuse the agents' 30s pings", c.KeepaliveMinTime))
	}
	if c.HistoryRetention < 0 {
		errs = append(errs, errors.New("--history-retention is negative"))
	}
	if c.ReconnectStagger < 0 {
		errs = append(errs, errors.New("--reconnect-stagger is negative"))
	}
	if c.DefaultParallelTenants <= 0 {
		c.DefaultParallelTenants = d.DefaultParallelTenants
	}
	for _, n := range []struct {
		name string
		v    *int
		def  int
	}{
		{"send-queue", &c.SendQueue, d.SendQueue},
		{"max-agent-conns", &c.MaxAgentConns, d.MaxAgentConns},
		{"max-handshakes", &c.MaxHandshakes, d.MaxHandshakes},
		{"max-streams-per-conn", &c.MaxStreamsPerConn, d.MaxStreamsPerConn},
		{"reconnect-burst", &c.ReconnectBurst, d.ReconnectBurst},
	} {
		switch {
		case *n.v < 0:
			errs = append(errs, fmt.Errorf("--%s is negative", n.name))
		case *n.v == 0:
			*n.v = n.def
		}
	}
	// The files are read now so that a bad one fails the start, not the
	// first promote; the server reads them again when it builds the check.
	if c.SignaturePolicy != "" {
		if _, err := sigpolicy.Load(c.SignaturePolicy); err != nil {
			errs = append(errs, fmt.Errorf("--signature-policy: %w", err))
		}
	}
	if c.RegistryCredentials != "" {
		if _, err := signing.NewKeychain(c.RegistryCredentials, nil); err != nil {
			errs = append(errs, fmt.Errorf("--registry-credentials: %w", err))
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return errors.Join(errs...)
}
