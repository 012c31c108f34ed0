package main

import (
	"flag"
	"io"

	"github.com/molecule-ai/tenant-agent/controlplane/server"
	"github.com/molecule-ai/tenant-agent/pkg/cliflag"
	"github.com/molecule-ai/tenant-agent/pkg/version"
)

const summary = `controlplane accepts the tenant agents' outbound mutual-TLS streams, keeps
each runtime's image pin, and pushes refreshes down the agents' own
connections. Its admin API (controlplane.v1.AdminService, with reflection and
grpc.health.v1) serves the promote hook, operators with grpcurl, and
dashboards; /metrics and /healthz are on the HTTP address.

Make dev certificates with "make certs", then for example:

  controlplane --cert certs/dev/controlplane.pem --key certs/dev/controlplane-key.pem --ca certs/dev/ca.pem
  go tool grpcurl -cacert certs/dev/ca.pem -cert certs/dev/operator-dev.pem \
      -key certs/dev/operator-dev-key.pem localhost:7444 list`

// memProfileRate is --mem-profile-rate, set for the process in main.
var memProfileRate int

func parseFlags(args []string, stdout io.Writer) (server.Config, error) {
	cfg := server.Defaults()
	cmd := cliflag.Command{Name: "controlplane", Summary: summary, EnvPrefix: "CONTROLPLANE", Version: version.String()}
	fs := flag.NewFlagSet(cmd.Name, flag.ContinueOnError)
	fs.StringVar(&cfg.AgentAddr, "agent-addr", cfg.AgentAddr, "listen address for agents (AgentService only)")
	fs.StringVar(&cfg.AdminAddr, "admin-addr", cfg.AdminAddr, "listen address for the admin API, reflection and health")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "listen address for /metrics and /healthz (plain HTTP; /metrics names connected tenants,\nso keep it on loopback or a private interface your scraper reaches)")
	fs.StringVar(&cfg.TLS.Cert, "cert", cfg.TLS.Cert, "server certificate (PEM); re-read when it changes")
	fs.StringVar(&cfg.TLS.Key, "key", cfg.TLS.Key, "server key (PEM)")
	fs.StringVar(&cfg.TLS.CA, "ca", cfg.TLS.CA, "CA bundle clients are verified against (PEM, may hold several CAs)")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", cfg.TrustDomain, "SPIFFE trust domain of every client identity")
	fs.StringVar(&cfg.StorePath, "store", cfg.StorePath, "SQLite database file (created if missing), or a postgres:// or postgresql:// URL of the database replicas share")
	fs.StringVar(&cfg.ServiceGrants, "service-grants", "", "what service identities may call, e.g. 'promote-hook=PromoteRuntimeImage,RefreshRuntimeImage;ci=ListCommands'\n(default for unlisted services: Promote, Refresh, Get, List and Watch methods)")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", cfg.HeartbeatInterval, "how often agents send health reports")
	fs.DurationVar(&cfg.KeepaliveMinTime, "keepalive-min-time", cfg.KeepaliveMinTime, "the most often agents may send HTTP/2 pings (agents ping every 30s)")
	fs.DurationVar(&cfg.KeepaliveTime, "keepalive-time", cfg.KeepaliveTime, "idle time before the server pings an agent")
	fs.DurationVar(&cfg.KeepaliveTimeout, "keepalive-timeout", cfg.KeepaliveTimeout, "how long the server waits for a ping reply before closing")
	fs.DurationVar(&cfg.CommandTTL, "command-ttl", cfg.CommandTTL, "how long a command may wait (agent offline) before it expires")
	fs.DurationVar(&cfg.HistoryRetention, "history-retention", cfg.HistoryRetention, "how long finished commands and their events are kept (0 keeps them forever)")
	fs.IntVar(&cfg.DefaultParallelTenants, "max-parallel-tenants", cfg.DefaultParallelTenants, "tenants refreshed at once by a rollout that does not say")
	fs.DurationVar(&cfg.ReconcileBackoff, "reconcile-backoff", cfg.ReconcileBackoff, "wait after a failed automatic refresh; doubles per failure")
	fs.DurationVar(&cfg.ReconcileBackoffMax, "reconcile-backoff-max", cfg.ReconcileBackoffMax, "longest wait between automatic refresh attempts")
	fs.IntVar(&cfg.SendQueue, "send-queue", cfg.SendQueue, "messages queued per agent before a non-reading agent is disconnected")
	fs.DurationVar(&cfg.HandshakeTimeout, "handshake-timeout", cfg.HandshakeTimeout, "a new connection must finish its TLS and HTTP/2 handshake within this")
	fs.IntVar(&cfg.MaxAgentConns, "max-agent-conns", cfg.MaxAgentConns, "open connections on the agent address; more are closed as soon as accepted")
	fs.IntVar(&cfg.MaxHandshakes, "max-handshakes", cfg.MaxHandshakes, "concurrent TLS handshakes on the agent address (default 256 × cores); a connection that waits\nover --handshake-timeout for one is told to come back later (ResourceExhausted with a retry hint)")
	fs.IntVar(&cfg.MaxStreamsPerConn, "max-streams-per-conn", cfg.MaxStreamsPerConn, "concurrent streams on one agent connection (an agent uses one)")
	fs.DurationVar(&cfg.AgentIdleTimeout, "agent-idle-timeout", cfg.AgentIdleTimeout, "an agent connection with no stream for this long is closed")
	fs.IntVar(&cfg.ReconnectBurst, "reconnect-burst", cfg.ReconnectBurst, "streams one agent identity may open at once before --reconnect-interval applies")
	fs.DurationVar(&cfg.ReconnectInterval, "reconnect-interval", cfg.ReconnectInterval, "after the burst, one stream per agent identity per this; sooner ones are refused\n(ResourceExhausted with a retry hint the agent honours)")
	fs.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", cfg.ShutdownGrace, "how long streams may drain at shutdown")
	fs.DurationVar(&cfg.ReconnectStagger, "reconnect-stagger", cfg.ReconnectStagger, "at shutdown, agents are told to reconnect after a random delay: spread over 0.5 ms an agent\n(10,000 agents over 5 s), at most this")
	fs.DurationVar(&cfg.ClusterSweep, "cluster-sweep", cfg.ClusterSweep, "replicas on PostgreSQL: how often each re-reads the store for what a lost notification\nwould have told it (pending commands of its agents, who holds which stream)")
	fs.DurationVar(&cfg.ReplicaTTL, "replica-ttl", cfg.ReplicaTTL, "replicas on PostgreSQL: a replica silent this long is dead and its agents count as offline")
	fs.DurationVar(&cfg.RolloutLease, "rollout-lease", cfg.RolloutLease, "a running rollout's owner renews its lease every third of this; another replica\ntakes the rollout over when the lease runs out")
	fs.StringVar(&cfg.SignaturePolicy, "signature-policy", "", "signature policy file (JSON, see pkg/sigpolicy): PromoteRuntimeImage, and RefreshRuntimeImage with\nan image_digest, are refused unless the image is signed as the rule for its repository asks\n(a warn rule only warns); re-read when it changes (default: no check)")
	fs.StringVar(&cfg.RegistryCredentials, "registry-credentials", "", "Docker config file the signature check reads the registry with: auths, credHelpers and\ncredsStore, a helper being docker-credential-<name> on PATH; read again at each check\n(default: anonymous)")
	fs.DurationVar(&cfg.SignatureTimeout, "signature-timeout", cfg.SignatureTimeout, "how long one signature check may take; past it the signatures count as unreadable\n(Unavailable under an enforce rule, a warning under a warn rule)")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "serve Go profiles under /debug/pprof/ on the HTTP address")
	fs.IntVar(&memProfileRate, "mem-profile-rate", 0, "with --pprof: sample one allocation per this many bytes in heap profiles (0: Go's default, 512 KiB;\nsmaller is finer and costs more)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")

	if _, err := cmd.Parse(fs, args, stdout); err != nil {
		return cfg, err
	}
	logger, err := cliflag.NewLogger(*logLevel, *logFormat)
	if err != nil {
		return cfg, err
	}
	cfg.Logger = logger
	return cfg, nil
}
