package cperr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
)

func TestStatusMapsKindsInOnePlace(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	cases := []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{Invalid("bad %s", "x"), codes.InvalidArgument, "bad x"},
		{NotFound("no such"), codes.NotFound, "no such"},
		{Precondition("held"), codes.FailedPrecondition, "held"},
		{Aborted("fell behind"), codes.Aborted, "fell behind"},
		{Unavailable("registry down"), codes.Unavailable, "registry down"},
		{fmt.Errorf("command %q: %w", "c-1", store.ErrNotFound), codes.NotFound, `command "c-1": not found`},
		{fmt.Errorf("wrapped: %w", context.Canceled), codes.Canceled, "canceled"},
		{errors.New("disk on fire at /var/secret"), codes.Internal, "internal error; see the control plane's log"},
		{status.Error(codes.Aborted, "as is"), codes.Aborted, "as is"},
		// A last guard: even an error that carries too much is cut.
		{Invalid("%s", strings.Repeat("x", 100<<10)), codes.InvalidArgument, strings.Repeat("x", 1000)},
	}
	for _, tc := range cases {
		st := status.Convert(Status(logger, tc.err))
		if st.Code() != tc.code || !strings.HasPrefix(st.Message(), tc.msg) || len(st.Message()) > 1024 {
			t.Errorf("Status(%.60v) = %v %.80q, want %v %.80q", tc.err, st.Code(), st.Message(), tc.code, tc.msg)
		}
	}
	if Status(logger, nil) != nil {
		t.Error("Status(nil) is not nil")
	}
}

func TestTooLongNamesFieldAndLimitAndQuotesAPrefix(t *testing.T) {
	err := TooLong("hello.hostname", strings.Repeat("h", 2<<20), 253)
	want := `hello.hostname is 2097152 bytes, at most 253: "` + strings.Repeat("h", 64) + `"… (2097152 bytes)`
	if err.Error() != want || KindOf(err) != KindInvalid {
		t.Errorf("TooLong = %q (kind %v), want %q", err, KindOf(err), want)
	}
	if got := TooMany("result.containers", 5000, 1000).Error(); got != "result.containers has 5000 entries, at most 1000" {
		t.Errorf("TooMany = %q", got)
	}
}
