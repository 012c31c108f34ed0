package channel

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// A retry hint is waited instead of the backoff and is not a failure; a
// stream that lasted starts the backoff over, one that did not keeps it
// climbing.
func TestAttemptsBackOffUntilAStreamLasts(t *testing.T) {
	a := &attempts{base: time.Second, max: time.Minute, stable: time.Minute}
	now := time.Unix(1_000_000, 0)
	refused := errors.New("connection refused")
	for range 3 {
		if wait, hint := a.ended(time.Time{}, now, refused); hint != 0 || wait > a.max {
			t.Fatalf("a refused dial: wait %s, hint %s", wait, hint)
		}
	}
	hinted, _ := status.New(codes.ResourceExhausted, "busy").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(2 * time.Second)})
	wait, hint := a.ended(time.Time{}, now, hinted.Err())
	if hint != 2*time.Second || wait < hint || wait > hint+hint/10 || a.failures != 3 {
		t.Fatalf("a hint: wait %s, hint %s, failures %d; want the hint plus at most a tenth, failures still 3", wait, hint, a.failures)
	}
	a.ended(now.Add(-10*time.Second), now, refused)
	if a.failures != 4 {
		t.Fatalf("a stream of 10 s: failures %d; want 4 (it did not last)", a.failures)
	}
	a.ended(now.Add(-2*time.Minute), now, refused)
	if a.failures != 1 {
		t.Fatalf("a stream of 2 min: failures %d; want 1 (the backoff started over)", a.failures)
	}
}

// After the control plane asked for a reconnect, failed dials (the
// restarted process not listening yet) are retried within the first step
// of the backoff, however many; past the window the backoff climbs again.
func TestAttemptsDoNotClimbWhileTheControlPlaneRestarts(t *testing.T) {
	a := &attempts{base: time.Second, max: time.Minute, stable: time.Minute, failures: 7}
	now := time.Unix(1_000_000, 0)
	refused := errors.New("connection refused")
	a.requested(now.Add(2 * time.Second))
	for i := range 50 {
		if wait, _ := a.ended(time.Time{}, now.Add(time.Duration(i)*time.Second/2), refused); wait > a.base {
			t.Fatalf("failed dial %d during the restart: wait %s; want at most %s", i, wait, a.base)
		}
	}
	climbed := false
	for range 50 {
		if wait, _ := a.ended(time.Time{}, now.Add(time.Minute), refused); wait > a.base {
			climbed = true
		}
	}
	if !climbed {
		t.Errorf("past the restart window the backoff did not climb (failures %d)", a.failures)
	}
}

// shedding is a control plane over real mTLS that refuses its first
// streams with ResourceExhausted and a short retry hint, then welcomes,
// recording whether each connection resumed a TLS session.
type shedding struct {
	tenantagentv1.UnimplementedAgentServiceServer
	refuse  int
	hint    time.Duration
	mu      sync.Mutex
	resumed []bool
	welcome chan struct{}
}

func (s *shedding) Connect(stream grpc.BidiStreamingServer[tenantagentv1.AgentMessage, tenantagentv1.ControlMessage]) error {
	p, _ := peer.FromContext(stream.Context())
	state, _ := mtls.ConnectionState(p.AuthInfo)
	s.mu.Lock()
	s.resumed = append(s.resumed, state.DidResume)
	n := len(s.resumed)
	s.mu.Unlock()
	if n <= s.refuse {
		st, _ := status.New(codes.ResourceExhausted, "at the handshake bound").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(s.hint)})
		return st.Err()
	}
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := stream.Send(&tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Welcome{Welcome: &tenantagentv1.Welcome{}}}); err != nil {
		return err
	}
	close(s.welcome)
	<-stream.Context().Done()
	return nil
}

// Told to come back in 100 ms, twice, the agent is welcomed soon, though
// its own backoff would be up to an hour; its redials resume the TLS
// session of its first connection.
func TestAgentHonoursTheHintAndResumes(t *testing.T) {
	p := pkitest.New(t, "acme")
	srv := &shedding{refuse: 2, hint: 100 * time.Millisecond, welcome: make(chan struct{})}
	gs := grpc.NewServer(grpc.Creds(mtls.ServerCredentials(p.Source(t, "controlplane"), mtls.ServerOptions{TrustDomain: pkitest.TrustDomain, Logger: quiet})))
	tenantagentv1.RegisterAgentServiceServer(gs, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	logs := runWithBackoff(t, lis.Addr().String(), mtls.ClientCredentials(p.Source(t, "agent-acme"), "localhost"), time.Hour, time.Hour)
	select {
	case <-srv.welcome:
	case <-time.After(20 * time.Second):
		t.Fatalf("not welcomed in 20 s after two hints of 100 ms:\n%s", logs.String())
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.resumed) != 3 || srv.resumed[0] || !srv.resumed[1] || !srv.resumed[2] {
		t.Fatalf("connections resumed a session: %v; want a full handshake, then resumptions", srv.resumed)
	}
}
