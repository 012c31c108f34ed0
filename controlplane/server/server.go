package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/molecule-ai/tenant-agent/controlplane/adminsvc"
	"github.com/molecule-ai/tenant-agent/controlplane/admission"
	"github.com/molecule-ai/tenant-agent/controlplane/agentsvc"
	"github.com/molecule-ai/tenant-agent/controlplane/auth"
	"github.com/molecule-ai/tenant-agent/controlplane/cluster"
	"github.com/molecule-ai/tenant-agent/controlplane/dispatch"
	"github.com/molecule-ai/tenant-agent/controlplane/fleet"
	"github.com/molecule-ai/tenant-agent/controlplane/metrics"
	"github.com/molecule-ai/tenant-agent/controlplane/reconcile"
	"github.com/molecule-ai/tenant-agent/controlplane/rollout"
	"github.com/molecule-ai/tenant-agent/controlplane/session"
	"github.com/molecule-ai/tenant-agent/controlplane/signing"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/controlplane/ticketkeys"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
	"github.com/molecule-ai/tenant-agent/pkg/sigpolicy"
	"github.com/molecule-ai/tenant-agent/pkg/version"
)

const (
	maxAgentMessage  = 1 << 20   // a health report of many containers fits
	maxAdminMessage  = 256 << 10 // admin requests are small
	agentWriteBuffer = 4 << 10
)

// Server is a running control plane.
type Server struct {
	cfg Config

	fleet      *fleet.Fleet
	store      store.Store
	cluster    cluster.Cluster
	sessions   *session.Registry
	dispatcher *dispatch.Dispatcher
	rollouts   *rollout.Rollouts
	// policy is the signature policy, nil without --signature-policy;
	// Serve keeps it current.
	policy  *sigpolicy.Source
	health  *health.Server
	serving atomic.Bool

	agentLis, adminLis, httpLis net.Listener
	agentConns                  *admission.Listener
	handshakes                  *admission.Handshakes
	reconnects                  *admission.Reconnects
	ticketKeys                  *ticketkeys.Keys
	metrics                     *metrics.Metrics
	deny                        *auth.DenyList
	agentSrv, adminSrv          *grpc.Server
	httpSrv                     *http.Server

	lifetime context.Context
	stop     context.CancelFunc
	wg       sync.WaitGroup
}

// New opens the store, builds every component and binds the listeners;
// Serve starts serving.
func New(cfg Config) (_ *Server, err error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg}
	s.lifetime, s.stop = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if err := s.openState(); err != nil {
		return nil, err
	}
	agents, admin, err := s.newServices()
	if err != nil {
		return nil, err
	}
	if err := s.newGRPCServers(agents, admin); err != nil {
		return nil, err
	}
	s.newHTTPServer()
	if err := s.listen(); err != nil {
		return nil, err
	}
	if err := s.rollouts.Resume(s.lifetime); err != nil {
		return nil, fmt.Errorf("resume rollouts: %w", err)
	}
	return s, nil
}

// openState opens the store and loads what the control plane knows from
// it: the fleet (agents, pins, holds) and the deny list.
func (s *Server) openState() (err error) {
	replica := replicaID(s.cfg.StorePath)
	if s.store, err = openStore(s.lifetime, s.cfg.StorePath, replica); err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	s.deny = auth.NewDenyList()
	s.sessions = session.NewRegistry(s.cfg.SendQueue)
	if s.cluster, err = openCluster(s.lifetime, s.cfg, replica, s.sessions); err != nil {
		return fmt.Errorf("join the cluster: %w", err)
	}
	if s.fleet, err = fleet.New(s.lifetime, fleet.Config{Store: s.store, Sessions: s.sessions, Deny: s.deny, Cluster: s.cluster, Logger: s.cfg.Logger}); err != nil {
		return fmt.Errorf("load fleet: %w", err)
	}
	s.metrics = metrics.New(s.sessions, s.fleet)
	if s.ticketKeys, err = ticketkeys.New(s.lifetime, s.store, s.cfg.Logger); err != nil {
		return fmt.Errorf("TLS session ticket keys: %w", err)
	}
	return nil
}

