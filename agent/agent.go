// Package agent assembles the tenant agent: the Docker engine, the
// journal, the executor and runner, and the channel to the control plane.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/molecule-ai/tenant-agent/agent/channel"
	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/executor"
	"github.com/molecule-ai/tenant-agent/agent/journal"
	"github.com/molecule-ai/tenant-agent/agent/metrics"
	"github.com/molecule-ai/tenant-agent/agent/runner"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
	"github.com/molecule-ai/tenant-agent/pkg/version"
)

// Config is the agent's configuration; the binary fills it from flags and
// TENANT_AGENT_* variables.
type Config struct {
	// ControlPlane is the control plane's agent address, host:port, or
	// several separated by commas (replicas; at most channel.MaxAddrs).
	// Each attempt takes the next in a shuffled order; a host is resolved
	// at each attempt and all its addresses count.
	ControlPlane string
	// ServerName is the name the control plane's certificate must carry;
	// empty means the host of the ControlPlane address being dialed, as
	// written (never an IP it resolved to).
	ServerName string
	// ControlPlaneID, if set, is the SPIFFE ID the control plane's
	// certificate must carry (besides the CA and ServerName checks).
	ControlPlaneID string
	TLS            mtls.Files
	TrustDomain    string
	// StateDir holds the journal and the outbox.
	StateDir   string
	DockerHost string
	// Labels selects the tenant's managed containers; "{tenant}" in a
	// value is replaced by the tenant slug from the agent's certificate.
	Labels              map[string]string
	RepositoryPattern   string
	RuntimeLabel        string
	AllowRepositories   []string
	RegistryCredentials string
	// SignaturePolicy, if set, is the signature policy file
	// (docs/signatures.md): the image of every refresh and prefetch must
	// pass it before anything is pulled. It and its key files are re-read
	// when they change; empty means images are not verified.
	SignaturePolicy   string
	HealthGateTimeout time.Duration
	StabilityWindow   time.Duration
	PullTimeout       time.Duration
	// MaxParallel bounds the containers of a runtime recreated at once
	// after the canary (--max-parallel-recreates).
	MaxParallel       int
	HeartbeatInterval time.Duration
	// ResyncInterval is how often the watched view of the containers is
	// checked against a container list (docker.WatchOptions).
	ResyncInterval time.Duration
	// KeepaliveTime and KeepaliveTimeout are the HTTP/2 pings that find a
	// dead connection (grpc-go pings at most every 10 s).
	KeepaliveTime, KeepaliveTimeout time.Duration
	// ResultRetention is how long confirmed command IDs are remembered,
	// so a command resent after a long outage still runs only once.
	ResultRetention time.Duration

	// MinFreeDisk is the free space a pull must leave on Docker's data
	// root. RegistryCredentials (a Docker config file: auths, credHelpers,
	// credsStore) is read again at each pull.
	MinFreeDisk uint64
	// KeepImages is how many unused images of a runtime a refresh keeps
	// besides the adopted one (the rollback target); negative: no cleanup.
	KeepImages int
	// HTTPAddr, if set, serves /metrics and /healthz (plain HTTP; a
	// missing host means loopback).
	HTTPAddr string
	Logger   *slog.Logger
}

// Defaults returns the configuration the binary starts from.
func Defaults() Config {
	return Config{
		ControlPlane:      "localhost:7443",
		TLS:               mtls.Files{Cert: "certs/dev/agent.pem", Key: "certs/dev/agent-key.pem", CA: "certs/dev/ca.pem"},
		TrustDomain:       "molecule.local",
		StateDir:          "var/agent",
		Labels:            map[string]string{"molecule.org-id": "{tenant}", "molecule.platform.managed": "true"},
		RepositoryPattern: "workspace-template-{runtime}",
		HealthGateTimeout: 2 * time.Minute, StabilityWindow: 10 * time.Second,
		PullTimeout: 2 * time.Hour, MaxParallel: 4, HeartbeatInterval: 15 * time.Second, ResyncInterval: 5 * time.Minute,
		KeepaliveTime: 30 * time.Second, KeepaliveTimeout: 10 * time.Second,
		ResultRetention: 7 * 24 * time.Hour,
		MinFreeDisk:     5 << 30, KeepImages: 1,
	}
}

// CheckAndSetDefaults validates everything once, at start.
func (c *Config) CheckAndSetDefaults() error {
	var errs []error
	if _, err := channel.ParseAddrs(c.ControlPlane); err != nil {
		errs = append(errs, fmt.Errorf("--control-plane: %w", err))
	}
	if c.ControlPlaneID != "" {
		if err := mtls.CheckServerID(c.ControlPlaneID); err != nil {
			errs = append(errs, fmt.Errorf("--control-plane-id: %w", err))
		}
	}
	if err := c.TLS.CheckAndSetDefaults(); err != nil {
		errs = append(errs, fmt.Errorf("TLS (--cert, --key, --ca): %w", err))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("--state-dir is empty"))
	}
	if len(c.Labels) == 0 {
		errs = append(errs, errors.New("--labels is empty: several tenants may share one Docker daemon, so the agent must know which containers are this tenant's"))
	}
	if strings.Count(c.RepositoryPattern, "{runtime}") != 1 {
		errs = append(errs, fmt.Errorf("--repository-pattern %q must hold {runtime} once", c.RepositoryPattern))
	}
	for name, d := range map[string]time.Duration{"health-gate-timeout": c.HealthGateTimeout, "stability-window": c.StabilityWindow, "pull-timeout": c.PullTimeout, "heartbeat-interval": c.HeartbeatInterval,
		"resync-interval": c.ResyncInterval, "keepalive-time": c.KeepaliveTime, "keepalive-timeout": c.KeepaliveTimeout} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("--%s must be positive", name))
		}
	}
	if c.MaxParallel <= 0 || c.MaxParallel > limits.InFlight {
		errs = append(errs, fmt.Errorf("--max-parallel-recreates must be from 1 to %d", limits.InFlight))
	}
	if c.HTTPAddr != "" {
		addr, err := metrics.ListenAddr(c.HTTPAddr)
		if err != nil {
			errs = append(errs, err)
		}
		c.HTTPAddr = addr
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return errors.Join(errs...)
}

