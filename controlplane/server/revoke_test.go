package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/certs/pki"
	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// A denied operator certificate loses its open WatchAgents stream within a
// second, with the reason, and its connection: checking the deny list only
// when a call starts would leave fleet events flowing to it for days.
func TestDenyCertificateEndsOpenAdminStreams(t *testing.T) {
	h := newHarness(t, "acme")
	_, leaked := h.pki.Issue(t, "operator-leaked", pki.Leaf{SPIFFEID: "spiffe://molecule.local/operator/leaked", Client: true})
	watcher := h.admin("operator-leaked")
	watchCtx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	stream, err := watcher.WatchAgents(watchCtx, &controlplanev1.WatchAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := stream.Recv(); err != nil || ev.GetKind() != controlplanev1.AgentEventKind_AGENT_EVENT_KIND_SYNCED {
		t.Fatalf("first event %v, %v; want SYNCED", ev, err)
	}
	h.agent("acme", codex(digestV1)) // events flow to the watcher
	if ev, err := stream.Recv(); err != nil || ev.GetAgent().GetTenant() != "acme" {
		t.Fatalf("event %v, %v; want acme's", ev, err)
	}

	serial := identity.SerialHex(leaked.Cert)
	op := h.operator()
	if _, err := op.ListAgents(ctx(t), &controlplanev1.ListAgentsRequest{}); err != nil {
		t.Fatal(err)
	}
	_, connsBefore := h.srv.deny.Open()
	deniedAt := time.Now()
	if _, err := op.DenyCertificate(ctx(t), &controlplanev1.DenyCertificateRequest{Serial: serial, Reason: "laptop stolen"}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := stream.Recv()
		if err == nil {
			continue // an event already on its way
		}
		if took := time.Since(deniedAt); took > time.Second {
			t.Errorf("stream ended %s after the denial; want within a second", took)
		}
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "laptop stolen") {
			t.Fatalf("stream ended with %v; want PermissionDenied with the reason", err)
		}
		break
	}
	// The connection is closed too; a new one is refused at the call.
	if _, err := watcher.ListAgents(ctx(t), &controlplanev1.ListAgentsRequest{}); status.Code(err) != codes.Unavailable && status.Code(err) != codes.PermissionDenied {
		t.Fatalf("call after the denial: %v; want refused", err)
	}
	eventually(t, "the denied connection to close", func() bool {
		_, conns := h.srv.deny.Open()
		return conns == connsBefore-1
	})
}

// Denying a tenant ends its agent's stream and any admin stream its
// certificates hold, on both listeners.
func TestDenyTenantEndsAgentStreamsAndConnections(t *testing.T) {
	h := newHarness(t, "acme", "globex")
	acme := h.agent("acme", codex(digestV1))
	globex := h.agent("globex", codex(digestV1))
	if _, err := h.operator().DenyTenant(ctx(t), &controlplanev1.DenyTenantRequest{Tenant: "acme", Reason: "host compromised"}); err != nil {
		t.Fatal(err)
	}
	endedDenied(t, acme, "host compromised")
	// Reconnecting, it completes the handshake and is refused at the call,
	// told why, and never served.
	if err := deniedAgentDial(t, h, "agent-acme"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "host compromised") {
		t.Fatalf("a denied tenant's agent reconnecting: %v; want PermissionDenied with the reason", err)
	}
	if err := globex.SendHealth(); err != nil {
		t.Fatalf("another tenant was disturbed: %v", err)
	}
	staysOpen(t, globex)
}

// deniedAgentDial opens an agent stream, says Hello and returns the status
// the stream ends with; being welcomed fails the test. (A Send racing the
// refusal returns io.EOF; the status comes from Recv.)
func deniedAgentDial(t *testing.T, h *harness, stem string) error {
	t.Helper()
	src, err := mtls.NewSource(h.pki.Files(stem), nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(h.srv.AgentAddr(), grpc.WithTransportCredentials(mtls.ClientCredentials(src, "localhost")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := tenantagentv1.NewAgentServiceClient(conn).Connect(ctx(t))
	if err != nil {
		return err
	}
	_ = stream.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Hello{Hello: &tenantagentv1.Hello{Hostname: "h"}}})
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		if m.GetWelcome() != nil {
			t.Fatalf("a denied agent (%s) was welcomed", stem)
		}
	}
}

// Denying an agent's certificate ends its stream with the reason, though
// agent streams are not tracked call by call: the fleet closes the
// session of that serial, and no other.
func TestDenyCertificateEndsTheAgentsStream(t *testing.T) {
	h := newHarness(t, "acme", "globex")
	acme := h.agent("acme", codex(digestV1))
	globex := h.agent("globex", codex(digestV1))
	serial := identity.SerialHex(h.pki.Source(t, "agent-acme").Current().Leaf)
	if _, err := h.operator().DenyCertificate(ctx(t), &controlplanev1.DenyCertificateRequest{Serial: serial, Reason: "host sold"}); err != nil {
		t.Fatal(err)
	}
	endedDenied(t, acme, "host sold")
	staysOpen(t, globex)
}

// endedDenied fails the test unless a's stream ends within a second with
// PermissionDenied and reason.
func endedDenied(t *testing.T, a *cptest.Agent, reason string) {
	t.Helper()
	select {
	case <-a.Done():
	case <-time.After(time.Second):
		t.Fatal("the agent's stream still open a second after the denial")
	}
	if err := a.Err(); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), reason) {
		t.Fatalf("the agent's stream ended with %v; want PermissionDenied with the reason (%s)", err, reason)
	}
}

// staysOpen fails the test if a's stream ends within 300 ms.
func staysOpen(t *testing.T, a *cptest.Agent) {
	t.Helper()
	select {
	case <-a.Done():
		t.Fatalf("another agent's stream ended: %v", a.Err())
	case <-time.After(300 * time.Millisecond):
	}
}

// Agent streams are not tracked call by call (a denial closes their
// sessions, as above): thousands of idle streams would each keep a
// tracked context. An admin stream is tracked.
func TestAgentStreamsAreNotTrackedCallByCall(t *testing.T) {
	h := newHarness(t, "acme", "globex")
	h.agent("acme", codex(digestV1))
	h.agent("globex", codex(digestV1))
	if calls, _ := h.srv.deny.Open(); calls != 0 {
		t.Fatalf("%d calls tracked with two agents connected; want none", calls)
	}
	watchCtx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	stream, err := h.operator().WatchAgents(watchCtx, &controlplanev1.WatchAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if calls, _ := h.srv.deny.Open(); calls != 1 {
		t.Fatalf("%d calls tracked with a WatchAgents stream open; want 1", calls)
	}
}
