package auth_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/certs/pki"
	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/controlplane/auth"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// agentEcho stands in for the real AgentService: it answers every message
// with a Welcome naming the caller and records the client serial of each
// stream, so tests can see which certificate a handshake presented.
type agentEcho struct {
	tenantagentv1.UnimplementedAgentServiceServer
	mu      sync.Mutex
	serials []string
}

func (a *agentEcho) Connect(stream tenantagentv1.AgentService_ConnectServer) error {
	id, _ := identity.FromContext(stream.Context())
	p, _ := peer.FromContext(stream.Context())
	cert, err := mtls.PeerCertificate(p.AuthInfo)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.serials = append(a.serials, identity.SerialHex(cert))
	a.mu.Unlock()
	for {
		if _, err := stream.Recv(); err != nil {
			return nil
		}
		if err := stream.Send(&tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Welcome{Welcome: &tenantagentv1.Welcome{Identity: id.ID, Tenant: id.Tenant}}}); err != nil {
			return err
		}
	}
}

func (a *agentEcho) streams() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.serials)
}

func (a *agentEcho) lastSerial() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.serials) == 0 {
		return ""
	}
	return a.serials[len(a.serials)-1]
}

// adminStub answers ListAgents; other admin RPCs are Unimplemented, which
// proves the call got past authorization.
type adminStub struct {
	controlplanev1.UnimplementedAdminServiceServer
}

func (adminStub) ListAgents(context.Context, *controlplanev1.ListAgentsRequest) (*controlplanev1.ListAgentsResponse, error) {
	return &controlplanev1.ListAgentsResponse{}, nil
}

type env struct {
	pki       *pkitest.PKI
	agentAddr string
	adminAddr string
	agents    *agentEcho
	deny      *auth.DenyList
	logs      *testlog.Buffer
}

// start serves the agent and admin listeners on loopback with real mTLS,
// both with the control plane's interceptors, like the real binary.
func start(t *testing.T) *env {
	t.Helper()
	e := &env{pki: pkitest.New(t, "acme", "globex/host-1"), agents: &agentEcho{}, deny: auth.NewDenyList(), logs: &testlog.Buffer{}}
	logger := e.logs.Logger(t, "cp")
	grants, err := auth.ParseGrants("limited=GetRuntimePin")
	if err != nil {
		t.Fatal(err)
	}
	src := e.pki.Source(t, "controlplane")
	// As in the real server: the deny list is checked at the call, not in
	// the handshake, so a denied peer is told why.
	creds := mtls.ServerCredentials(src, mtls.ServerOptions{TrustDomain: pkitest.TrustDomain, Track: e.deny.TrackConn, Logger: logger})
	opts := append([]grpc.ServerOption{grpc.Creds(creds)}, auth.Interceptors{
		TrustDomain: pkitest.TrustDomain, Policy: auth.NewPolicy(grants), Check: e.deny.Check, Logger: logger,
	}.ServerOptions()...)

	agentSrv := grpc.NewServer(opts...)
	tenantagentv1.RegisterAgentServiceServer(agentSrv, e.agents)
	adminSrv := grpc.NewServer(opts...)
	controlplanev1.RegisterAdminServiceServer(adminSrv, adminStub{})
	grpc_health_v1.RegisterHealthServer(adminSrv, health.NewServer())
	reflection.Register(adminSrv)

	for _, s := range []struct {
		srv  *grpc.Server
		addr *string
	}{{agentSrv, &e.agentAddr}, {adminSrv, &e.adminAddr}} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		*s.addr = lis.Addr().String()
		go s.srv.Serve(lis)
		t.Cleanup(s.srv.Stop)
	}
	return e
}

