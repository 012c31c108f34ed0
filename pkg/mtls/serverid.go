package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"

	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// ClientOptions configure ClientCredentialsWith.
type ClientOptions struct {
	// ServerName is the DNS name the server's certificate must carry.
	ServerName string
	// ServerID, if set, is the SPIFFE ID the server's certificate must
	// carry, as its only SPIFFE ID. A CA that also issues other servers
	// (or tenants) then cannot stand in for the control plane, even with
	// the right DNS name.
	ServerID string
}

// ClientCredentialsWith is ClientCredentials with options: besides the CA
// bundle and the server name, it checks the server's SPIFFE ID when
// opts.ServerID is set.
func ClientCredentialsWith(src *Source, opts ClientOptions) credentials.TransportCredentials {
	base := newClientCredentials(src, opts.ServerName)
	if opts.ServerID == "" {
		return base
	}
	return &serverIDCredentials{clientCredentials: base, serverID: opts.ServerID}
}

// CheckServerID reports whether id can be a ServerID: a SPIFFE ID in
// canonical form, so that comparing strings is comparing IDs.
func CheckServerID(id string) error {
	parsed, err := spiffeid.FromString(id)
	if err != nil {
		return fmt.Errorf("%s is not a SPIFFE ID: %w", limits.Quoted(id), err)
	}
	if parsed.String() != id {
		return fmt.Errorf("%s is not in canonical form (want %q)", limits.Quoted(id), parsed.String())
	}
	return nil
}

// serverIDCredentials adds the SPIFFE ID check to every client handshake.
type serverIDCredentials struct {
	*clientCredentials
	serverID string
}

func (c *serverIDCredentials) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cfg := c.config()
	// VerifyConnection runs after the chain and server name verified, so
	// the ID read here is one the CA vouched for.
	cfg.VerifyConnection = func(cs tls.ConnectionState) error { return verifyServerID(cs, c.serverID) }
	return credentials.NewTLS(cfg).ClientHandshake(ctx, authority, conn)
}

func (c *serverIDCredentials) Clone() credentials.TransportCredentials {
	clone := *c.clientCredentials
	return &serverIDCredentials{clientCredentials: &clone, serverID: c.serverID}
}

// errServerID marks a server certificate without the expected SPIFFE ID.
var errServerID = errors.New("server certificate")

// verifyServerID requires the leaf to carry exactly one SPIFFE ID, want.
func verifyServerID(cs tls.ConnectionState, want string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the server presented no certificate")
	}
	var got []string
	for _, u := range cs.PeerCertificates[0].URIs {
		if u.Scheme == "spiffe" {
			got = append(got, u.String())
		}
	}
	if len(got) == 1 && got[0] == want {
		return nil
	}
	presented := "none"
	if len(got) > 0 {
		for i := range got {
			got[i] = limits.Quoted(got[i])
		}
		presented = strings.Join(got, ", ")
	}
	return fmt.Errorf("%w: want SPIFFE ID %q, presented %s", errServerID, want, presented)
}