// newServices builds the components (dispatch, reconcile, rollouts) and
// the two gRPC services over them.
func (s *Server) newServices() (tenantagentv1.AgentServiceServer, controlplanev1.AdminServiceServer, error) {
	cfg, logger := s.cfg, s.cfg.Logger
	var err error
	if s.dispatcher, err = dispatch.New(dispatch.Config{Store: s.store, Sessions: s.sessions, Agents: s.fleet, Cluster: s.cluster, Logger: logger, Observer: s.metrics,
		CommandTTL: cfg.CommandTTL, HistoryRetention: cfg.HistoryRetention}); err != nil {
		return nil, nil, err
	}
	rec, err := reconcile.New(reconcile.Config{Store: s.store, Fleet: s.fleet, Issuer: s.dispatcher, Logger: logger,
		BackoffBase: cfg.ReconcileBackoff, BackoffMax: cfg.ReconcileBackoffMax})
	if err != nil {
		return nil, nil, err
	}
	signatures, err := s.newSignatures()
	if err != nil {
		return nil, nil, err
	}
	if s.rollouts, err = rollout.New(s.lifetime, rollout.Config{Store: s.store, Fleet: s.fleet, Dispatcher: s.dispatcher, Presence: s.cluster, Replica: s.cluster.Replica(), Lease: cfg.RolloutLease,
		Signatures: signatures, Logger: logger, DefaultParallel: cfg.DefaultParallelTenants}); err != nil {
		return nil, nil, err
	}
	agents, err := agentsvc.New(agentsvc.Config{Sessions: s.sessions, Fleet: s.fleet, Cluster: s.cluster, Dispatcher: s.dispatcher, Reconciler: rec, Logger: logger, HeartbeatInterval: cfg.HeartbeatInterval})
	if err != nil {
		return nil, nil, err
	}
	admin, err := adminsvc.New(adminsvc.Config{Store: s.store, Fleet: s.fleet, Dispatcher: s.dispatcher, Rollouts: s.rollouts, Signatures: signatures, Logger: logger})
	if err != nil {
		return nil, nil, err
	}
	return agents, admin, nil
}

// newSignatures builds the signature check of --signature-policy, or
// returns nil without one.
func (s *Server) newSignatures() (rollout.Signatures, error) {
	cfg := s.cfg
	log := cfg.Logger.With("component", "signing")
	if cfg.SignaturePolicy == "" {
		if cfg.RegistryCredentials != "" {
			log.Warn("--registry-credentials is unused without --signature-policy")
		}
		return nil, nil
	}
	var err error
	s.policy, err = sigpolicy.NewSource(cfg.SignaturePolicy, sigpolicy.SourceOptions{
		OnChange: func(p *sigpolicy.Policy) {
			log.Info("signature policy reloaded", "policy", p.Path, "rules", len(p.Rules()))
		},
		OnError: func(err error) { log.Error("signature policy not reloaded; the last good one stays", "error", err) },
	})
	if err != nil {
		return nil, err
	}
	var keychain authn.Keychain // nil: anonymous
	if cfg.RegistryCredentials != "" {
		if keychain, err = signing.NewKeychain(cfg.RegistryCredentials, cfg.Logger); err != nil {
			return nil, err
		}
	}
	checker, err := signing.New(signing.Config{Policy: s.policy, Keychain: keychain, Timeout: cfg.SignatureTimeout, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	log.Info("promotes are checked against the signature policy", "policy", cfg.SignaturePolicy, "rules", len(s.policy.Current().Rules()),
		"registry_credentials", cmp.Or(cfg.RegistryCredentials, "none (anonymous)"), "timeout", cfg.SignatureTimeout)
	return checker, nil
}

// newGRPCServers builds the agent and admin gRPC servers: mTLS, the auth
// interceptors, and each port's own limits and services.
func (s *Server) newGRPCServers(agents tenantagentv1.AgentServiceServer, admin controlplanev1.AdminServiceServer) error {
	cfg, logger := s.cfg, s.cfg.Logger
	src, err := mtls.NewSource(cfg.TLS, logger)
	if err != nil {
		return err
	}
	grants, _ := auth.ParseGrants(cfg.ServiceGrants) // checked in CheckAndSetDefaults
	// No deny check in the full handshake: denied peers are refused at the
	// call (Interceptors.Check) with PermissionDenied and the reason, and
	// the reconnect limiter bounds how often they may come back. A denied
	// peer's session is not resumed (Resume), so that a ticket issued
	// before the denial brings back no more than a full handshake would.
	// Ticket keys come from the store: tickets survive a restart and are
	// good on every replica.
	creds := mtls.ServerCredentials(src, mtls.ServerOptions{TrustDomain: cfg.TrustDomain, Track: s.deny.TrackConn, Logger: logger,
		Resume: s.deny.Check, TicketKeys: s.ticketKeys.Current})
	// A connection queues up to the handshake timeout, then has that long
	// for its handshake: the agent's own connect timeout (gRPC's 20 s)
	// covers both.
	s.handshakes = admission.NewHandshakes(cfg.MaxHandshakes, cfg.HandshakeTimeout, cfg.HandshakeTimeout, s.metrics.Handshake, s.metrics.HandshakeShed)
	s.reconnects = admission.NewReconnects(cfg.ReconnectBurst, cfg.ReconnectInterval, logger)
	common := append([]grpc.ServerOption{grpc.ConnectionTimeout(cfg.HandshakeTimeout)}, auth.Interceptors{
		TrustDomain: cfg.TrustDomain, Policy: auth.NewPolicy(grants), Check: s.deny.Check, Tracker: s.deny, Admit: s.admit, Logger: logger,
		// A denial closes the agent's session (fleet), which ends its
		// stream with the reason; its connection is tracked like any other.
		Untracked: []string{tenantagentv1.AgentService_Connect_FullMethodName},
	}.ServerOptions()...)

	s.agentSrv = grpc.NewServer(append(common,
		grpc.Creds(s.handshakes.Credentials(creds)),
		grpc.MaxRecvMsgSize(maxAgentMessage),
		// Thousands of mostly idle streams: no read buffer of gRPC's own
		// and one shared write buffer keep memory per agent down (measured
		// with bench/fleetsim; see the README's benchmark table). crypto/tls
		// already holds each record it decrypts, so the framer reads frames
		// from it directly; gRPC's buffer would be 4 KiB more a connection
		// for the whole of its life (it pools read buffers only on plain
		// TCP connections).
		grpc.ReadBufferSize(0),
		grpc.WriteBufferSize(agentWriteBuffer),
		grpc.SharedWriteBuffer(true),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: cfg.KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: cfg.KeepaliveTime, Timeout: cfg.KeepaliveTimeout, MaxConnectionIdle: cfg.AgentIdleTimeout}),
		grpc.MaxConcurrentStreams(uint32(cfg.MaxStreamsPerConn)),
	)...)
	tenantagentv1.RegisterAgentServiceServer(s.agentSrv, agents)

	s.adminSrv = grpc.NewServer(append(common, grpc.Creds(creds), grpc.MaxRecvMsgSize(maxAdminMessage))...)
	controlplanev1.RegisterAdminServiceServer(s.adminSrv, admin)
	s.health = health.NewServer()
	grpc_health_v1.RegisterHealthServer(s.adminSrv, s.health)
	reflection.Register(s.adminSrv)
	return nil
}