func dial(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (e *env) dialAs(t *testing.T, addr, stem string) *grpc.ClientConn {
	return dial(t, addr, mtls.ClientCredentials(e.pki.Source(t, stem), "localhost"))
}

func ctxShort(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func healthCheck(t *testing.T, conn *grpc.ClientConn, opts ...grpc.CallOption) error {
	_, err := grpc_health_v1.NewHealthClient(conn).Check(ctxShort(t), &grpc_health_v1.HealthCheckRequest{}, opts...)
	return err
}

func TestHandshakeRefusals(t *testing.T) {
	e := start(t)
	otherCA, err := pki.NewCA("molecule.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	operatorID := "spiffe://molecule.local/operator/mallory"
	now := time.Now()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.pki.CA.CertPEM)

	// The positive control: the same path with a good certificate works.
	if err := healthCheck(t, e.dialAs(t, e.adminAddr, "operator-dev")); err != nil {
		t.Fatalf("good operator certificate refused: %v", err)
	}

	cases := []struct {
		name  string
		creds func(t *testing.T) credentials.TransportCredentials
		// logged is what the server must have logged as the reason, for
		// refusals crypto/tls or our own verification makes.
		logged string
	}{
		{name: "no client certificate", creds: func(t *testing.T) credentials.TransportCredentials {
			return credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "localhost"})
		}},
		{name: "certificate from another CA", logged: "certificate signed by unknown authority", creds: func(t *testing.T) credentials.TransportCredentials {
			files, _ := pkitest.IssueWith(t, otherCA, e.pki.Dir, "other-ca", pki.Leaf{SPIFFEID: operatorID, Client: true})
			return clientCreds(t, files, "localhost")
		}},
		{name: "expired certificate", logged: "certificate has expired or is not yet valid", creds: func(t *testing.T) credentials.TransportCredentials {
			files, _ := e.pki.Issue(t, "expired", pki.Leaf{SPIFFEID: operatorID, Client: true, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})
			return clientCreds(t, files, "localhost")
		}},
		{name: "not yet valid certificate", creds: func(t *testing.T) credentials.TransportCredentials {
			files, _ := e.pki.Issue(t, "future", pki.Leaf{SPIFFEID: operatorID, Client: true, NotBefore: now.Add(time.Hour), NotAfter: now.Add(48 * time.Hour)})
			return clientCreds(t, files, "localhost")
		}},
		{name: "certificate without a SPIFFE ID", logged: "has no SPIFFE ID", creds: func(t *testing.T) credentials.TransportCredentials {
			files, _ := e.pki.Issue(t, "no-spiffe", pki.Leaf{CommonName: "no-spiffe", Client: true})
			return clientCreds(t, files, "localhost")
		}},
		{name: "foreign trust domain", logged: `trust domain \"evil.example\"`, creds: func(t *testing.T) credentials.TransportCredentials {
			files, _ := e.pki.Issue(t, "foreign", pki.Leaf{SPIFFEID: "spiffe://evil.example/operator/dev", Client: true})
			return clientCreds(t, files, "localhost")
		}},
		{name: "wrong server name on the client", creds: func(t *testing.T) credentials.TransportCredentials {
			return clientCreds(t, e.pki.Files("operator-dev"), "controlplane.evil.example")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := healthCheck(t, dial(t, e.adminAddr, tc.creds(t)))
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("health check: %v, want the handshake refused (Unavailable)", err)
			}
			// The server logs a refused handshake after the client sees
			// it fail: give the log a moment.
			if tc.logged != "" && !logged(e.logs, tc.logged) {
				t.Errorf("server log lacks the reason %q:\n%s", tc.logged, e.logs.String())
			}
		})
	}
}

func clientCreds(t *testing.T, files mtls.Files, serverName string) credentials.TransportCredentials {
	src, err := mtls.NewSource(files, nil)
	if err != nil {
		t.Fatal(err)
	}
	return mtls.ClientCredentials(src, serverName)
}

