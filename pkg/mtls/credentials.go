package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"google.golang.org/grpc/credentials"

	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

// PeerCheck decides whether a verified peer may connect at all. It runs
// during the handshake, so a peer it refuses learns nothing but a TLS
// alert: use it for what must never reach a call (the control plane
// refuses denied peers at the call instead, with the reason).
type PeerCheck func(id identity.Identity, cert *x509.Certificate) error

// ServerOptions configure ServerCredentials.
type ServerOptions struct {
	// TrustDomain is the only SPIFFE trust domain accepted from clients.
	TrustDomain string
	// Check, if set, may refuse a verified peer.
	Check PeerCheck
	// Track, if set, is given every accepted connection with its verified
	// peer, and returns the connection gRPC will use (one it can close on
	// revocation).
	Track ConnTracker
	// Logger receives refused handshakes with the reason, at most one line
	// per peer address and reason per RefusalLogInterval (with a count of
	// the rest).
	Logger *slog.Logger
}

// ConnTracker follows an accepted connection of a verified peer.
type ConnTracker func(conn net.Conn, id identity.Identity, cert *x509.Certificate) net.Conn

// ServerCredentials returns gRPC server credentials that require a client
// certificate verified against the current CA bundle and carrying exactly
// one SPIFFE ID of the trust domain. Each handshake uses the files as they
// are now. Every failed handshake is logged (rate-limited), whether
// crypto/tls refused the chain, our checks refused the identity, or the
// client refused us.
func ServerCredentials(src *Source, opts ServerOptions) credentials.TransportCredentials {
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("component", "mtls")
	verifyPeer := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no client certificate")
		}
		cert := cs.PeerCertificates[0]
		id, err := identity.FromCertificate(cert, opts.TrustDomain)
		if err == nil && opts.Check != nil {
			err = opts.Check(id, cert)
		}
		return err // names the certificate; ServerHandshake logs it
	}
	creds := credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			m := src.Current()
			return &tls.Config{
				MinVersion:       tls.VersionTLS13,
				Certificates:     []tls.Certificate{m.Certificate},
				ClientCAs:        m.Roots,
				ClientAuth:       tls.RequireAndVerifyClientCert,
				VerifyConnection: verifyPeer,
			}, nil
		},
	})
	return &serverCredentials{TransportCredentials: creds, trustDomain: opts.TrustDomain, track: opts.Track,
		refusals: newRefusalLog(logger, RefusalLogInterval)}
}

// serverCredentials logs failed handshakes and hands each connection that
// passed to a ConnTracker, if there is one.
type serverCredentials struct {
	credentials.TransportCredentials
	trustDomain string
	track       ConnTracker
	refusals    *refusalLog
}

func (c *serverCredentials) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		c.refusals.refused(raw.RemoteAddr(), err)
		return conn, info, err
	}
	if c.track == nil {
		return conn, info, nil
	}
	cert, err := PeerCertificate(info)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	id, err := identity.FromCertificate(cert, c.trustDomain)
	if err != nil { // verifyPeer already refused these; never reached
		conn.Close()
		return nil, nil, err
	}
	return c.track(conn, id, cert), info, nil
}

func (c *serverCredentials) Clone() credentials.TransportCredentials {
	return &serverCredentials{TransportCredentials: c.TransportCredentials.Clone(), trustDomain: c.trustDomain, track: c.track, refusals: c.refusals}
}

// ClientCredentials returns gRPC client credentials that present the
// current certificate and verify the server against the current CA bundle
// and serverName. A reconnect after a rotation uses the new files.
func ClientCredentials(src *Source, serverName string) credentials.TransportCredentials {
	return &clientCredentials{src: src, serverName: serverName}
}

type clientCredentials struct {
	src        *Source
	serverName string
}

func (c *clientCredentials) config() *tls.Config {
	m := c.src.Current()
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{m.Certificate},
		RootCAs:      m.Roots,
		ServerName:   c.serverName,
	}
}

func (c *clientCredentials) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return credentials.NewTLS(c.config()).ClientHandshake(ctx, authority, conn)
}

func (c *clientCredentials) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, fmt.Errorf("mtls: client credentials cannot serve")
}

func (c *clientCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3", ServerName: c.serverName}
}

func (c *clientCredentials) Clone() credentials.TransportCredentials {
	clone := *c
	return &clone
}

func (c *clientCredentials) OverrideServerName(name string) error {
	c.serverName = name
	return nil
}

// PeerCertificate returns the verified leaf certificate of a gRPC peer's
// TLS connection.
func PeerCertificate(info credentials.AuthInfo) (*x509.Certificate, error) {
	tlsInfo, ok := info.(credentials.TLSInfo)
	if !ok {
		return nil, errors.New("connection is not TLS")
	}
	if len(tlsInfo.State.VerifiedChains) == 0 || len(tlsInfo.State.VerifiedChains[0]) == 0 {
		return nil, errors.New("no verified client certificate")
	}
	return tlsInfo.State.VerifiedChains[0][0], nil
}
