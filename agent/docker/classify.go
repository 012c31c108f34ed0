package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// PullError is a pull that failed, with whether it was worth retrying.
type PullError struct {
	Ref string
	Err error
	// Transient means the failure may pass (network, registry trouble);
	// otherwise a retry cannot help (no such manifest, refused
	// credentials, a bad reference, a full disk).
	Transient bool
	// Reason says in words why the failure is (not) transient.
	Reason   string
	Attempts int
}

func (e *PullError) Error() string {
	kind := "permanent"
	if e.Transient {
		kind = "transient"
	}
	return fmt.Sprintf("pull %s: %v (%s after %d attempt(s): %s)", e.Ref, e.Err, kind, e.Attempts, e.Reason)
}

func (e *PullError) Unwrap() error { return e.Err }

// verdict is what classify makes of an error.
type verdict int

const (
	// undecided: the error carries no type that says (the Engine 20.10
	// answers HTTP 500 for refused credentials and for an unreachable
	// registry alike); the registry itself is asked (Engine.ask).
	undecided verdict = iota
	transientErr
	permanentErr
)

// streamError is an error the Engine wrote into the pull stream once the
// pull had started (a download that broke off, a layer that failed to
// verify). The Engine seldom gives it a code, so the registry decides.
type streamError struct {
	Code    int
	Message string
}

func (e *streamError) Error() string { return e.Message }

const credentialsHint = "; check the agent's --registry-credentials"

// classify decides from an error's type alone: errdefs types (the Engine's
// HTTP status, mapped by its client), the registry's own error codes (the
// agent's manifest requests), and Go's network errors. Context errors are
// the caller's to handle.
func classify(err error) (verdict, string) {
	var se *streamError
	if errors.As(err, &se) {
		return classifyStatus(se.Code) // without a code: undecided
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return classifyRegistry(te)
	}
	switch {
	case cerrdefs.IsUnauthorized(err):
		return permanentErr, "the registry refused the credentials" + credentialsHint
	case cerrdefs.IsPermissionDenied(err):
		return permanentErr, "the registry denied access"
	case cerrdefs.IsNotFound(err):
		return permanentErr, "the registry has no such repository or manifest"
	case cerrdefs.IsInvalidArgument(err), cerrdefs.IsFailedPrecondition(err), cerrdefs.IsNotImplemented(err):
		return permanentErr, "the Engine refused the request"
	case cerrdefs.IsUnavailable(err), cerrdefs.IsResourceExhausted(err), cerrdefs.IsDeadlineExceeded(err), cerrdefs.IsAborted(err), cerrdefs.IsConflict(err):
		return transientErr, "the Engine or registry is busy or unavailable"
	}
	var netErr net.Error
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		return transientErr, "the registry's name did not resolve (DNS may recover)"
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return transientErr, "the registry could not be reached"
	case errors.As(err, &netErr), errors.Is(err, io.ErrUnexpectedEOF):
		return transientErr, "a network error"
	}
	return undecided, ""
}

// classifyRegistry reads a registry's answer: its error codes first, then
// the HTTP status.
func classifyRegistry(te *transport.Error) (verdict, string) {
	for _, d := range te.Errors {
		switch d.Code {
		case transport.UnauthorizedErrorCode:
			return permanentErr, "the registry refused the credentials (UNAUTHORIZED)" + credentialsHint
		case transport.DeniedErrorCode:
			return permanentErr, "the registry denied access (DENIED)"
		case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
			return permanentErr, fmt.Sprintf("the registry has no such manifest (%s)", d.Code)
		case transport.NameInvalidErrorCode, transport.DigestInvalidErrorCode, transport.UnsupportedErrorCode:
			return permanentErr, fmt.Sprintf("the registry refused the reference (%s)", d.Code)
		case transport.TooManyRequestsErrorCode, transport.UnavailableErrorCode:
			return transientErr, fmt.Sprintf("the registry is busy (%s)", d.Code)
		}
	}
	return classifyStatus(te.StatusCode)
}

func classifyStatus(code int) (verdict, string) {
	switch {
	case code == http.StatusUnauthorized:
		return permanentErr, "the registry refused the credentials (HTTP 401)" + credentialsHint
	case code == http.StatusForbidden:
		return permanentErr, "the registry denied access (HTTP 403)"
	case code == http.StatusNotFound:
		return permanentErr, "the registry has no such manifest (HTTP 404)"
	case code == http.StatusTooManyRequests || code == http.StatusRequestTimeout || code >= 500:
		return transientErr, fmt.Sprintf("the registry is busy or failing (HTTP %d)", code)
	case code >= 400:
		return permanentErr, fmt.Sprintf("the registry refused the request (HTTP %d)", code)
	}
	return undecided, ""
}

// decide classifies a failed pull. When the Engine's error says nothing
// of its cause, the agent asks the registry for the manifest itself, with
// the same credentials, and classifies that answer: the registry answers
// the agent as it answered the Engine (same registry, same credentials).
// If it serves the manifest, the Engine's failure is taken as transient.
func (e *Engine) decide(ctx context.Context, ref string, auth registry.AuthConfig, err error) (bool, string) {
	v, reason := classify(err)
	if v == undecided {
		perr := e.probe(ctx, ref, auth)
		if perr == nil {
			return true, "the registry serves the manifest, so the Engine's failure may pass"
		}
		if v, reason = classify(perr); v == undecided {
			return true, fmt.Sprintf("the cause is unknown (the registry, asked directly: %v)", perr)
		}
		reason = "asked directly, " + reason
	}
	return v == transientErr, reason
}
