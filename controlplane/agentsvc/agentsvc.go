// Package agentsvc serves tenantagent.v1.AgentService: it turns each
// agent's stream into a session and hands what the agent says to the
// fleet, the dispatcher and the reconciler.
package agentsvc

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/molecule-ai/tenant-agent/controlplane/cluster"
	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	"github.com/molecule-ai/tenant-agent/controlplane/dispatch"
	"github.com/molecule-ai/tenant-agent/controlplane/fleet"
	"github.com/molecule-ai/tenant-agent/controlplane/reconcile"
	"github.com/molecule-ai/tenant-agent/controlplane/session"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
	"github.com/molecule-ai/tenant-agent/pkg/version"
)

// Config configures the service.
type Config struct {
	Sessions   *session.Registry
	Fleet      *fleet.Fleet
	Dispatcher *dispatch.Dispatcher
	Reconciler *reconcile.Reconciler
	// Cluster records which replica holds each agent's stream, so the
	// newest stream wins across replicas; the cluster of one by default.
	Cluster cluster.Cluster
	Logger  *slog.Logger
	// HeartbeatInterval is what Welcome tells agents.
	HeartbeatInterval time.Duration
	// HelloTimeout is how long a new stream may take to send Hello.
	HelloTimeout time.Duration
}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Sessions == nil || c.Fleet == nil || c.Dispatcher == nil || c.Reconciler == nil {
		return errors.New("agentsvc: Sessions, Fleet, Dispatcher and Reconciler are required")
	}
	if c.Cluster == nil {
		c.Cluster = cluster.NewLocal(c.Sessions)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("component", "agentsvc")
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 15 * time.Second
	}
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = 10 * time.Second
	}
	return nil
}

type service struct {
	tenantagentv1.UnimplementedAgentServiceServer
	cfg Config
}

var _ tenantagentv1.AgentServiceServer = (*service)(nil)

// New returns the AgentService implementation.
func New(cfg Config) (tenantagentv1.AgentServiceServer, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	return &service{cfg: cfg}, nil
}

// agentStream is one agent's stream once open: what reading it needs.
type agentStream struct {
	grpc tenantagentv1.AgentService_ConnectServer
	ctx  context.Context
	id   identity.Identity
	sess *session.Session
	// epoch is the cluster's claim on the stream.
	epoch int64
	// returned is set once the handler is done with the stream (see
	// cutOffLater).
	returned atomic.Bool
}

// Connect opens the stream, then reads it until it ends. The handler's
// goroutine is the one goroutine of ours an idle stream holds, parked in
// Recv for as long as the stream lasts. Setting up (open) and handling a
// message (handle) run in frames of their own, gone while it waits: the
// collector halves a stack only while less than a quarter of it is in
// use, and with Connect's own setup frame under the wait, a stack grown
// by handling a heartbeat stayed at 16 KiB (fleetsim: 8 KiB an agent).
func (s *service) Connect(stream tenantagentv1.AgentService_ConnectServer) error {
	as, err := s.open(stream)
	if err != nil {
		return err
	}
	defer s.close(as)
	return s.read(as)
}

