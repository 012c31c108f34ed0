package cperr

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// maxMessage caps any message Status builds: a last guard should some
// error text carry more of a caller's input than a short quote.
const maxMessage = limits.Message

// Status is the one place errors become gRPC status errors. Errors with no
// known kind are logged and reported as Internal without their text, so
// nothing about the store leaks to callers. A status error passes through.
func Status(logger *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if code, ok := codeOf(err); ok {
		return status.Error(code, limits.Truncate(err.Error(), maxMessage))
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	}
	logger.Error("internal error", "error", limits.Truncate(err.Error(), maxMessage))
	return status.Error(codes.Internal, "internal error; see the control plane's log")
}

func codeOf(err error) (codes.Code, bool) {
	switch KindOf(err) {
	case KindInvalid:
		return codes.InvalidArgument, true
	case KindNotFound:
		return codes.NotFound, true
	case KindPrecondition:
		return codes.FailedPrecondition, true
	case KindAborted:
		return codes.Aborted, true
	case KindUnavailable:
		return codes.Unavailable, true
	}
	if errors.Is(err, store.ErrNotFound) {
		return codes.NotFound, true
	}
	return codes.OK, false
}
