package mtls

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"

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
	// Resume, if set, decides whether a client may resume its session. A
	// session ticket carries the client certificate verified at the full
	// handshake; crypto/tls checks again only that it has not expired and
	// that its chain still ends at a CA of the current bundle. What else
	// may have changed since (a denial) is for Resume. A refused client
	// gets a full handshake instead, judged like any other (and by Check):
	// refusing the handshake itself would not do, because a TLS 1.3
	// client has finished its side by then, keeps its ticket and would
	// come back with it.
	Resume PeerCheck
	// TicketKeys, if set, returns the session ticket keys: the first
	// encrypts new tickets, all decrypt. Keys kept across restarts and
	// shared by replicas let agents resume after a restart or on another
	// replica. Nil leaves crypto/tls's own keys, which die with the
	// process.
	TicketKeys func() [][32]byte
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
	// VerifyConnection runs on resumed handshakes too, with the
	// certificate from the ticket.
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
	configs := &serverConfigs{src: src, keys: opts.TicketKeys, verify: verifyPeer}
	if opts.Resume != nil {
		configs.resume = func(der []byte) bool {
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				return false
			}
			id, err := identity.FromCertificate(cert, opts.TrustDomain)
			return err == nil && opts.Resume(id, cert) == nil
		}
	}
	base := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: alpnH2,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return configs.current(), nil
		},
	}
	// gRPC's own credentials serve Info and the client side; the handshake
	// is ours (ServerHandshake).
	return &serverCredentials{TransportCredentials: credentials.NewTLS(base), base: base, trustDomain: opts.TrustDomain, track: opts.Track,
		refusals: newRefusalLog(logger, RefusalLogInterval)}
}

// alpnH2 is the one application protocol gRPC speaks over TLS.
var alpnH2 = []string{"h2"}

// serverConfigs is the tls.Config of the current files and ticket keys,
// built again only when either changes: handshakes share it.
type serverConfigs struct {
	src    *Source
	keys   func() [][32]byte
	verify func(tls.ConnectionState) error
	// resume, if set, decides on the leaf certificate (DER) in a ticket
	// whether its session may be resumed.
	resume func(der []byte) bool

	mu       sync.Mutex
	material *Material
	ticket   [][32]byte
	config   *tls.Config
}

func (c *serverConfigs) current() *tls.Config {
	m := c.src.Current()
	var keys [][32]byte
	if c.keys != nil {
		keys = c.keys()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.config != nil && m == c.material && slices.Equal(keys, c.ticket) {
		return c.config
	}
	cfg := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		NextProtos:       alpnH2,
		Certificates:     []tls.Certificate{m.Certificate},
		ClientCAs:        m.Roots,
		ClientAuth:       tls.RequireAndVerifyClientCert,
		VerifyConnection: c.verify,
	}
	if len(keys) > 0 {
		cfg.SetSessionTicketKeys(keys)
	}
	if c.resume != nil {
		cfg.WrapSession, cfg.UnwrapSession = c.wrap(cfg), c.unwrap(cfg)
	}
	c.material, c.ticket, c.config = m, keys, cfg
	return cfg
}

// ticketPeer marks the entry of SessionState.Extra that holds the client's
// leaf certificate: crypto/tls keeps the certificates in the ticket, but
// not where a Config hook can read them.
const ticketPeer = "molecule-ai/mtls/peer/1:"

// wrap adds the client's leaf certificate to the ticket, for unwrap.
func (c *serverConfigs) wrap(cfg *tls.Config) func(tls.ConnectionState, *tls.SessionState) ([]byte, error) {
	return func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		ss.Extra = slices.DeleteFunc(ss.Extra, func(e []byte) bool { return bytes.HasPrefix(e, []byte(ticketPeer)) })
		if len(cs.PeerCertificates) > 0 {
			ss.Extra = append(ss.Extra, append([]byte(ticketPeer), cs.PeerCertificates[0].Raw...))
		}
		return cfg.EncryptTicket(cs, ss)
	}
}

// unwrap resumes a ticket's session only if resume allows its client; a
// ticket without the certificate (from before wrap) is not resumed.
func (c *serverConfigs) unwrap(cfg *tls.Config) func([]byte, tls.ConnectionState) (*tls.SessionState, error) {
	return func(ticket []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ss, err := cfg.DecryptTicket(ticket, cs)
		if err != nil || ss == nil {
			return nil, err
		}
		for _, e := range ss.Extra {
			if der, ok := bytes.CutPrefix(e, []byte(ticketPeer)); ok && c.resume(der) {
				return ss, nil
			}
		}
		return nil, nil // a full handshake
	}
}

// serverCredentials runs the server's handshakes, logs failed ones and
// hands each connection that passed to a ConnTracker, if there is one.
type serverCredentials struct {
	credentials.TransportCredentials
	base        *tls.Config
	trustDomain string
	track       ConnTracker
	refusals    *refusalLog
}