// open checks the agent's Hello, registers and claims its stream, welcomes
// it, and delivers what waits for it. On error nothing of the stream is
// left registered.
func (s *service) open(stream tenantagentv1.AgentService_ConnectServer) (*agentStream, error) {
	ctx := stream.Context()
	id, ok := identity.FromContext(ctx)
	if !ok || id.Kind != identity.KindAgent {
		return nil, status.Error(codes.PermissionDenied, "only tenant agents may connect")
	}
	hello, err := s.awaitHello(stream)
	if err != nil {
		return nil, err
	}
	// Checked before anything is registered, stored or logged.
	if err := checkHello(hello); err != nil {
		return nil, s.refuse(id, err)
	}
	if hello.GetTenant() != "" && hello.GetTenant() != id.Tenant {
		s.cfg.Logger.Warn("hello claims another tenant; refused", "agent", id.ID, "claimed", limits.Quoted(hello.GetTenant()))
		return nil, status.Errorf(codes.PermissionDenied, "certificate %s is for tenant %q; Hello claims tenant %s", id.ID, id.Tenant, limits.Quoted(hello.GetTenant()))
	}

	sess, replaced := s.cfg.Sessions.Register(id, serialOf(ctx), time.Now())
	if err := sess.Err(); err != nil { // the registry is closed: shutting down
		return nil, closeStatus(err)
	}
	// Not a logger With the agent: it would live as long as the stream.
	log := s.cfg.Logger
	if replaced != nil {
		log.Info("new connection replaces the previous one", "agent", id.ID)
	}
	// The claim makes this the agent's newest stream on every replica; a
	// replica holding an older one closes it.
	epoch, err := s.cfg.Cluster.Claim(ctx, id.ID)
	if err != nil {
		s.cfg.Sessions.Unregister(sess)
		sess.Close(errors.New("stream not recorded"))
		log.Error("cannot record the agent's stream; refused", "agent", id.ID, "error", err)
		return nil, status.Error(codes.Unavailable, "the control plane cannot record this stream now; reconnect later")
	}
	sess.SetEpoch(epoch)
	log.Info("agent connected", "agent", id.ID, "epoch", epoch, "hostname", hello.GetHostname(), "version", hello.GetAgentVersion(), "docker", hello.GetDockerVersion())
	as := &agentStream{grpc: stream, ctx: ctx, id: id, sess: sess, epoch: epoch}

	// Recorded before Welcome, so an agent that was welcomed is known.
	agent := s.cfg.Fleet.Connected(sess, hello)
	_ = sess.Send(&tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Welcome{Welcome: &tenantagentv1.Welcome{
		Identity: id.ID, Tenant: id.Tenant, AgentName: id.Name,
		HeartbeatInterval: durationpb.New(s.cfg.HeartbeatInterval), ControlPlaneVersion: version.String(),
		AcceptsUnchangedRuntimes: true, // fleet.Health keeps the record's
	}}})
	// The session sends from a goroutine of its own only while messages
	// wait. gRPC ends a blocked Recv only with the stream, so a session
	// closed here (replaced, denied, too slow, shutting down) asks the
	// agent to end its side (EndStream): Recv then returns and the status
	// the handler returns tells the agent why. An agent that does not,
	// or has stopped reading, is cut off with its connection.
	sess.StartWriting(session.Writer{
		Send:   stream.Send,
		Last:   endStream,
		Closed: func() { s.cutOffLater(as) },
	})
	// Delivery (which may queue many commands, and reads the store) runs
	// before reading, in a goroutine of its own: its stack goes with it.
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		if err := s.cfg.Dispatcher.Deliver(ctx, sess, hello); err != nil {
			log.Error("cannot deliver pending commands", "agent", id.ID, "error", err)
		}
		s.cfg.Reconciler.Reconcile(ctx, agent)
	}()
	<-delivered
	return as, nil
}

// close ends what open began, once the handler is done reading.
func (s *service) close(as *agentStream) {
	sess := as.sess
	// gRPC allows no send once the handler returns. Closing the session
	// arms the cut-off (cutOffLater) for a send stuck in flight.
	sess.StopWriting(errors.New("stream closed"))
	as.returned.Store(true)
	unregistered := s.cfg.Sessions.Unregister(sess)
	// Released before the record says disconnected, so every replica
	// (this one too) sees the agent offline when it reads the record.
	s.cfg.Cluster.Release(context.WithoutCancel(as.ctx), as.id.ID, as.epoch)
	// A stream replaced by a newer one (here or on another replica)
	// leaves the agent's record to the newer one.
	if unregistered && !errors.Is(sess.Err(), session.ErrReplaced) {
		s.cfg.Fleet.Disconnected(sess)
	}
	s.cfg.Logger.Info("agent disconnected", "agent", as.id.ID, "cause", sess.Err())
}

// endStream is the last message on a stream whose session was closed.
var endStream = &tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_EndStream{EndStream: &tenantagentv1.EndStream{}}}

// cutOffAfter is how long a closed session's handler has to return
// before its connection is closed under it.
const cutOffAfter = time.Second

// cutOffLater closes the connection of a closed session whose handler has
// not returned within cutOffAfter: its agent did not end the stream when
// asked, or stopped reading (a send to it is stuck on flow control), and
// only the connection's end unblocks the handler.
func (s *service) cutOffLater(as *agentStream) {
	if as.returned.Load() {
		return
	}
	time.AfterFunc(cutOffAfter, func() {
		if as.returned.Load() {
			return
		}
		if p, ok := peer.FromContext(as.ctx); ok && mtls.CloseConn(p.AuthInfo) {
			s.cfg.Logger.Warn("agent did not end its stream when asked; connection closed", "agent", as.id.ID, "cause", as.sess.Err())
		}
	})
}

