package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes, documented in tactl --help.
const (
	// ExitOK means everything the command did or followed succeeded.
	ExitOK = 0
	// ExitFailed means a command failed, rolled back, was partial,
	// expired, was canceled or superseded, a rollout halted or was
	// aborted, --timeout passed, or the control plane refused the request
	// for another reason than those of 2 and 3.
	ExitFailed = 1
	// ExitUsage means the command line was wrong: an unknown command or
	// flag, a missing argument, a bad value (also when the control plane
	// says InvalidArgument).
	ExitUsage = 2
	// ExitConn means tactl could not reach or authenticate to the control
	// plane: nothing listening, a TLS failure, certificate files missing,
	// Unavailable, Unauthenticated or PermissionDenied.
	ExitConn = 3
	// ExitInterrupted means Ctrl-C: the work goes on on the server.
	ExitInterrupted = 130
)

const exitCodesHelp = `Exit codes:
  0    everything succeeded (held tenants a rollout skipped and tenants
       whose agent is offline are reported, and do not fail it)
  1    a command failed, rolled back, was partial, expired, was canceled or
       superseded; a rollout halted or was aborted; --timeout passed (the
       work goes on); or the control plane refused the request (NotFound,
       FailedPrecondition, ...)
  2    usage: an unknown command or flag, a missing argument, a bad value
       (also the control plane's InvalidArgument)
  3    connection or authentication: nothing listening, a TLS failure,
       certificate files missing, Unavailable, Unauthenticated,
       PermissionDenied
  130  interrupted (Ctrl-C): the work goes on on the control plane; tactl
       prints how to re-attach`

// exitError is an error with its exit code; its message is printed as one
// line on stderr.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usagef is an error of exit code 2.
func usagef(format string, args ...any) error {
	return &exitError{code: ExitUsage, msg: fmt.Sprintf(format, args...)}
}

// connf is an error of exit code 3.
func connf(format string, args ...any) error {
	return &exitError{code: ExitConn, msg: fmt.Sprintf(format, args...)}
}

// failf is an error of exit code 1.
func failf(format string, args ...any) error {
	return &exitError{code: ExitFailed, msg: fmt.Sprintf(format, args...)}
}

// silentExit ends the command with code and prints nothing more: what
// went wrong is already on the screen.
type silentExit int

func (e silentExit) Error() string { return fmt.Sprintf("exit %d", int(e)) }

// rpcError turns a gRPC error into an exitError with one readable line.
// dial explains handshake failures the status message only hints at.
func rpcError(err error, what string, d *dialer) error {
	var ee *exitError
	if errors.As(err, &ee) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return failf("%s: gave up waiting (--timeout)", what)
	}
	st, ok := status.FromError(err)
	if !ok {
		return failf("%s: %v", what, err)
	}
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		return connf("%s", d.explainUnavailable(msg))
	case codes.Unauthenticated:
		return connf("%s: not authenticated: %s", what, msg)
	case codes.PermissionDenied:
		return connf("%s: permission denied: %s", what, msg)
	case codes.InvalidArgument:
		return usagef("%s: %s", what, msg)
	case codes.DeadlineExceeded:
		return failf("%s: gave up waiting (--timeout)", what)
	case codes.Canceled:
		return failf("%s: canceled", what)
	case codes.Unimplemented:
		return failf("%s: the control plane at %s does not serve this call yet (Unimplemented): %s", what, d.addr, msg)
	}
	return failf("%s: %s (%s)", what, msg, codeName(st.Code()))
}

func codeName(c codes.Code) string {
	s := c.String()
	// codes.Code prints as "NotFound" already; keep it.
	return strings.TrimSpace(s)
}
