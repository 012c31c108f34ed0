package auth

import (
	"context"
	"log/slog"
	"runtime/debug"

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

	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// Interceptors configures the interceptor chain of a control plane listener.
type Interceptors struct {
	// TrustDomain is the SPIFFE trust domain callers must belong to.
	TrustDomain string
	Policy      *Policy
	// Check, if set, refuses denied peers on every call, not only at the
	// handshake, so a denial also stops a connection already open.
	Check  mtls.PeerCheck
	Logger *slog.Logger
}

// ServerOptions returns, outermost first: panic recovery, authentication
// and per-method authorization, and one log line per finished call (health
// checks are not logged).
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
	notHealth := selector.MatchFunc(func(_ context.Context, call interceptors.CallMeta) bool {
		return call.Service != grpc_health_v1.Health_ServiceDesc.ServiceName
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
			selector.UnaryServerInterceptor(logging.UnaryServerInterceptor(slogger, loggingOpts...), notHealth),
		),
		grpc.ChainStreamInterceptor(
			recovery.StreamServerInterceptor(recoveryOpt),
			grpcauth.StreamServerInterceptor(authenticate),
			selector.StreamServerInterceptor(logging.StreamServerInterceptor(slogger, loggingOpts...), notHealth),
		),
	}
}

// authenticate reads the identity from the verified peer certificate,
// refuses denied peers and calls the identity may not make, and puts the
// identity in the context for handlers.
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
		if c.Check != nil {
			if err := c.Check(id, cert); err != nil {
				logger.WarnContext(ctx, "call refused", "method", method, "identity", id.ID, "reason", err)
				return nil, status.Error(codes.PermissionDenied, err.Error())
			}
		}
		if err := c.Policy.Authorize(id, method); err != nil {
			logger.WarnContext(ctx, "call refused", "method", method, "identity", id.ID, "reason", err)
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
		return identity.NewContext(ctx, id), nil
	}
}