func (s *service) awaitHello(stream tenantagentv1.AgentService_ConnectServer) (*tenantagentv1.Hello, error) {
	got := make(chan *tenantagentv1.AgentMessage, 1)
	failed := make(chan error, 1)
	go func() {
		msg, err := stream.Recv()
		if err != nil {
			failed <- err
			return
		}
		got <- msg
	}()
	// Stopped on return, so that it is not kept until it would fire.
	timeout := time.NewTimer(s.cfg.HelloTimeout)
	defer timeout.Stop()
	select {
	case msg := <-got:
		if msg.GetHello() == nil {
			return nil, cperr.Status(s.cfg.Logger, cperr.Invalid("the first message on the stream must be Hello"))
		}
		return msg.GetHello(), nil
	case err := <-failed:
		return nil, err
	case <-timeout.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "no Hello within %s", s.cfg.HelloTimeout)
	}
}

// read hands what the agent sends to handle until the stream ends.
func (s *service) read(as *agentStream) error {
	for {
		msg, err := as.grpc.Recv()
		if err != nil {
			if cause := as.sess.Err(); cause != nil {
				// Closed here: the agent ended its side when asked, or its
				// connection was cut off.
				return closeStatus(cause)
			}
			// Nothing more to send on it: not even EndStream.
			as.sess.StopWriting(errors.New("stream ended by the agent"))
			return nil // close records it
		}
		if err := s.handle(as, msg); err != nil {
			return err
		}
	}
}

// handle acts on one message of the agent's; an error ends the stream.
func (s *service) handle(as *agentStream, msg *tenantagentv1.AgentMessage) error {
	ctx, sess := as.ctx, as.sess
	sess.Touch(time.Now())
	if err := checkMessage(msg); err != nil {
		return s.refuse(as.id, err)
	}
	switch body := msg.GetBody().(type) {
	case *tenantagentv1.AgentMessage_Health:
		if err := s.cfg.Fleet.CheckSession(sess); err != nil {
			return status.Error(codes.PermissionDenied, err.Error())
		}
		s.cfg.Reconciler.Reconcile(ctx, s.cfg.Fleet.Health(sess, body.Health))
	case *tenantagentv1.AgentMessage_Ack:
		s.cfg.Dispatcher.HandleAck(ctx, sess, body.Ack)
	case *tenantagentv1.AgentMessage_Progress:
		s.cfg.Dispatcher.HandleProgress(ctx, sess, body.Progress)
	case *tenantagentv1.AgentMessage_Result:
		s.cfg.Dispatcher.HandleResult(ctx, sess, body.Result)
	case *tenantagentv1.AgentMessage_Hello:
		return cperr.Status(s.cfg.Logger, cperr.Invalid("Hello may be sent only once per stream"))
	default:
		return cperr.Status(s.cfg.Logger, cperr.Invalid("empty or unknown agent message"))
	}
	return nil
}

// refuse ends a stream whose message broke a limit: logged once, here,
// with the error's short quote of the value (never the value whole), and
// returned to the agent as InvalidArgument. Nothing of the message is
// kept.
func (s *service) refuse(id identity.Identity, err error) error {
	s.cfg.Logger.Warn("agent message refused; stream ended", "agent", id.ID, "error", err)
	return cperr.Status(s.cfg.Logger, err)
}

func closeStatus(cause error) error {
	switch {
	case errors.Is(cause, session.ErrSlow):
		return status.Error(codes.ResourceExhausted, cause.Error())
	case errors.Is(cause, session.ErrReplaced):
		return status.Error(codes.Aborted, cause.Error())
	case errors.Is(cause, ErrShuttingDown), errors.Is(cause, dispatch.ErrNotRecorded):
		return status.Error(codes.Unavailable, cause.Error())
	}
	return status.Error(codes.PermissionDenied, cause.Error())
}

// ErrShuttingDown closes sessions when the control plane stops.
var ErrShuttingDown = errors.New("control plane shutting down; reconnect")

func serialOf(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	cert, err := mtls.PeerCertificate(p.AuthInfo)
	if err != nil {
		return ""
	}
	return identity.SerialHex(cert)
}