// newHTTPServer serves /metrics, /healthz and, if asked, pprof.
func (s *Server) newHTTPServer() {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.serving.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if s.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	}
	s.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}

// listen binds the three ports; the agent port admits at most
// MaxAgentConns connections.
func (s *Server) listen() (err error) {
	for _, l := range []struct {
		addr string
		lis  *net.Listener
	}{{s.cfg.AgentAddr, &s.agentLis}, {s.cfg.AdminAddr, &s.adminLis}, {s.cfg.HTTPAddr, &s.httpLis}} {
		if *l.lis, err = net.Listen("tcp", l.addr); err != nil {
			return err
		}
	}
	s.agentConns = admission.LimitListener(s.agentLis, s.cfg.MaxAgentConns, s.metrics.ConnRefused)
	s.agentLis = s.agentConns
	return nil
}

// admit refuses an agent stream on a connection shed over the handshake
// bound, or that comes too soon after the identity's last ones; other
// calls pass.
func (s *Server) admit(ctx context.Context, id identity.Identity, method string) error {
	if method != tenantagentv1.AgentService_Connect_FullMethodName {
		return nil
	}
	if !s.serving.Load() {
		return status.Error(codes.Unavailable, agentsvc.ErrShuttingDown.Error())
	}
	if err := s.handshakes.Admit(ctx); err != nil {
		return err
	}
	err := s.reconnects.Admit(ctx, id)
	if err != nil {
		s.metrics.ReconnectRefused()
	}
	return err
}

// AgentAddr, AdminAddr and HTTPAddr are the bound addresses.
func (s *Server) AgentAddr() string { return s.agentLis.Addr().String() }
func (s *Server) AdminAddr() string { return s.adminLis.Addr().String() }
func (s *Server) HTTPAddr() string  { return s.httpLis.Addr().String() }

