package channel

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// Probe dials the control plane once, as Run would: the mTLS handshake,
// then a stream the control plane admits or refuses. The stream is closed
// before any Hello, so nothing is registered and a running agent's session
// is left alone. It returns nil when the stream was admitted, else an
// error saying why in one line (see Describe); ca is the --ca file.
func Probe(ctx context.Context, addr string, creds credentials.TransportCredentials, ca string) error {
	watched := watchHandshakes(creds)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(watched))
	if err != nil {
		return fmt.Errorf("control plane address %q: %w", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := tenantagentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err == nil {
		err = stream.CloseSend()
	}
	if err == nil {
		_, err = stream.Recv()
	}
	if admitted(err) {
		return nil
	}
	return errors.New(Describe(err, watched.lastError(), ca))
}

// admitted reports whether a stream closed before Hello got past the
// handshake, authentication, the deny list and admission: the service
// itself then ends it (io.EOF, Unknown, InvalidArgument, ...).
func admitted(err error) bool {
	if err == nil || errors.Is(err, io.EOF) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.PermissionDenied, codes.Unauthenticated, codes.ResourceExhausted, codes.Unimplemented, codes.DeadlineExceeded, codes.Canceled:
		return false
	}
	return true
}
