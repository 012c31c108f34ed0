package server

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
	"github.com/molecule-ai/tenant-agent/internal/teststore"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

const (
	digestV1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	digestV2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	repo     = "registry.example/molecule-ai/workspace-template-codex"
	wait     = 15 * time.Second
)

// harness is a control plane in this process on loopback, with a real
// SQLite file and real mTLS.
type harness struct {
	t         *testing.T
	pki       *pkitest.PKI
	storePath string
	srv       *Server
	cancel    context.CancelFunc
	done      chan error
	logs      *testlog.Buffer
}

func newHarness(t *testing.T, tenants ...string) *harness {
	h := &harness{t: t, pki: pkitest.New(t, tenants...), storePath: teststore.Spec(t), logs: &testlog.Buffer{}}
	h.start(nil)
	return h
}

func (h *harness) start(mutate func(*Config)) {
	h.t.Helper()
	cfg := Defaults()
	cfg.AgentAddr, cfg.AdminAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.TLS = h.pki.Files("controlplane")
	cfg.TrustDomain = pkitest.TrustDomain
	cfg.StorePath = h.storePath
	cfg.ReconnectStagger = 0
	cfg.ShutdownGrace = 2 * time.Second
	cfg.Logger = h.logs.Logger(h.t, "cp")
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.srv, h.cancel, h.done = srv, cancel, make(chan error, 1)
	go func() { h.done <- srv.Serve(ctx) }()
	h.t.Cleanup(h.stop)
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	if err := <-h.done; err != nil {
		h.t.Errorf("serve: %v", err)
	}
	h.cancel = nil
}

func (h *harness) restart() {
	h.stop()
	h.start(nil)
}

func (h *harness) admin(stem string) controlplanev1.AdminServiceClient {
	h.t.Helper()
	return controlplanev1.NewAdminServiceClient(h.adminConn(stem))
}

func (h *harness) adminConn(stem string) *grpc.ClientConn {
	h.t.Helper()
	src, err := mtls.NewSource(h.pki.Files(stem), nil)
	if err != nil {
		h.t.Fatal(err)
	}
	conn, err := grpc.NewClient(h.srv.AdminAddr(), grpc.WithTransportCredentials(mtls.ClientCredentials(src, "localhost")))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return conn
}

func (h *harness) operator() controlplanev1.AdminServiceClient { return h.admin("operator-dev") }

func (h *harness) agent(tenant string, opts cptest.Options) *cptest.Agent {
	h.t.Helper()
	a := cptest.Connect(h.t, h.srv.AgentAddr(), h.pki.Files("agent-"+tenant), opts)
	if opts.NoRead {
		h.waitConnected("spiffe://molecule.local/tenant/"+tenant, true)
		return a
	}
	a.WaitFor(wait, "Welcome", func(m []*tenantagentv1.ControlMessage) bool { return len(m) > 0 && m[0].GetWelcome() != nil })
	return a
}

// waitConnected waits until both the stream registry and the fleet's view
// (what rollouts and ListAgents go by) agree on whether agent id is
// connected. On PostgreSQL the view also asks the cluster's sessions
// table, released just after the stream leaves the registry.
func (h *harness) waitConnected(id string, want bool) {
	h.t.Helper()
	eventually(h.t, "agent "+id+" connected="+boolString(want), func() bool {
		a, known := h.srv.fleet.Agent(id)
		inView := known && h.srv.fleet.View(a).Connected
		return (h.srv.sessions.Get(id) != nil) == want && inView == want
	})
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func codex(digest string) cptest.Options {
	return cptest.Options{Runtimes: []*tenantagentv1.RuntimeStatus{cptest.Runtime("codex", repo, digest, 2)}}
}

func contextWithCancel(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}
