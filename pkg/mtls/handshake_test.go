package mtls_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// The server's handshake is its own (gRPC's would copy the configuration
// for each connection): a call sees what gRPC's TLS credentials report,
// and a client that does not speak h2 is refused as gRPC refuses it.
func TestServerHandshakeReportsWhatGRPCWould(t *testing.T) {
	p := pkitest.New(t, "acme")
	logs := &testlog.Buffer{}
	infos := make(chan credentials.AuthInfo, 2)
	srv := grpc.NewServer(grpc.Creds(mtls.ServerCredentials(p.Source(t, "controlplane"), mtls.ServerOptions{TrustDomain: pkitest.TrustDomain, Logger: logs.Logger(t, "cp")})),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if pr, ok := peer.FromContext(ctx); ok {
				infos <- pr.AuthInfo
			}
			return handler(ctx, req)
		}))
	addr := serveHealth(t, srv)

	for range 2 { // each connection its own
		if err := healthOnce(t, addr, p.Source(t, "agent-acme")); err != nil {
			t.Fatal(err)
		}
		info := <-infos
		if info.AuthType() != "tls" {
			t.Errorf("auth type %q, want tls", info.AuthType())
		}
		if err := credentials.CheckSecurityLevel(info, credentials.PrivacyAndIntegrity); err != nil {
			t.Errorf("security level: %v", err)
		}
		cs, ok := mtls.ConnectionState(info)
		if !ok || cs.NegotiatedProtocol != "h2" || cs.Version != tls.VersionTLS13 {
			t.Errorf("connection state %v (%v): want h2 over TLS 1.3", ok, cs.NegotiatedProtocol)
		}
		if cert, err := mtls.PeerCertificate(info); err != nil || len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://molecule.local/tenant/acme" {
			t.Errorf("peer certificate: %v; want agent-acme's (spiffe://molecule.local/tenant/acme)", err)
		}
	}

	// A TLS client with a good certificate but no ALPN: refused, logged.
	files := p.Files("agent-acme")
	pair, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	caPEM, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots.AppendCertsFromPEM(caPEM)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots, ServerName: "localhost"})
	if err == nil {
		// TLS 1.3: the client finishes before the server has checked it;
		// the server's refusal shows as the connection closing.
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Fatal("a client without ALPN h2 was served")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "ALPN protocol h2") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "handshake refused") || !strings.Contains(logs.String(), "ALPN protocol h2") {
		t.Errorf("the refusal is not logged with its reason:\n%s", logs.String())
	}
}