// logged waits up to a second for the log to contain want.
func logged(logs *testlog.Buffer, want string) bool {
	for range 100 {
		if strings.Contains(logs.String(), want) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func connect(t *testing.T, conn *grpc.ClientConn) (tenantagentv1.AgentService_ConnectClient, error) {
	stream, err := tenantagentv1.NewAgentServiceClient(conn).Connect(ctxShort(t))
	if err != nil {
		return nil, err
	}
	// A Send on a stream the server already refused returns io.EOF; the
	// refusal itself is what Recv returns.
	if err := stream.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Hello{Hello: &tenantagentv1.Hello{}}}); err != nil && !errors.Is(err, io.EOF) {
		return stream, err
	}
	_, err = stream.Recv()
	return stream, err
}

func TestRoleMatrix(t *testing.T) {
	e := start(t)
	agent := e.dialAs(t, e.agentAddr, "agent-acme")
	agentOnAdmin := e.dialAs(t, e.adminAddr, "agent-acme")
	operatorOnAgent := e.dialAs(t, e.agentAddr, "operator-dev")
	operator := e.dialAs(t, e.adminAddr, "operator-dev")
	hook := e.dialAs(t, e.adminAddr, "service-promote-hook")
	limited := e.dialAs(t, e.adminAddr, "service-limited")

	admin := controlplanev1.NewAdminServiceClient
	listAgents := func(c *grpc.ClientConn) error {
		_, err := admin(c).ListAgents(ctxShort(t), &controlplanev1.ListAgentsRequest{})
		return err
	}
	hold := func(c *grpc.ClientConn) error {
		_, err := admin(c).HoldTenant(ctxShort(t), &controlplanev1.HoldTenantRequest{Tenant: "acme"})
		return err
	}
	getPin := func(c *grpc.ClientConn) error {
		_, err := admin(c).GetRuntimePin(ctxShort(t), &controlplanev1.GetRuntimePinRequest{Runtime: "codex"})
		return err
	}
	promote := func(c *grpc.ClientConn) error {
		stream, err := admin(c).PromoteRuntimeImage(ctxShort(t), &controlplanev1.PromoteRuntimeImageRequest{})
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	}
	connectAs := func(c *grpc.ClientConn) error { _, err := connect(t, c); return err }

	// passed means authorization let the call through: the stubs answer OK
	// or Unimplemented.
	const passed = codes.Unimplemented
	cases := []struct {
		name string
		call func(*grpc.ClientConn) error
		conn *grpc.ClientConn
		want codes.Code
		msg  string
	}{
		{"agent on AgentService", connectAs, agent, codes.OK, ""},
		{"agent on admin ListAgents", listAgents, agentOnAdmin, codes.PermissionDenied, `agent of tenant "acme" may not call /controlplane.v1.AdminService/ListAgents: only operators and granted services may`},
		{"agent on admin health", func(c *grpc.ClientConn) error { return healthCheck(t, c) }, agentOnAdmin, codes.PermissionDenied, "only operators and granted services"},
		{"operator on AgentService", connectAs, operatorOnAgent, codes.PermissionDenied, `operator "dev" may not call /tenantagent.v1.AgentService/Connect: only tenant agents may`},
		{"operator ListAgents", listAgents, operator, codes.OK, ""},
		{"operator HoldTenant", hold, operator, passed, ""},
		{"operator health", func(c *grpc.ClientConn) error { return healthCheck(t, c) }, operator, codes.OK, ""},
		{"service ListAgents (default grant)", listAgents, hook, codes.OK, ""},
		{"service PromoteRuntimeImage (default grant)", promote, hook, passed, ""},
		{"service HoldTenant (not granted)", hold, hook, codes.PermissionDenied, `service "promote-hook" may not call /controlplane.v1.AdminService/HoldTenant: not in its grant`},
		{"limited service GetRuntimePin (granted)", getPin, limited, passed, ""},
		{"limited service PromoteRuntimeImage (not granted)", promote, limited, codes.PermissionDenied, `service "limited" may not call /controlplane.v1.AdminService/PromoteRuntimeImage: not in its grant`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(tc.conn)
			if got := status.Code(err); got != tc.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tc.want)
			}
			if tc.msg != "" && !strings.Contains(status.Convert(err).Message(), tc.msg) {
				t.Errorf("message %q lacks %q", status.Convert(err).Message(), tc.msg)
			}
		})
	}
}

