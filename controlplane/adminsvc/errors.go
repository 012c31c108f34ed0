package adminsvc

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
)

// toStatus is the one place errors become gRPC status codes. Errors with
// no known kind are logged and reported as Internal without their text, so
// nothing about the store leaks to callers.
func toStatus(logger *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch cperr.KindOf(err) {
	case cperr.KindInvalid:
		return status.Error(codes.InvalidArgument, err.Error())
	case cperr.KindNotFound:
		return status.Error(codes.NotFound, err.Error())
	case cperr.KindPrecondition:
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	}
	logger.Error("internal error", "error", err)
	return status.Error(codes.Internal, "internal error; see the control plane's log")
}
