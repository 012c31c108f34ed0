package docker

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Pull failures are classified by their type, never by their text: a
// message full of "not found" and "unauthorized" decides nothing.
func TestClassifyByType(t *testing.T) {
	dial := func(err error) error {
		return &url.Error{Op: "Get", URL: "https://registry.example/v2/", Err: &net.OpError{Op: "dial", Net: "tcp", Err: err}}
	}
	for name, c := range map[string]struct {
		err  error
		want verdict
	}{
		"Engine: not found":                                 {fmt.Errorf("pull: %w", cerrdefs.ErrNotFound), permanentErr},
		"Engine: unauthorized":                              {cerrdefs.ErrUnauthenticated, permanentErr},
		"Engine: permission denied":                         {cerrdefs.ErrPermissionDenied, permanentErr},
		"Engine: invalid argument":                          {cerrdefs.ErrInvalidArgument, permanentErr},
		"Engine: unavailable":                               {cerrdefs.ErrUnavailable, transientErr},
		"Engine: internal (20.10 says 500 for most things)": {cerrdefs.ErrInternal, undecided},
		"DNS failure":                                       {dial(&net.DNSError{Err: "no such host", Name: "registry.example", IsNotFound: true}), transientErr},
		"connection refused":                                {dial(os.NewSyscallError("connect", syscall.ECONNREFUSED)), transientErr},
		"connection reset":                                  {dial(syscall.ECONNRESET), transientErr},
		"registry: UNAUTHORIZED":                            {&transport.Error{StatusCode: 401, Errors: []transport.Diagnostic{{Code: transport.UnauthorizedErrorCode}}}, permanentErr},
		"registry: DENIED":                                  {&transport.Error{StatusCode: 403, Errors: []transport.Diagnostic{{Code: transport.DeniedErrorCode}}}, permanentErr},
		"registry: MANIFEST_UNKNOWN":                        {&transport.Error{StatusCode: 404, Errors: []transport.Diagnostic{{Code: transport.ManifestUnknownErrorCode}}}, permanentErr},
		"registry: HEAD 404, no body":                       {&transport.Error{StatusCode: 404}, permanentErr},
		"registry: HEAD 401, no body":                       {&transport.Error{StatusCode: 401}, permanentErr},
		"registry: TOOMANYREQUESTS":                         {&transport.Error{StatusCode: 429, Errors: []transport.Diagnostic{{Code: transport.TooManyRequestsErrorCode}}}, transientErr},
		"registry: 503":                                     {&transport.Error{StatusCode: 503}, transientErr},
		"stream error with a code":                          {&streamError{Code: 401, Message: "x"}, permanentErr},
		"stream error without a code":                       {&streamError{Message: "unexpected EOF"}, undecided},
		"text alone":                                        {errors.New("manifest unknown: not found; unauthorized: denied; no such host"), undecided},
	} {
		if got, reason := classify(c.err); got != c.want {
			t.Errorf("%s: classify(%v) = %v (%s), want %v", name, c.err, got, reason, c.want)
		}
	}
}

func TestPullErrorSaysWhy(t *testing.T) {
	err := error(&PullError{Ref: "r@sha256:x", Err: cerrdefs.ErrNotFound, Reason: "the registry has no such manifest", Attempts: 1})
	if got := err.Error(); got != "pull r@sha256:x: not found (permanent after 1 attempt(s): the registry has no such manifest)" {
		t.Errorf("message %q", got)
	}
	if !cerrdefs.IsNotFound(err) {
		t.Errorf("the cause is not kept")
	}
}
