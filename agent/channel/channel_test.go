package channel

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/molecule-ai/tenant-agent/agent/journal"
	"github.com/molecule-ai/tenant-agent/agent/runner"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

// refusing is a control plane that refuses every stream with
// ResourceExhausted and a RetryInfo hint, and records when each came.
type refusing struct {
	tenantagentv1.UnimplementedAgentServiceServer
	hint time.Duration
	mu   sync.Mutex
	at   []time.Time
}

func (s *refusing) Connect(stream grpc.BidiStreamingServer[tenantagentv1.AgentMessage, tenantagentv1.ControlMessage]) error {
	s.mu.Lock()
	s.at = append(s.at, time.Now())
	s.mu.Unlock()
	st, err := status.New(codes.ResourceExhausted, "too many reconnects").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(s.hint)})
	if err != nil {
		return err
	}
	return st.Err()
}

func (s *refusing) dials() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.at...)
}

// run starts Run against a real gRPC server on loopback and returns the
// server and the agent's log.
func run(t *testing.T, srv *refusing, backoffMax time.Duration) *testlog.Buffer {
	t.Helper()
	return runWithBackoff(t, serve(t, srv), insecure.NewCredentials(), 10*time.Millisecond, backoffMax)
}

// serve serves srv on loopback until the test ends and returns its address.
func serve(t *testing.T, srv tenantagentv1.AgentServiceServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	tenantagentv1.RegisterAgentServiceServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

// runWithBackoff runs the channel on addr until the test ends and returns its
// log.
func runWithBackoff(t *testing.T, addr string, creds credentials.TransportCredentials, backoffBase, backoffMax time.Duration) *testlog.Buffer {
	t.Helper()
	return runUntilTestEnds(t, Config{Addr: addr, Creds: creds, BackoffBase: backoffBase, BackoffMax: backoffMax,
		Inventory: func(context.Context) ([]*tenantagentv1.RuntimeStatus, error) { return nil, nil }})
}

// runUntilTestEnds runs the channel with cfg, a journal and a runner, as tenant
// acme, until the test ends, and returns its log.
func runUntilTestEnds(t *testing.T, cfg Config) *testlog.Buffer {
	t.Helper()
	j, err := journal.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	logs := &testlog.Buffer{}
	cfg.Tenant, cfg.Runner, cfg.Logger = "acme", runner.New(runner.Config{Journal: j}), logs.Logger(t, "agent")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		Run(ctx, cfg)
	}()
	return logs
}

func waitDials(t *testing.T, srv *refusing, n int) []time.Time {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(srv.dials()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d dials, want %d", len(srv.dials()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return srv.dials()
}

// Refused with a retry hint, the agent redials no sooner than the hint
// (its own backoff would have been 10 ms), and says so once per wait.
func TestRedialHonoursRetryHint(t *testing.T) {
	srv := &refusing{hint: 1500 * time.Millisecond}
	logs := run(t, srv, 10*time.Second)
	at := waitDials(t, srv, 2)
	if gap := at[1].Sub(at[0]); gap < srv.hint {
		t.Errorf("redialed after %s, before the hint of %s", gap, srv.hint)
	}
	// Each refusal logs its wait once, before the next dial: never more
	// lines than dials so far (read after the log).
	logged := logs.String()
	if n, dials := strings.Count(logged, "control plane asked the agent to wait"), len(srv.dials()); n < 1 || n > dials {
		t.Errorf("logged the wait %d times in %d dials, want once per refusal:\n%s", n, dials, logged)
	}
	if !strings.Contains(logged, "retry_delay=1.5s") {
		t.Errorf("the log does not give the delay:\n%s", logged)
	}
}

// A hint beyond the backoff cap waits the cap: a control plane cannot
// park its agents for longer than their own backoff would.
func TestRetryHintCappedAtBackoffMax(t *testing.T) {
	srv := &refusing{hint: time.Hour}
	run(t, srv, 300*time.Millisecond)
	at := waitDials(t, srv, 2)
	if gap := at[1].Sub(at[0]); gap < 250*time.Millisecond || gap > 5*time.Second {
		t.Errorf("redialed after %s, want about the 300ms cap", gap)
	}
}

func TestHintedWait(t *testing.T) {
	for range 100 {
		if w := hintedWait(time.Second, time.Minute); w < time.Second || w > 1100*time.Millisecond {
			t.Fatalf("hintedWait(1s) = %s, want 1s plus at most 10%%", w)
		}
	}
	if _, ok := retryHint(status.Error(codes.Unavailable, "x")); ok {
		t.Errorf("a hint read from an Unavailable status without details")
	}
}
