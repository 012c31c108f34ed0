package channel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// Probe dials the control plane once, as Run would: the mTLS handshake,
// then a stream the control plane admits or refuses. The stream is closed
// before any Hello, so nothing is registered and a running agent's session
// is left alone. It returns nil when the stream was admitted, else an
// error saying why in one line (see Describe); ca is the --ca file. With
// several addresses (see ParseAddrs) it probes each, in the order given,
// and fails naming every one that failed: a replica the agent cannot
// reach is worth knowing before it is the only one left.
func Probe(ctx context.Context, addr string, creds credentials.TransportCredentials, ca string) error {
	addrs, err := ParseAddrs(addr)
	if err != nil {
		return err
	}
	var failed []string
	for _, a := range addrs {
		if err := probe(ctx, a, creds, ca); err != nil {
			if len(addrs) == 1 {
				return err
			}
			failed = append(failed, a+": "+err.Error())
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d addresses failed: %s", len(failed), len(addrs), strings.Join(failed, "; "))
	}
	return nil
}

// probe is Probe on one address.
func probe(ctx context.Context, addr string, creds credentials.TransportCredentials, ca string) error {
	addrs, err := resolveEntry(ctx, net.DefaultResolver.LookupHost, addr, "")
	if err != nil {
		return err
	}
	watched := watchHandshakes(creds)
	conn, err := clientFor(addr, addrs, watched)
	if err != nil {
		return err
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