// TestEveryRPCHasARule fails when an RPC is added to a served service
// without deciding who may call it, or a rule outlives its RPC.
func TestEveryRPCHasARule(t *testing.T) {
	served := map[string]bool{}
	srv := grpc.NewServer()
	tenantagentv1.RegisterAgentServiceServer(srv, &agentEcho{})
	controlplanev1.RegisterAdminServiceServer(srv, adminStub{})
	grpc_health_v1.RegisterHealthServer(srv, health.NewServer())
	reflection.Register(srv)
	for name, info := range srv.GetServiceInfo() {
		for _, m := range info.Methods {
			full := "/" + name + "/" + m.Name
			served[full] = true
			if _, ok := auth.Rules[full]; !ok {
				t.Errorf("%s has no rule in auth.Rules", full)
			}
		}
	}
	for full := range auth.Rules {
		if !served[full] {
			t.Errorf("auth.Rules has a rule for %s, which no service serves", full)
		}
	}
}

func TestParseGrants(t *testing.T) {
	g, err := auth.ParseGrants(" hook=PromoteRuntimeImage, RefreshRuntimeImage ; ci=GetCommand")
	if err != nil {
		t.Fatal(err)
	}
	if len(g["hook"]) != 2 || g["ci"][0] != "GetCommand" {
		t.Errorf("grants = %v", g)
	}
	for _, bad := range []string{"hook", "hook=Nope", "Bad Name=GetCommand", "hook=Connect"} {
		if _, err := auth.ParseGrants(bad); err == nil {
			t.Errorf("ParseGrants(%q) accepted", bad)
		}
	}
}

func TestDenyList(t *testing.T) {
	e := start(t)
	acme := e.dialAs(t, e.agentAddr, "agent-acme")
	stream, err := connect(t, acme)
	if err != nil {
		t.Fatal(err)
	}

	e.deny.DenyTenant("acme", "incident 42")
	// A call on the connection already open is refused...
	if _, err := connect(t, acme); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "incident 42") {
		t.Errorf("denied tenant on an open connection: %v, want PermissionDenied with the reason", err)
	}
	// ...and on a new connection: the handshake completes, so the agent
	// is told why, and the call never reaches the service.
	served := e.agents.streams()
	if _, err := connect(t, e.dialAs(t, e.agentAddr, "agent-acme")); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "incident 42") {
		t.Errorf("denied tenant, new connection: %v, want PermissionDenied with the reason", err)
	}
	if e.agents.streams() != served {
		t.Errorf("a denied tenant's stream reached the service")
	}
	// Other tenants are untouched.
	if _, err := connect(t, e.dialAs(t, e.agentAddr, "agent-globex-host-1")); err != nil {
		t.Errorf("other tenant refused: %v", err)
	}
	e.deny.AllowTenant("acme")
	if _, err := connect(t, e.dialAs(t, e.agentAddr, "agent-acme")); err != nil {
		t.Errorf("allowed again, refused: %v", err)
	}
	_ = stream.CloseSend()

	// Deny one certificate by serial: the operator's other connections die
	// with it, another operator certificate would not.
	src := e.pki.Source(t, "operator-dev")
	e.deny.DenySerial(identity.SerialHex(src.Current().Leaf), "key leaked")
	if err := healthCheck(t, e.dialAs(t, e.adminAddr, "operator-dev")); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "key leaked") {
		t.Errorf("denied serial: %v, want PermissionDenied with the reason", err)
	}
	if !strings.Contains(e.logs.String(), "key leaked") {
		t.Errorf("server log lacks the denial reason")
	}
}

