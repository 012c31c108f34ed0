package auth

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"runtime/debug"
	"slices"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	grpcauth "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// Interceptors configures the interceptor chain of a control plane listener.
type Interceptors struct {
	// TrustDomain is the SPIFFE trust domain callers must belong to.
	TrustDomain string
	Policy      *Policy
	// Check, if set, refuses denied peers on every call with
	// PermissionDenied and the reason. The handshake does not refuse
	// them (only unverifiable or foreign certificates), so a denied agent
	// learns why instead of seeing a bare TLS alert.
	Check mtls.PeerCheck
	// Tracker, if set, follows every authorized call so that a denial
	// while it runs ends it (a WatchAgents stream stays open for days).
	Tracker CallTracker
	// Untracked names the methods (full names) whose calls a denial ends
	// by other means, so that the Tracker does not follow them: the agent
	// stream's session is closed by the fleet, and a context tracked for
	// each of thousands of idle streams would cost half a KiB apiece.
	Untracked []string
	// Admit, if set, may refuse an authorized call, e.g. an agent that
	// reconnects too often; it returns a gRPC status error.
	Admit  func(ctx context.Context, id identity.Identity, method string) error
	Logger *slog.Logger
}

// CallTracker ends calls whose peer is revoked while they run: the context
// it returns is canceled with an ErrRevoked cause.
type CallTracker interface {
	TrackCall(ctx context.Context, id identity.Identity, cert *x509.Certificate) (_ context.Context, done func())
}

// ServerOptions returns, outermost first: panic recovery, authentication
// and per-method authorization (and admission), revocation tracking, and
// one log line per finished call (health checks are not logged).
func (c Interceptors) ServerOptions() []grpc.ServerOption {
	logger := c.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("component", "grpc")
	recoveryOpt := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		logger.ErrorContext(ctx, "panic in handler", "panic", p, "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})
	authenticate := c.authenticate(logger)
	// Health checks are not logged. Nor are agent streams: the agent
	// service logs each one's start and end with its cause, and the
	// logging interceptor would keep about 1.5 KiB of fields for every
	// open stream for as long as it lasts (10,000 agents: 15 MiB).
	logged := selector.MatchFunc(func(_ context.Context, call interceptors.CallMeta) bool {
		return call.Service != grpc_health_v1.Health_ServiceDesc.ServiceName && call.FullMethod() != tenantagentv1.AgentService_Connect_FullMethodName
	})
	loggingOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithFieldsFromContext(func(ctx context.Context) logging.Fields {
			if id, ok := identity.FromContext(ctx); ok {
				return logging.Fields{"identity", id.ID}
			}
			return nil
		}),
	}
	slogger := logging.LoggerFunc(func(ctx context.Context, level logging.Level, msg string, fields ...any) {
		logger.Log(ctx, slog.Level(level), msg, fields...)
	})
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(
			recovery.UnaryServerInterceptor(recoveryOpt),
			grpcauth.UnaryServerInterceptor(authenticate),
			c.trackUnary,
			selector.UnaryServerInterceptor(logging.UnaryServerInterceptor(slogger, loggingOpts...), logged),
		),
		grpc.ChainStreamInterceptor(
			recovery.StreamServerInterceptor(recoveryOpt),
			grpcauth.StreamServerInterceptor(authenticate),
			c.trackStream,
			selector.StreamServerInterceptor(logging.StreamServerInterceptor(slogger, loggingOpts...), logged),
		),
	}
}

// authenticate reads the identity from the verified peer certificate,
// refuses calls the identity may not make, over-eager reconnects and
// denied peers, and puts the identity in the context for handlers.
func (c Interceptors) authenticate(logger *slog.Logger) grpcauth.AuthFunc {
	return func(ctx context.Context) (context.Context, error) {
		method, _ := grpc.Method(ctx)
		p, ok := peer.FromContext(ctx)
		if !ok {
			return nil, status.Error(codes.Unauthenticated, "no peer information: a verified client certificate is required")
		}
		cert, err := mtls.PeerCertificate(p.AuthInfo)
		if err != nil {
			return nil, status.Errorf(codes.Unauthenticated, "%v: a verified client certificate is required", err)
		}
		id, err := identity.FromCertificate(cert, c.TrustDomain)
		if err != nil {
			logger.WarnContext(ctx, "call refused", "method", method, "peer", p.Addr, "reason", err)
			return nil, status.Error(codes.Unauthenticated, err.Error())
		}
		if err := c.Policy.Authorize(id, method); err != nil {
			logger.WarnContext(ctx, "call refused", "method", method, "identity", id.ID, "reason", err)
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
		// Admission before the deny list: a denied agent completes its
		// handshake (so it can be told why), and the reconnect limiter is
		// what bounds how often it may come back to hear it again.
		if c.Admit != nil {
			if err := c.Admit(ctx, id, method); err != nil {
				return nil, err // Admit logs, rate-limited: refusals come in floods
			}
		}
		if c.Check != nil {
			if err := c.Check(id, cert); err != nil {
				logger.WarnContext(ctx, "call refused", "method", method, "identity", id.ID, "reason", err)
				return nil, status.Error(codes.PermissionDenied, err.Error())
			}
		}
		return identity.NewContext(ctx, id), nil
	}
}

func (c Interceptors) trackUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !c.tracked(info.FullMethod) {
		return handler(ctx, req)
	}
	ctx, done := c.track(ctx)
	defer done()
	resp, err := handler(ctx, req)
	return resp, revokedStatus(ctx, err)
}

func (c Interceptors) trackStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !c.tracked(info.FullMethod) {
		return handler(srv, ss)
	}
	ctx, done := c.track(ss.Context())
	defer done()
	err := handler(srv, &middleware.WrappedServerStream{ServerStream: ss, WrappedContext: ctx})
	return revokedStatus(ctx, err)
}

func (c Interceptors) tracked(method string) bool {
	return c.Tracker != nil && !slices.Contains(c.Untracked, method)
}

func (c Interceptors) track(ctx context.Context) (context.Context, func()) {
	id, ok := identity.FromContext(ctx)
	p, pok := peer.FromContext(ctx)
	if !ok || !pok {
		return ctx, func() {}
	}
	cert, err := mtls.PeerCertificate(p.AuthInfo)
	if err != nil {
		return ctx, func() {}
	}
	return c.Tracker.TrackCall(ctx, id, cert)
}

// revokedStatus replaces whatever a revoked call's handler returned (a
// cancellation, a closed stream) with the reason it was ended.
func revokedStatus(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, ErrRevoked) {
		return status.Error(codes.PermissionDenied, cause.Error())
	}
	return err
}
