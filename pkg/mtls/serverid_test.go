package mtls_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/molecule-ai/tenant-agent/certs/pki"
	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// serve runs a gRPC health server on loopback with a server certificate
// carrying spiffeID (none if empty), and returns its address.
func serve(t *testing.T, p *pkitest.PKI, stem, spiffeID string) string {
	t.Helper()
	files, _ := p.Issue(t, stem, pki.Leaf{CommonName: "control plane", SPIFFEID: spiffeID, DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	src, err := mtls.NewSource(files, nil)
	if err != nil {
		t.Fatal(err)
	}
	return serveHealth(t, grpc.NewServer(grpc.Creds(mtls.ServerCredentials(src, mtls.ServerOptions{TrustDomain: pkitest.TrustDomain}))))
}

// serveHealth serves the health service on srv on a loopback port until
// the test ends, and returns its address.
func serveHealth(t *testing.T, srv *grpc.Server) string {
	t.Helper()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func check(t *testing.T, addr string, opts mtls.ClientOptions, src *mtls.Source) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(mtls.ClientCredentialsWith(src, opts)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// With ServerID set, only a server certificate carrying exactly that
// SPIFFE ID is accepted; unset, CA and DNS name are all that is checked.
func TestClientChecksServerID(t *testing.T) {
	p := pkitest.New(t, "acme")
	agent := p.Source(t, "agent-acme")
	const want = "spiffe://molecule.local/controlplane/prod"
	right := serve(t, p, "cp-right", want)
	other := serve(t, p, "cp-other", "spiffe://molecule.local/tenant/evil")
	none := serve(t, p, "cp-none", "")

	if err := check(t, right, mtls.ClientOptions{ServerName: "localhost", ServerID: want}, agent); err != nil {
		t.Errorf("the right ID was refused: %v", err)
	}
	for addr, presented := range map[string]string{other: `presented "spiffe://molecule.local/tenant/evil"`, none: "presented none"} {
		err := check(t, addr, mtls.ClientOptions{ServerName: "localhost", ServerID: want}, agent)
		// gRPC quotes the handshake error inside its own message.
		if err == nil || !strings.Contains(strings.ReplaceAll(err.Error(), `\"`, `"`), `want SPIFFE ID "`+want+`", `+presented) {
			t.Errorf("server %s: %v; want a refusal saying what was expected and %s", addr, err, presented)
		}
	}
	// Unset: today's behaviour, any ID (or none) under the CA and name.
	for _, addr := range []string{right, other, none} {
		if err := check(t, addr, mtls.ClientOptions{ServerName: "localhost"}, agent); err != nil {
			t.Errorf("without ServerID, %s refused: %v", addr, err)
		}
	}
	// The DNS name is still checked with ServerID set.
	if err := check(t, right, mtls.ClientOptions{ServerName: "cp.example", ServerID: want}, agent); err == nil {
		t.Errorf("a server name mismatch passed")
	}
}

func TestCheckServerID(t *testing.T) {
	if err := mtls.CheckServerID("spiffe://molecule.local/controlplane/prod"); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"", "https://molecule.local/x", "spiffe://Molecule.local/x", "spiffe://molecule.local/x/", strings.Repeat("x", 300)} {
		if err := mtls.CheckServerID(bad); err == nil {
			t.Errorf("CheckServerID(%q) passed", bad)
		}
	}
}
