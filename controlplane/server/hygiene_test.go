package server

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
	"github.com/molecule-ai/tenant-agent/internal/teststore"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

func newHarnessWith(t *testing.T, mutate func(*Config), tenants ...string) *harness {
	h := &harness{t: t, pki: pkitest.New(t, tenants...), storePath: teststore.Spec(t), logs: &testlog.Buffer{}}
	h.start(mutate)
	return h
}

// closedWithin reports whether the server closed conn within d, reading
// (and discarding) anything it sends first.
func closedWithin(conn net.Conn, d time.Duration) bool {
	conn.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 1024)
	for {
		if _, err := conn.Read(buf); err != nil {
			var ne net.Error
			return !(errorAs(err, &ne) && ne.Timeout())
		}
	}
}

func errorAs(err error, target *net.Error) bool {
	ne, ok := err.(net.Error)
	if ok {
		*target = ne
	}
	return ok
}

// A connection that never completes its handshake is closed after
// --handshake-timeout, not grpc-go's 120 s.
func TestIdleConnectionsAreClosedAfterTheHandshakeTimeout(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.HandshakeTimeout = 500 * time.Millisecond }, "acme")
	for _, addr := range []string{h.srv.AgentAddr(), h.srv.AdminAddr()} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if !closedWithin(conn, 3*time.Second) {
			t.Errorf("%s: a silent connection is still open after 3 s (handshake timeout 500 ms)", addr)
		}
	}
	h.agent("acme", codex(digestV1)) // real agents still connect
}

// Connections over --max-agent-conns are closed as soon as accepted, and
// counted; when one closes, an agent gets in again.
func TestAgentConnectionCap(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.MaxAgentConns = 3; c.HandshakeTimeout = 10 * time.Second }, "acme")
	var held []net.Conn
	for range 3 {
		conn, err := net.Dial("tcp", h.srv.AgentAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		held = append(held, conn)
	}
	eventually(t, "three connections open", func() bool { return h.srv.agentConns.Open() == 3 })
	over, err := net.Dial("tcp", h.srv.AgentAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	if !closedWithin(over, 2*time.Second) {
		t.Fatal("a connection over the cap was kept open")
	}
	if _, err := cptest.Dial(t, h.srv.AgentAddr(), h.pki.Files("agent-acme"), codex(digestV1)); err == nil {
		// The stream may open before the server's close is seen; it must not be welcomed.
		if h.srv.sessions.Get("spiffe://molecule.local/tenant/acme") != nil {
			t.Fatal("an agent connected over the cap")
		}
	}
	if got := metricValue(t, h, `tenantagent_controlplane_agent_admissions_refused_total{reason="connection_cap"}`); got < 1 {
		t.Errorf("refused connections counted %v", got)
	}
	held[0].Close()
	eventually(t, "a slot to free", func() bool { return h.srv.agentConns.Open() < 3 })
	h.agent("acme", codex(digestV1))
}

// One connection may carry at most --max-streams-per-conn streams; a
// stream that never says Hello is ended after the Hello timeout anyway.
func TestStreamsPerConnectionAreCapped(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.MaxStreamsPerConn = 2 }, "acme")
	src, err := mtls.NewSource(h.pki.Files("agent-acme"), nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(h.srv.AgentAddr(), grpc.WithTransportCredentials(mtls.ClientCredentials(src, "localhost")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := tenantagentv1.NewAgentServiceClient(conn)
	// Two streams that never say Hello hold both slots.
	first, cancelFirst := context.WithCancel(context.Background())
	defer cancelFirst()
	for i := range 2 {
		c := first
		if i == 1 {
			c = context.Background()
		}
		if _, err := client.Connect(c); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	welcomedWithin := func(d time.Duration) bool {
		c, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		s, err := client.Connect(c)
		if err != nil {
			return false
		}
		if err := s.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Hello{Hello: &tenantagentv1.Hello{Hostname: "h"}}}); err != nil {
			return false
		}
		m, err := s.Recv()
		return err == nil && m.GetWelcome() != nil
	}
	if welcomedWithin(time.Second) {
		t.Fatal("a third stream on one connection was served")
	}
	cancelFirst() // frees a slot
	if !welcomedWithin(wait) {
		t.Fatal("no stream served after a slot was freed")
	}
}

// One identity reconnecting in a loop is refused after its burst, with a
// retry hint, and does not replace its session each time; other agents
// are not disturbed.
func TestReconnectFloodIsRefusedWithARetryHint(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.ReconnectBurst = 3; c.ReconnectInterval = time.Minute }, "acme", "globex")
	globex := h.agent("globex", codex(digestV1))
	accepted, refused := 0, 0
	for i := range 20 {
		a, err := cptest.Dial(t, h.srv.AgentAddr(), h.pki.Files("agent-acme"), codex(digestV1))
		if err == nil && waitWelcomeOrEnd(a) {
			accepted++
			continue
		}
		if err == nil {
			err = a.Err()
		}
		st := status.Convert(err)
		if st.Code() != codes.ResourceExhausted {
			t.Fatalf("attempt %d ended with %v; want ResourceExhausted", i, err)
		}
		var hint time.Duration
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				hint = ri.GetRetryDelay().AsDuration()
			}
		}
		if hint <= 0 || hint > time.Minute {
			t.Fatalf("attempt %d: retry hint %v; want (0, 1m]", i, hint)
		}
		refused++
	}
	if accepted != 3 || refused != 17 {
		t.Fatalf("accepted %d, refused %d; want 3 and 17", accepted, refused)
	}
	if h.srv.sessions.Get("spiffe://molecule.local/tenant/acme") == nil {
		t.Fatal("refused attempts closed the agent's last accepted session")
	}
	if got := metricValue(t, h, `tenantagent_controlplane_agent_admissions_refused_total{reason="reconnect_rate"}`); got != 17 {
		t.Errorf("refused reconnects counted %v; want 17", got)
	}
	if err := globex.SendHealth(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-globex.Done():
		t.Fatalf("another agent was disconnected: %v", globex.Err())
	default:
	}
	if n := strings.Count(h.logs.String(), "agent reconnecting too often"); n != 1 {
		t.Errorf("refusals logged %d times; want once per interval", n)
	}
}

// metricValue reads one series from /metrics (0 when absent).
func metricValue(t *testing.T, h *harness, series string) float64 {
	for _, line := range strings.Split(scrape(t, h), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

func waitWelcomeOrEnd(a *cptest.Agent) bool {
	deadline := time.After(wait)
	for {
		if m := a.Received(); len(m) > 0 && m[0].GetWelcome() != nil {
			return true
		}
		select {
		case <-a.Done():
			return false
		case <-deadline:
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
}
