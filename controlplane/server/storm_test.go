package server

import (
	"net"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// sharedCreds are one agent's credentials for several dials, as the
// agent keeps them: one session cache.
func sharedCreds(t *testing.T, h *harness, tenant string) cptest.Options {
	src, err := mtls.NewSource(h.pki.Files("agent-"+tenant), nil)
	if err != nil {
		t.Fatal(err)
	}
	opts := codex(digestV1)
	opts.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(mtls.ClientCredentials(src, "localhost"))}
	return opts
}

func handshakes(t *testing.T, h *harness) (full, resumed float64) {
	return metricValue(t, h, `tenantagent_controlplane_tls_handshakes_total{resumed="false"}`),
		metricValue(t, h, `tenantagent_controlplane_tls_handshakes_total{resumed="true"}`)
}

// The ticket keys are in the store: an agent resumes its session on the
// restarted control plane (a kill -9 and a rolling deploy alike).
func TestAgentResumesItsSessionAfterARestart(t *testing.T) {
	h := newHarness(t, "acme")
	opts := sharedCreds(t, h, "acme")
	h.agent("acme", opts).Close()
	h.restart()
	h.agent("acme", opts).Close()
	if full, resumed := handshakes(t, h); full != 0 || resumed != 1 {
		t.Fatalf("after the restart: %v full handshakes, %v resumed; want the one resumed", full, resumed)
	}
}

// A denied tenant's session is not resumed: its ticket brings it a full
// handshake, and the call is refused with the reason.
func TestDeniedAgentIsNotResumed(t *testing.T) {
	h := newHarness(t, "acme")
	opts := sharedCreds(t, h, "acme")
	h.agent("acme", opts).Close()
	if _, err := h.operator().DenyTenant(ctx(t), &controlplanev1.DenyTenantRequest{Tenant: "acme", Reason: "host compromised"}); err != nil {
		t.Fatal(err)
	}
	if err := dialErr(t, h, opts); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("denied agent: %v; want PermissionDenied", err)
	}
	if full, resumed := handshakes(t, h); full != 2 || resumed != 0 {
		t.Fatalf("%v full handshakes, %v resumed; want two full ones", full, resumed)
	}
}

// Over the handshake bound, a connection waits the handshake timeout, then
// is told to come back later: ResourceExhausted with a retry hint, not a
// closed connection. A slot free, the next dial is admitted.
func TestOverTheHandshakeBoundTheAgentIsToldWhenToComeBack(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.MaxHandshakes = 1; c.HandshakeTimeout = 2 * time.Second }, "acme")
	// Connections that never say ClientHello hold the one slot, each until
	// its handshake times out: the first, then the second, which queued
	// before the agent.
	for range 2 {
		hog, err := net.Dial("tcp", h.srv.AgentAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer hog.Close()
		time.Sleep(100 * time.Millisecond) // accepted, in its handshake or queued
	}
	err := dialErr(t, h, codex(digestV1))
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("over the bound: %v; want ResourceExhausted", err)
	}
	var hint time.Duration
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			hint = ri.GetRetryDelay().AsDuration()
		}
	}
	if hint < time.Second || hint > 16*time.Second {
		t.Fatalf("retry hint %v; want [1s, 16s]", hint)
	}
	if got := metricValue(t, h, `tenantagent_controlplane_agent_admissions_refused_total{reason="handshakes"}`); got != 1 {
		t.Errorf("shed connections counted %v; want 1", got)
	}
	h.agent("acme", codex(digestV1)).Close() // once the hogs time out
}

// dialErr is how an agent's stream ends, when it ends by itself.
func dialErr(t *testing.T, h *harness, opts cptest.Options) error {
	a, err := cptest.Dial(t, h.srv.AgentAddr(), h.pki.Files("agent-acme"), opts)
	if err != nil {
		return err
	}
	select {
	case <-a.Done():
		return a.Err()
	case <-time.After(wait):
		t.Fatal("the stream did not end")
		return nil
	}
}