// Serve serves until ctx ends, then shuts down gracefully: health goes
// NOT_SERVING, agents are told to reconnect (staggered), streams drain for
// up to ShutdownGrace.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 3)
	s.wg.Add(6)
	go func() { defer s.wg.Done(); errc <- s.agentSrv.Serve(s.agentLis) }()
	go func() { defer s.wg.Done(); errc <- s.adminSrv.Serve(s.adminLis) }()
	go func() {
		defer s.wg.Done()
		if err := s.httpSrv.Serve(s.httpLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	go func() { defer s.wg.Done(); s.dispatcher.Run(s.lifetime) }()
	go func() { defer s.wg.Done(); s.fleet.Run(s.lifetime, time.Second) }()
	s.wg.Go(func() { s.ticketKeys.Run(s.lifetime) })
	if s.policy != nil {
		s.wg.Go(func() { s.policy.Run(s.lifetime) })
	}
	go func() {
		defer s.wg.Done()
		handler := peers{dispatcher: s.dispatcher, fleet: s.fleet, sessions: s.sessions, logger: s.cfg.Logger.With("component", "peers")}
		if err := s.cluster.Run(s.lifetime, handler); err != nil {
			s.cfg.Logger.Error("cluster doorbells stopped", "component", "server", "error", err)
		}
	}()
	s.serving.Store(true)
	s.health.SetServingStatus("", grpc_health_v1.HealthCheckResponse_SERVING)
	s.cfg.Logger.Info("control plane serving", "component", "server", "version", version.String(),
		"replica", s.cluster.Replica(), "agent_addr", s.AgentAddr(), "admin_addr", s.AdminAddr(), "http_addr", s.HTTPAddr(), "store", storeForLog(s.cfg.StorePath))

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		s.cfg.Logger.Error("listener failed; shutting down", "component", "server", "error", err)
	}
	s.shutdown()
	return err
}

func (s *Server) shutdown() {
	log := s.cfg.Logger.With("component", "server")
	log.Info("shutting down", "agents", s.sessions.Len())
	// No new agent streams from here on (admit refuses them), and no new
	// connections: an agent told to come back at once must not find this
	// process still listening and open a session nobody will close.
	s.serving.Store(false)
	s.agentConns.Close()
	s.health.Shutdown() // NOT_SERVING to every watcher
	spread := reconnectSpread(s.cfg.ReconnectStagger, s.sessions.Len())
	for _, sess := range s.sessions.List() {
		after := time.Duration(0)
		if spread > 0 {
			after = rand.N(spread)
		}
		_ = sess.Send(&tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Reconnect{Reconnect: &tenantagentv1.Reconnect{
			After: durationpb.New(after), Reason: "control plane shutting down",
		}}})
	}
	// An agent told to reconnect ends its stream itself; the streams of
	// the others (and of agents too old to) are ended after a moment.
	s.awaitSessions(min(drainWait, s.cfg.ShutdownGrace))
	// Streams still being set up register closed from here on, so none
	// is left holding GracefulStop.
	s.sessions.CloseAll(agentsvc.ErrShuttingDown)
	s.handshakes.Close()

	done := make(chan struct{})
	go func() {
		s.agentSrv.GracefulStop()
		s.adminSrv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(s.cfg.ShutdownGrace):
		log.Warn("streams did not drain in time; closing them")
		s.agentSrv.Stop()
		s.adminSrv.Stop()
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.httpSrv.Shutdown(shutdownCtx)
	s.stop()
	s.rollouts.Wait()
	s.wg.Wait()
	s.close()
	log.Info("stopped")
}

// drainWait bounds how long shutdown waits for agents told to reconnect
// to end their streams themselves.
const drainWait = time.Second

// reconnectPace is the rate the reconnects after a shutdown are spread
// at: a restarted control plane on 2 cores takes about 1,000 resumed
// handshakes a second (bench/fleetsim), so spreading them over a fraction
// of what they take anyway keeps the storm's peak down without making
// small fleets wait.
const reconnectPace = 2000 // agents a second

// reconnectSpread is how long the agents' reconnects are spread over: n
// agents at reconnectPace, at most stagger.
func reconnectSpread(stagger time.Duration, n int) time.Duration {
	return min(stagger, time.Duration(n)*time.Second/reconnectPace)
}

// awaitSessions waits up to d for every session to end.
func (s *Server) awaitSessions(d time.Duration) {
	deadline := time.Now().Add(d)
	for s.sessions.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *Server) close() {
	s.stop()
	for _, l := range []net.Listener{s.agentLis, s.adminLis, s.httpLis} {
		if l != nil {
			l.Close()
		}
	}
	// The cluster (its doorbell connections) closes before the store.
	if c, ok := s.cluster.(io.Closer); ok {
		c.Close()
	}
	if s.store != nil {
		s.store.Close()
	}
}

// Run builds the control plane and serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}
