package mtls_test

import (
	"context"
	"crypto/x509"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/molecule-ai/tenant-agent/certs/pki"
	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// A client certificate from another CA fails in crypto/tls, before our
// own checks run: the server still logs it, with the reason, once per
// peer address however often the client redials.
func TestServerLogsRefusedHandshakesRateLimited(t *testing.T) {
	p := pkitest.New(t, "acme")
	logs := &testlog.Buffer{}
	files := p.Files("controlplane")
	var tracked atomic.Int32
	srv := grpc.NewServer(grpc.Creds(mtls.ServerCredentials(p.Source(t, "controlplane"), mtls.ServerOptions{TrustDomain: pkitest.TrustDomain, Logger: logs.Logger(t, "cp"),
		Track: func(c net.Conn, _ identity.Identity, _ *x509.Certificate) net.Conn { tracked.Add(1); return c }})))
	addr := serveHealth(t, srv)

	otherCA, err := pki.NewCA(pkitest.TrustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	stranger, _ := pkitest.IssueWith(t, otherCA, p.Dir, "stranger", pki.Leaf{SPIFFEID: "spiffe://molecule.local/tenant/acme", Client: true})
	strangerSrc, err := mtls.NewSource(mtls.Files{Cert: stranger.Cert, Key: stranger.Key, CA: files.CA}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := healthOnce(t, addr, strangerSrc); err == nil {
			t.Fatal("a certificate from another CA was accepted")
		}
	}
	lines := strings.Count(logs.String(), "handshake refused")
	if lines != 1 || !strings.Contains(logs.String(), "peer=127.0.0.1") || !strings.Contains(logs.String(), "unknown authority") {
		t.Errorf("want one line for five refusals, naming the peer and the reason; got %d:\n%s", lines, logs.String())
	}
	// Track still sees every accepted connection.
	if err := healthOnce(t, addr, p.Source(t, "agent-acme")); err != nil || tracked.Load() != 1 {
		t.Errorf("a good client: %v, tracked %d connections; want 1", err, tracked.Load())
	}
}

func healthOnce(t *testing.T, addr string, src *mtls.Source) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(mtls.ClientCredentials(src, "localhost")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}
