package channel

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/agent/journal"
	"github.com/molecule-ai/tenant-agent/agent/runner"
	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/controlplane/auth"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// welcoming answers Hello with Welcome and then waits.
type welcoming struct {
	tenantagentv1.UnimplementedAgentServiceServer
}

func (welcoming) Connect(stream grpc.BidiStreamingServer[tenantagentv1.AgentMessage, tenantagentv1.ControlMessage]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := stream.Send(&tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Welcome{Welcome: &tenantagentv1.Welcome{}}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// ending welcomes the agent, then ends its stream as the control plane
// does: EndStream, and once the agent has closed its side, the status
// that says why.
type ending struct {
	tenantagentv1.UnimplementedAgentServiceServer
}

var errReplaced = status.Error(codes.Aborted, "replaced by a newer connection of the same agent")

func (ending) Connect(stream grpc.BidiStreamingServer[tenantagentv1.AgentMessage, tenantagentv1.ControlMessage]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	for _, m := range []*tenantagentv1.ControlMessage{
		{Body: &tenantagentv1.ControlMessage_Welcome{Welcome: &tenantagentv1.Welcome{}}},
		{Body: &tenantagentv1.ControlMessage_EndStream{EndStream: &tenantagentv1.EndStream{}}},
	} {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	for {
		if _, err := stream.Recv(); errors.Is(err, io.EOF) {
			return errReplaced // sent only once the agent's side is closed
		} else if err != nil {
			return err
		}
	}
}

var quiet = slog.New(slog.DiscardHandler)

// serveMTLS runs an agent port with the control plane's own credentials
// and interceptors (deny list at the call) on loopback.
func serveMTLS(t *testing.T, p *pkitest.PKI, deny *auth.DenyList, svc tenantagentv1.AgentServiceServer) string {
	t.Helper()
	creds := mtls.ServerCredentials(p.Source(t, "controlplane"), mtls.ServerOptions{TrustDomain: pkitest.TrustDomain, Track: deny.TrackConn, Logger: quiet})
	gs := grpc.NewServer(append([]grpc.ServerOption{grpc.Creds(creds)},
		auth.Interceptors{TrustDomain: pkitest.TrustDomain, Policy: auth.NewPolicy(nil), Check: deny.Check, Logger: quiet}.ServerOptions()...)...)
	tenantagentv1.RegisterAgentServiceServer(gs, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

// runAgent runs the channel with agent files against addr for d, with a
// fast backoff (10 ms to 40 ms), and returns its log.
func runAgent(t *testing.T, addr string, files mtls.Files, d time.Duration, obs Observer) string {
	t.Helper()
	src, err := mtls.NewSource(files, nil)
	if err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	logs := &testlog.Buffer{}
	// Canceled rather than timed out: gRPC's own deadline timer could end
	// the last attempt just before ctx reports it is done.
	ctx, cancel := context.WithCancel(context.Background())
	defer time.AfterFunc(d, cancel).Stop()
	Run(ctx, Config{
		Addr: addr, Creds: mtls.ClientCredentials(src, "localhost"), CA: files.CA, Tenant: "acme", Observer: obs,
		Inventory: func(context.Context) ([]*tenantagentv1.RuntimeStatus, error) { return nil, nil },
		Runner:    runner.New(runner.Config{Journal: j}), BackoffBase: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond,
		Logger: logs.Logger(t, "agent"),
	})
	return logs.String()
}

// warnLines are the lines at warn or above.
func warnLines(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			out = append(out, l)
		}
	}
	return out
}

// An agent whose --ca does not hold the control plane's CA says so in one
// short line, and repeats it at warn only as its failures double.
func TestUntrustedControlPlaneIsOneShortLine(t *testing.T) {
	cp := pkitest.New(t, "acme")
	other := pkitest.New(t, "acme") // the agent's own CA: not the control plane's
	addr := serveMTLS(t, cp, auth.NewDenyList(), welcoming{})
	files := other.Files("agent-acme")
	log := runAgent(t, addr, files, 1500*time.Millisecond, nil)

	attempts := strings.Count(log, "stream to the control plane ended")
	warns := warnLines(log)
	if attempts < 8 {
		t.Fatalf("only %d attempts in 1.5 s:\n%s", attempts, log)
	}
	if len(warns) > 1+bitsLen(attempts) {
		t.Errorf("%d warnings for %d attempts; want one per doubling:\n%s", len(warns), attempts, strings.Join(warns, "\n"))
	}
	want := "control plane certificate not trusted by --ca " + files.CA + `: issued by \"tenant-agent dev CA molecule.local\", which the bundle does not hold`
	if !strings.Contains(warns[0], want) {
		t.Errorf("first warning %q lacks %q", warns[0], want)
	}
	for _, w := range warns {
		if strings.Contains(w, "possibly because") || strings.Contains(w, "x509:") {
			t.Errorf("a warning dumps the x509 error: %s", w)
		}
	}
}

// Asked to end its stream, the agent closes its side and logs the status
// the control plane then ends it with.
func TestAgentAskedToEndItsStreamLogsWhy(t *testing.T) {
	p := pkitest.New(t, "acme")
	addr := serveMTLS(t, p, auth.NewDenyList(), ending{})
	log := runAgent(t, addr, p.Files("agent-acme"), time.Second, nil)
	if !strings.Contains(log, "Aborted: replaced by a newer connection of the same agent") {
		t.Fatalf("the agent did not log why its stream ended:\n%s", log)
	}
}

// A denied agent completes the handshake and is told why, once per
// doubling of its backoff at warn; it is never welcomed.
func TestDeniedAgentLogsTheReason(t *testing.T) {
	p := pkitest.New(t, "acme")
	deny := auth.NewDenyList()
	deny.DenyTenant("acme", "incident 42")
	addr := serveMTLS(t, p, deny, welcoming{})
	obs := &countingObserver{}
	log := runAgent(t, addr, p.Files("agent-acme"), time.Second, obs)

	warns := warnLines(log)
	attempts := strings.Count(log, "stream to the control plane ended")
	if len(warns) == 0 || !strings.Contains(warns[0], `the control plane refused this agent: tenant \"acme\" is denied: incident 42`) {
		t.Fatalf("the denial's reason is not logged:\n%s", log)
	}
	if attempts < 8 || len(warns) > 1+bitsLen(attempts) {
		t.Errorf("%d warnings for %d attempts; want one per doubling", len(warns), attempts)
	}
	if obs.connected != 0 {
		t.Errorf("a denied agent counted as connected %d times", obs.connected)
	}
}

type countingObserver struct{ connected, heartbeats int }

func (o *countingObserver) Connected(c bool) {
	if c {
		o.connected++
	}
}
func (o *countingObserver) Heartbeat() { o.heartbeats++ }

func bitsLen(n int) int {
	l := 0
	for ; n > 0; n >>= 1 {
		l++
	}
	return l
}
