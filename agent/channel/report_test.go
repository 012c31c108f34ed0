package channel

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/molecule-ai/tenant-agent/agent/journal"
	"github.com/molecule-ai/tenant-agent/agent/runner"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// recording is a control plane that welcomes every stream, with a short
// heartbeat and accepting unchanged runtimes or not, and keeps what each
// report says the agent's runtimes are.
type recording struct {
	tenantagentv1.UnimplementedAgentServiceServer
	accepts bool
	mu      sync.Mutex
	held    []*tenantagentv1.RuntimeStatus // as the control plane holds them
	reports []*tenantagentv1.HealthReport
}

func (s *recording) Connect(stream grpc.BidiStreamingServer[tenantagentv1.AgentMessage, tenantagentv1.ControlMessage]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.held = first.GetHello().GetRuntimes()
	s.mu.Unlock()
	if err := stream.Send(&tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Welcome{Welcome: &tenantagentv1.Welcome{
		HeartbeatInterval: durationpb.New(20 * time.Millisecond), AcceptsUnchangedRuntimes: s.accepts}}}); err != nil {
		return err
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		if h := m.GetHealth(); h != nil {
			s.mu.Lock()
			s.reports = append(s.reports, h)
			if !h.GetRuntimesUnchanged() {
				s.held = h.GetRuntimes()
			}
			s.mu.Unlock()
		}
	}
}

// after waits for n reports past the first skip and returns them, with
// the runtimes the control plane then holds.
func (s *recording) after(t *testing.T, skip, n int) ([]*tenantagentv1.HealthReport, []*tenantagentv1.RuntimeStatus) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		if len(s.reports) >= skip+n {
			defer s.mu.Unlock()
			return append([]*tenantagentv1.HealthReport(nil), s.reports[skip:skip+n]...), s.held
		}
		s.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d health reports", skip+n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *recording) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reports)
}

// runReporting runs an agent against a recording control plane that
// accepts unchanged runtimes or not; the agent's inventory is what the
// returned pointer holds, on sha256:old at first.
func runReporting(t *testing.T, accepts bool) (*recording, *atomic.Pointer[[]*tenantagentv1.RuntimeStatus]) {
	t.Helper()
	srv := &recording{accepts: accepts}
	inventory := &atomic.Pointer[[]*tenantagentv1.RuntimeStatus]{}
	inventory.Store(inventoryOn("sha256:old"))
	runUntilTestEnds(t, Config{Addr: serve(t, srv), Creds: insecure.NewCredentials(),
		Inventory: func(context.Context) ([]*tenantagentv1.RuntimeStatus, error) {
			// A fresh copy each time, as Docker's inventory is.
			var out []*tenantagentv1.RuntimeStatus
			for _, r := range *inventory.Load() {
				out = append(out, proto.CloneOf(r))
			}
			return out, nil
		}})
	return srv, inventory
}

func inventoryOn(digest string) *[]*tenantagentv1.RuntimeStatus {
	return &[]*tenantagentv1.RuntimeStatus{{Runtime: "codex", ImageRepository: "registry.example/codex", Containers: []*tenantagentv1.ContainerStatus{
		{Name: "ws-1", Id: "c1", ImageDigest: digest}, {Name: "ws-2", Id: "c2", ImageDigest: digest}}}}
}

func TestReportsLeaveOutUnchangedRuntimesWhenTheControlPlaneAccepts(t *testing.T) {
	srv, inventory := runReporting(t, true)

	reports, held := srv.after(t, 0, 3)
	for i, r := range reports {
		if !r.GetRuntimesUnchanged() || len(r.GetRuntimes()) != 0 {
			t.Fatalf("report %d of an unchanged inventory: unchanged %v with %d runtimes; want unchanged and none", i, r.GetRuntimesUnchanged(), len(r.GetRuntimes()))
		}
	}
	if !sameRuntimes(held, *inventoryOn("sha256:old")) {
		t.Fatalf("the control plane holds %v; want Hello's inventory", held)
	}

	// A change is sent whole once, then left out again.
	seen := srv.count()
	inventory.Store(inventoryOn("sha256:new"))
	reports, held = srv.after(t, seen, 4)
	whole := 0
	for _, r := range reports {
		if !r.GetRuntimesUnchanged() {
			whole++
		}
	}
	if whole != 1 || !reports[3].GetRuntimesUnchanged() {
		t.Errorf("after a change, %d whole reports of four (the last unchanged %v); want one whole, then unchanged", whole, reports[3].GetRuntimesUnchanged())
	}
	if !sameRuntimes(held, *inventoryOn("sha256:new")) {
		t.Errorf("the control plane holds %v; want the new inventory", held)
	}
}

func TestReportsAreWholeForAControlPlaneThatDoesNotAccept(t *testing.T) {
	srv, _ := runReporting(t, false)
	reports, _ := srv.after(t, 0, 3)
	for i, r := range reports {
		if r.GetRuntimesUnchanged() || !sameRuntimes(r.GetRuntimes(), *inventoryOn("sha256:old")) {
			t.Errorf("report %d to an older control plane: unchanged %v, runtimes %v; want the whole inventory", i, r.GetRuntimesUnchanged(), r.GetRuntimes())
		}
	}
}

// sentReports is a stream that keeps the health reports sent on it.
type sentReports struct {
	tenantagentv1.AgentService_ConnectClient
	got []*tenantagentv1.HealthReport
}

func (s *sentReports) Send(m *tenantagentv1.AgentMessage) error {
	s.got = append(s.got, m.GetHealth())
	return nil
}

// However long runtimes stay unchanged, a whole report goes every
// wholeEvery, so a control plane whose record ever drifted is put right.
func TestUnchangedRuntimesAreSentWholeEveryWholeEvery(t *testing.T) {
	j, err := journal.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	inventory := inventoryOn("sha256:old")
	cfg := Config{Addr: "127.0.0.1:1", Creds: insecure.NewCredentials(), Runner: runner.New(runner.Config{Journal: j}),
		Inventory: func(context.Context) ([]*tenantagentv1.RuntimeStatus, error) { return *inventory, nil }}
	if err := cfg.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	r := &reporter{cfg: cfg, unchangedOK: true, held: *inventory, wholeAt: time.Now(), wholeEvery: time.Hour}
	stream := &sentReports{}
	send := func() *tenantagentv1.HealthReport {
		t.Helper()
		if err := r.send(context.Background(), stream); err != nil {
			t.Fatal(err)
		}
		return stream.got[len(stream.got)-1]
	}
	if h := send(); !h.GetRuntimesUnchanged() {
		t.Fatalf("a report within wholeEvery of Hello was whole")
	}
	r.wholeAt = time.Now().Add(-time.Hour)
	if h := send(); h.GetRuntimesUnchanged() || !sameRuntimes(h.GetRuntimes(), *inventory) {
		t.Fatalf("a report wholeEvery after the last whole one said unchanged %v, runtimes %v; want them whole", h.GetRuntimesUnchanged(), h.GetRuntimes())
	}
	if h := send(); !h.GetRuntimesUnchanged() {
		t.Errorf("the report after a whole one was whole again; want unchanged")
	}
}