// Run runs the agent until ctx ends. Commands that are running when ctx
// ends are abandoned mid-way only as far as a crash would be: the journal
// lets the next start finish or roll them back.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return err
	}
	logger := cfg.Logger
	policy, err := loadSignaturePolicy(cfg.SignaturePolicy, logger)
	if err != nil {
		return err
	}
	src, err := mtls.NewSource(cfg.TLS, logger)
	if err != nil {
		return err
	}
	id, err := identity.FromCertificate(src.Current().Leaf, cfg.TrustDomain)
	if err != nil {
		return fmt.Errorf("the agent's own certificate: %w", err)
	}
	if id.Kind != identity.KindAgent {
		return fmt.Errorf("the agent's certificate is for %s %s, not a tenant agent", id.Kind, id)
	}
	selector := docker.Selector{}
	for k, v := range cfg.Labels {
		selector[k] = strings.ReplaceAll(v, "{tenant}", id.Tenant)
	}
	engine, err := docker.New(cfg.DockerHost, logger)
	if err != nil {
		return fmt.Errorf("docker: %w", err)
	}
	defer engine.Close()
	m := metrics.New()
	// The containers' state comes from Docker's event stream; the
	// heartbeat reads it instead of listing and inspecting every container.
	state := engine.Watch(ctx, selector, docker.WatchOptions{ResyncInterval: cfg.ResyncInterval, OnReachable: m.DockerReachable})
	creds := docker.CredentialFunc(docker.Anonymous)
	if cfg.RegistryCredentials != "" {
		c, err := docker.NewCredentials(cfg.RegistryCredentials, logger)
		if err != nil {
			return err
		}
		creds = c.For
	}
	verifier, err := startSignatures(ctx, cfg, policy, creds, m)
	if err != nil {
		return err
	}
	exec, err := executor.New(executor.Config{
		Engine: engine, Selector: selector, RepositoryPattern: cfg.RepositoryPattern, RuntimeLabel: cfg.RuntimeLabel,
		AllowRepositories: cfg.AllowRepositories, Credentials: creds, Signatures: verifier,
		MinFreeDisk: cfg.MinFreeDisk, CleanupImages: cfg.KeepImages >= 0, KeepImages: cfg.KeepImages,
		HealthGateTimeout: cfg.HealthGateTimeout, StabilityWindow: cfg.StabilityWindow, PullTimeout: cfg.PullTimeout, MaxParallel: cfg.MaxParallel,
		State: state, Logger: logger,
	})
	if err != nil {
		return err
	}
	j, err := journal.Open(cfg.StateDir)
	if err != nil {
		return err
	}
	go pruneJournal(ctx, j, cfg.ResultRetention, logger)
	if err := serveMetrics(ctx, cfg.HTTPAddr, m, engine, logger); err != nil {
		return err
	}
	run := runner.New(runner.Config{Journal: j, Executor: m.Executor(exec), Logger: logger})
	hostname, _ := os.Hostname()
	logger.Info("tenant agent starting", "component", "agent", "identity", id.ID, "version", version.String(),
		"control_plane", cfg.ControlPlane, "control_plane_id", cfg.ControlPlaneID, "selector", selector, "state_dir", cfg.StateDir,
		"signature_policy", cfg.SignaturePolicy)
	run.Start(ctx)
	defer run.Wait()
	go releaseWhenIdle(ctx, 10*time.Second, 30*time.Second, func() bool { running, _ := run.Held(); return len(running) > 0 }, debug.FreeOSMemory)
	return channel.Run(ctx, channel.Config{
		Addr: cfg.ControlPlane, Creds: mtls.ClientCredentialsWith(src, mtls.ClientOptions{ServerName: cfg.ServerName, ServerID: cfg.ControlPlaneID}), Tenant: id.Tenant,
		Hostname: hostname, Version: version.String(), DockerVersion: engine.Version,
		Inventory: exec.Inventory, Runner: run, Changes: state.Changes(),
		HeartbeatInterval: cfg.HeartbeatInterval, KeepaliveTime: cfg.KeepaliveTime, KeepaliveTimeout: cfg.KeepaliveTimeout,
		CA: cfg.TLS.CA, Observer: m, Logger: logger,
	})
}

// serveMetrics serves /metrics and /healthz on addr until ctx ends, if
// addr is set; failing to listen fails the start, so a typo is not silent.
func serveMetrics(ctx context.Context, addr string, m *metrics.Metrics, engine *docker.Engine, logger *slog.Logger) error {
	if addr == "" {
		return nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--http-addr: %w", err)
	}
	ping := engine.Ping
	logger.Info("serving /metrics and /healthz", "component", "metrics", "addr", lis.Addr().String())
	go metrics.Serve(ctx, lis, m.Handler(ping), logger)
	return nil
}

// pruneJournal forgets confirmed commands older than retention, at start
// and then hourly, so a long-running agent's state dir stays small.
func pruneJournal(ctx context.Context, j *journal.Journal, retention time.Duration, logger *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if err := j.Prune(time.Now().Add(-retention)); err != nil {
			logger.Warn("cannot prune the journal", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
