package channel

import (
	"context"
	"fmt"
	"log/slog"
	"math/bits"
	"net"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// handshakes wraps the transport credentials to remember the last client
// handshake's error: gRPC turns it into a string inside an Unavailable
// status, and we want its type to say which check failed, briefly.
type handshakes struct {
	credentials.TransportCredentials
	state *handshakeState
}

type handshakeState struct {
	mu   sync.Mutex
	last error
}

func watchHandshakes(c credentials.TransportCredentials) *handshakes {
	return &handshakes{TransportCredentials: c, state: &handshakeState{}}
}

func (h *handshakes) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, info, err := h.TransportCredentials.ClientHandshake(ctx, authority, conn)
	h.state.mu.Lock()
	h.state.last = err
	h.state.mu.Unlock()
	return c, info, err
}

func (h *handshakes) Clone() credentials.TransportCredentials {
	return &handshakes{TransportCredentials: h.TransportCredentials.Clone(), state: h.state}
}

// lastError is the error of the latest handshake, nil if it succeeded.
func (h *handshakes) lastError() error {
	h.state.mu.Lock()
	defer h.state.mu.Unlock()
	return h.state.last
}

// Describe says in one line why a dial or stream failed, for people: a
// control plane certificate this agent does not trust, this agent refused
// by the control plane (in the handshake or, denied, at the call), or the
// error as it is. handshakeErr is the client handshake's own error, if
// one failed; ca is the --ca file.
func Describe(err, handshakeErr error, ca string) string {
	st, isStatus := status.FromError(err)
	if isStatus && st.Code() != codes.Unavailable {
		handshakeErr = nil // from an earlier attempt: this one got through
	}
	if r, ok := mtls.ServerCertRefusal(handshakeErr); ok {
		switch r.Against {
		case mtls.AgainstServerName:
			return "control plane certificate does not match --server-name: " + r.Reason
		case mtls.AgainstServerID:
			return "control plane certificate does not carry --control-plane-id: " + r.Reason
		}
		return fmt.Sprintf("control plane certificate not trusted by --ca %s: %s", ca, r.Reason)
	}
	if !isStatus {
		return err.Error()
	}
	msg := st.Message()
	switch {
	case st.Code() == codes.PermissionDenied:
		return "the control plane refused this agent: " + msg
	case st.Code() == codes.Unavailable && strings.Contains(msg, "remote error: tls: "):
		// In TLS 1.3 the server checks our certificate after our side of
		// the handshake is done: its alert arrives on the first read.
		_, alert, _ := strings.Cut(msg, "remote error: tls: ")
		return "the control plane refused this agent's certificate in the handshake (" + strings.TrimRight(alert, `"`) + "): check --cert and --key, and that the control plane trusts their CA"
	}
	return st.Code().String() + ": " + msg
}

// redials logs why the stream to the control plane failed without
// flooding: per control plane address, the first failure with a given
// reason at warn, then at warn again only when the count of consecutive
// failures reaches a power of two (once per doubling of the backoff, then
// ever more rarely at its cap), and at debug in between. Counting per
// address keeps two dead replicas failing in turn (each with its own
// reason) from warning at every attempt.
type redials struct {
	logger *slog.Logger
	// byAddr holds at most one entry per configured address.
	byAddr map[string]*redialCount
}

type redialCount struct {
	reason string
	n      int
}

// failed logs one failed attempt on addr.
func (r *redials) failed(addr, msg, reason string, args ...any) {
	if r.byAddr == nil {
		r.byAddr = map[string]*redialCount{}
	}
	c := r.byAddr[addr]
	if c == nil {
		c = &redialCount{}
		r.byAddr[addr] = c
	}
	if reason != c.reason {
		c.reason, c.n = reason, 0
	}
	c.n++
	level := slog.LevelDebug
	if bits.OnesCount(uint(c.n)) == 1 {
		level = slog.LevelWarn
	}
	r.logger.Log(context.Background(), level, msg, append([]any{"reason", reason, "failures", c.n}, args...)...)
}

// worked forgets the failures: the stream came up.
func (r *redials) worked() { r.byAddr = nil }