// ServerHandshake is gRPC's TLS server handshake without its copy of the
// configuration: gRPC's credentials clone whatever GetConfigForClient
// returns, and each connection would keep its clone (half a KiB) for as
// long as it lasts, while the configuration here is shared and already
// has what gRPC adds (ALPN h2; TLS 1.3, so no cipher suites to pick).
func (c *serverCredentials) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tlsConn := tls.Server(raw, c.base)
	info, err := handshake(tlsConn)
	if err != nil {
		tlsConn.Close()
		c.refusals.refused(raw.RemoteAddr(), err)
		return nil, nil, err
	}
	var conn net.Conn = tlsConn
	if c.track != nil {
		cert := info.State.PeerCertificates[0]
		id, err := identity.FromCertificate(cert, c.trustDomain)
		if err != nil { // verifyPeer already refused these; never reached
			conn.Close()
			return nil, nil, err
		}
		conn = c.track(conn, id, cert)
	}
	return conn, serverAuthInfo{TLSInfo: info, conn: conn}, nil
}

// handshake completes conn's handshake and returns what gRPC's TLS
// credentials would report of it (but the SPIFFE ID: the identity package
// reads it from the certificate).
func handshake(conn *tls.Conn) (credentials.TLSInfo, error) {
	if err := conn.Handshake(); err != nil {
		return credentials.TLSInfo{}, err
	}
	cs := conn.ConnectionState()
	if cs.NegotiatedProtocol != alpnH2[0] {
		return credentials.TLSInfo{}, errors.New("the client did not offer ALPN protocol h2, which gRPC over TLS requires")
	}
	if len(cs.PeerCertificates) == 0 { // RequireAndVerifyClientCert: never reached
		return credentials.TLSInfo{}, errors.New("no client certificate")
	}
	return credentials.TLSInfo{State: cs, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

// serverAuthInfo is the AuthInfo of a connection ServerCredentials
// accepted: its TLS state, and the connection, which a handler may close
// (CloseConn).
type serverAuthInfo struct {
	credentials.TLSInfo
	conn net.Conn
}

// CloseConn closes the connection of a peer ServerCredentials accepted
// (info is its peer.AuthInfo), and reports whether it could: what ends a
// call whose handler is blocked sending to a peer that stopped reading.
func CloseConn(info credentials.AuthInfo) bool {
	s, ok := info.(serverAuthInfo)
	if !ok || s.conn == nil {
		return false
	}
	s.conn.Close()
	return true
}

// ConnectionState is the TLS state of a gRPC peer's connection.
func ConnectionState(info credentials.AuthInfo) (tls.ConnectionState, bool) {
	switch v := info.(type) {
	case credentials.TLSInfo:
		return v.State, true
	case serverAuthInfo:
		return v.State, true
	}
	return tls.ConnectionState{}, false
}

func (c *serverCredentials) Clone() credentials.TransportCredentials {
	return &serverCredentials{TransportCredentials: c.TransportCredentials.Clone(), base: c.base, trustDomain: c.trustDomain, track: c.track, refusals: c.refusals}
}

// ClientCredentials returns gRPC client credentials that present the
// current certificate and verify the server against the current CA bundle
// and serverName. A reconnect after a rotation uses the new files.
// Handshakes share one session cache, so a reconnect resumes the last
// session (no certificate verified or signed on either side) when the
// server still has its ticket key.
func ClientCredentials(src *Source, serverName string) credentials.TransportCredentials {
	return newClientCredentials(src, serverName)
}

// sessionCacheSize holds a ticket per server name (crypto/tls's cache
// key), a few more than a client uses.
const sessionCacheSize = 8

type clientCredentials struct {
	src        *Source
	serverName string
	// sessions is shared by clones: they are the same client.
	sessions *sessionCache
}

// sessionCache is the session cache of one Material: a ticket carries
// the certificate of the handshake it came from, so after a rotation the
// sessions of the old certificate are dropped rather than resumed.
type sessionCache struct {
	mu       sync.Mutex
	material *Material
	cache    tls.ClientSessionCache
}

func (s *sessionCache) of(m *Material) tls.ClientSessionCache {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.material != m {
		s.material, s.cache = m, tls.NewLRUClientSessionCache(sessionCacheSize)
	}
	return s.cache
}

func newClientCredentials(src *Source, serverName string) *clientCredentials {
	return &clientCredentials{src: src, serverName: serverName, sessions: &sessionCache{}}
}

func (c *clientCredentials) config() *tls.Config {
	m := c.src.Current()
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{m.Certificate},
		RootCAs:            m.Roots,
		ServerName:         c.serverName,
		ClientSessionCache: c.sessions.of(m),
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
	state, ok := ConnectionState(info)
	if !ok {
		return nil, errors.New("connection is not TLS")
	}
	if len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return nil, errors.New("no verified client certificate")
	}
	return state.VerifiedChains[0][0], nil
}