// TestRotationKeepsStreamsAndUsesNewCerts replaces the server's and the
// agent's certificate files while a stream is open.
func TestRotationKeepsStreamsAndUsesNewCerts(t *testing.T) {
	e := start(t)
	agentSrc := e.pki.Source(t, "agent-acme")
	agentConn := dial(t, e.agentAddr, mtls.ClientCredentials(agentSrc, "localhost"))
	stream, err := connect(t, agentConn)
	if err != nil {
		t.Fatal(err)
	}
	oldClientSerial := e.agents.lastSerial()
	var oldServer peer.Peer
	if err := healthCheck(t, e.dialAs(t, e.adminAddr, "operator-dev"), grpc.Peer(&oldServer)); err != nil {
		t.Fatal(err)
	}
	oldServerSerial := serverSerial(t, &oldServer)

	// Rotate both certificates on disk, as cert-manager or SPIRE would.
	_, newServer := e.pki.Issue(t, "controlplane", pki.Leaf{CommonName: "controlplane", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	_, newAgent := e.pki.Issue(t, "agent-acme", pki.Leaf{SPIFFEID: "spiffe://molecule.local/tenant/acme", Client: true})

	// The open stream is untouched.
	if err := stream.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Health{Health: &tenantagentv1.HealthReport{}}}); err != nil {
		t.Fatalf("send on the open stream after rotation: %v", err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("receive on the open stream after rotation: %v", err)
	}
	if got := e.agents.lastSerial(); got != oldClientSerial {
		t.Fatalf("a new stream was opened (serial %s); the old one should have carried the message", got)
	}

	// A new handshake from the same Source presents the new agent
	// certificate and sees the new server certificate.
	if _, err := connect(t, dial(t, e.agentAddr, mtls.ClientCredentials(agentSrc, "localhost"))); err != nil {
		t.Fatal(err)
	}
	if got, want := e.agents.lastSerial(), identity.SerialHex(newAgent.Cert); got != want {
		t.Errorf("server saw client serial %s, want the rotated %s (old %s)", got, want, oldClientSerial)
	}
	var after peer.Peer
	if err := healthCheck(t, e.dialAs(t, e.adminAddr, "operator-dev"), grpc.Peer(&after)); err != nil {
		t.Fatal(err)
	}
	if got, want := serverSerial(t, &after), identity.SerialHex(newServer.Cert); got != want {
		t.Errorf("client saw server serial %s, want the rotated %s (old %s)", got, want, oldServerSerial)
	}
}

// A half-written rotation (new certificate, old key) keeps the last good
// pair instead of breaking handshakes.
func TestSourceKeepsLastGoodOnBadUpdate(t *testing.T) {
	p := pkitest.New(t, "acme")
	files := p.Files("agent-acme")
	src, err := mtls.NewSource(files, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	before := identity.SerialHex(src.Current().Leaf)
	other, err := p.CA.Issue(pki.Leaf{SPIFFEID: "spiffe://molecule.local/tenant/acme", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files.Cert, other.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := identity.SerialHex(src.Current().Leaf); got != before {
		t.Fatalf("mismatched cert and key were loaded (serial %s)", got)
	}
	if err := os.WriteFile(files.Key, other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, want := identity.SerialHex(src.Current().Leaf), identity.SerialHex(other.Cert); got != want {
		t.Fatalf("serial = %s after the key arrived, want %s", got, want)
	}
}

func serverSerial(t *testing.T, p *peer.Peer) string {
	t.Helper()
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		t.Fatalf("no TLS peer info: %#v", p.AuthInfo)
	}
	return identity.SerialHex(info.State.PeerCertificates[0])
}

// TestGrpcurlReflection drives the admin listener with the real grpcurl:
// an operator lists the services through reflection, an agent is refused.
func TestGrpcurlReflection(t *testing.T) {
	e := start(t)
	grpcurl := func(stem string) (string, error) {
		files := e.pki.Files(stem)
		cmd := exec.Command("go", "tool", "grpcurl", "-cacert", files.CA, "-cert", files.Cert, "-key", files.Key,
			"-servername", "localhost", e.adminAddr, "list")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := grpcurl("operator-dev")
	if err != nil {
		t.Fatalf("grpcurl list as operator: %v\n%s", err, out)
	}
	for _, want := range []string{"controlplane.v1.AdminService", "grpc.health.v1.Health"} {
		if !strings.Contains(out, want) {
			t.Errorf("grpcurl list lacks %s:\n%s", want, out)
		}
	}
	out, err = grpcurl("agent-acme")
	if err == nil || !strings.Contains(out, "PermissionDenied") {
		t.Errorf("grpcurl list as an agent: err = %v, want PermissionDenied:\n%s", err, out)
	}
}

// TestDeniedCallNamesRoleAndMethodNotTheGrant: a refusal says who (by role)
// may not call what, and never lists what the caller's grant holds.
func TestDeniedCallNamesRoleAndMethodNotTheGrant(t *testing.T) {
	grants, err := auth.ParseGrants("limited=GetRuntimePin,ListAgents")
	if err != nil {
		t.Fatal(err)
	}
	p := auth.NewPolicy(grants)
	deny := controlplanev1.AdminService_DenyTenant_FullMethodName
	cases := []struct {
		id       identity.Identity
		want     string
		mustLack []string
	}{
		{identity.Identity{ID: "spiffe://molecule.local/service/promote-hook", Kind: identity.KindService, Name: "promote-hook"},
			`service "promote-hook" may not call /controlplane.v1.AdminService/DenyTenant: not in its grant`,
			auth.DefaultServiceGrant},
		{identity.Identity{ID: "spiffe://molecule.local/service/limited", Kind: identity.KindService, Name: "limited"},
			`service "limited" may not call /controlplane.v1.AdminService/DenyTenant: not in its grant`,
			[]string{"GetRuntimePin", "ListAgents"}},
		{identity.Identity{ID: "spiffe://molecule.local/tenant/acme", Kind: identity.KindAgent, Tenant: "acme"},
			`agent of tenant "acme" may not call /controlplane.v1.AdminService/DenyTenant: only operators and granted services may`, nil},
	}
	for _, tc := range cases {
		err := p.Authorize(tc.id, deny)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: %v, want %q", tc.id.ID, err, tc.want)
			continue
		}
		for _, m := range tc.mustLack {
			if strings.Contains(err.Error(), m) {
				t.Errorf("%s: %q lists the grant (%s)", tc.id.ID, err, m)
			}
		}
	}
}

// Admin calls are logged when they finish; agent streams are not (the
// agent service logs them, and the interceptor would keep its fields for
// as long as each stream stays open).
func TestAgentStreamsAreLeftToTheAgentServiceLog(t *testing.T) {
	e := start(t)
	stream, err := connect(t, e.dialAs(t, e.agentAddr, "agent-acme"))
	if err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	// The status arrives after the server's interceptors returned, so a
	// log line of theirs for this stream would be written by now.
	for {
		if _, err := stream.Recv(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("stream ended with %v, want io.EOF", err)
			}
			break
		}
	}
	_, err = controlplanev1.NewAdminServiceClient(e.dialAs(t, e.adminAddr, "operator-dev")).ListAgents(ctxShort(t), &controlplanev1.ListAgentsRequest{})
	if c := status.Code(err); c != codes.OK && c != codes.Unimplemented {
		t.Fatalf("ListAgents: %v, want it past authorization", err)
	}
	logs := e.logs.String()
	finished := func(method string) bool {
		for line := range strings.Lines(logs) {
			if strings.Contains(line, "finished call") && strings.Contains(line, method) {
				return true
			}
		}
		return false
	}
	if !finished("ListAgents") {
		t.Errorf("no finished-call line for ListAgents:\n%s", logs)
	}
	if finished("Connect") {
		t.Errorf("the agent stream was logged by the interceptor:\n%s", logs)
	}
}
