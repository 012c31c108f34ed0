// Package cptest helps test the control plane from outside: a fake agent
// that speaks the real protocol over real mTLS, with an executor that
// answers at once instead of touching Docker.
package cptest

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// Executor decides a command's outcome. Returning nil means the fake agent
// acks the command but never finishes it (the test finishes it by hand).
type Executor func(cmd *tenantagentv1.RefreshRuntimeImage) *tenantagentv1.CommandResult

// Succeed moves every container of the runtime to the digest.
func Succeed(cmd *tenantagentv1.RefreshRuntimeImage) *tenantagentv1.CommandResult {
	return &tenantagentv1.CommandResult{CommandId: cmd.GetCommandId(), Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED,
		ImageRef: cmd.GetImageRepository() + "@" + cmd.GetImageDigest(), PulledBytes: 1 << 20, PullDuration: durationpb.New(time.Second)}
}

// RollBack reports the recreate rolled back.
func RollBack(cmd *tenantagentv1.RefreshRuntimeImage) *tenantagentv1.CommandResult {
	return &tenantagentv1.CommandResult{CommandId: cmd.GetCommandId(), Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_ROLLED_BACK,
		Error: "new container unhealthy", FailedPhase: tenantagentv1.CommandPhase_COMMAND_PHASE_HEALTH_GATE}
}

// Hang never finishes.
func Hang(*tenantagentv1.RefreshRuntimeImage) *tenantagentv1.CommandResult { return nil }

// Agent is a fake tenant agent.
type Agent struct {
	t      testing.TB
	conn   *grpc.ClientConn
	stream tenantagentv1.AgentService_ConnectClient
	cancel context.CancelFunc
	// sendMu keeps sends and CloseSend apart, as gRPC requires.
	sendMu          sync.Mutex
	ignoreEndStream bool

	mu       sync.Mutex
	runtimes []*tenantagentv1.RuntimeStatus
	received []*tenantagentv1.ControlMessage
	executor Executor
	changed  chan struct{}
	done     chan struct{}
	err      error
}

// Options shape a fake agent.
type Options struct {
	// Runtimes the agent reports; a runtime's containers move to a
	// refresh's digest when the executor succeeds.
	Runtimes []*tenantagentv1.RuntimeStatus
	Executor Executor
	// Hello overrides fields of the Hello (e.g. a claimed tenant).
	Hello *tenantagentv1.Hello
	// DialOptions are added to the connection (e.g. window sizes).
	DialOptions []grpc.DialOption
	// NoRead leaves the stream unread after Hello: a stuck agent.
	NoRead bool
	// IgnoreEndStream keeps the agent's side of the stream open when the
	// control plane asks it to end the stream, as an agent built before
	// EndStream does.
	IgnoreEndStream bool
}

// Runtime is a RuntimeStatus with n containers on digest.
func Runtime(name, repo, digest string, n int) *tenantagentv1.RuntimeStatus {
	rt := &tenantagentv1.RuntimeStatus{Runtime: name, ImageRepository: repo}
	for i := range n {
		rt.Containers = append(rt.Containers, &tenantagentv1.ContainerStatus{
			Name: name + "-" + string(rune('a'+i)), Id: "id-" + name + string(rune('a'+i)), ImageRef: repo + "@" + digest, ImageDigest: digest,
			State: tenantagentv1.ContainerState_CONTAINER_STATE_RUNNING, Health: tenantagentv1.ContainerHealth_CONTAINER_HEALTH_HEALTHY,
		})
	}
	return rt
}

// Connect dials addr with the certificate files and sends Hello; it fails
// the test if the stream cannot even be opened.
func Connect(t testing.TB, addr string, files mtls.Files, opts Options) *Agent {
	t.Helper()
	a, err := Dial(t, addr, files, opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Dial is Connect that returns the error of opening the stream or sending
// Hello, for tests where the control plane must refuse the agent.
func Dial(t testing.TB, addr string, files mtls.Files, opts Options) (*Agent, error) {
	t.Helper()
	src, err := mtls.NewSource(files, nil)
	if err != nil {
		t.Fatal(err)
	}
	dial := append([]grpc.DialOption{grpc.WithTransportCredentials(mtls.ClientCredentials(src, "localhost"))}, opts.DialOptions...)
	conn, err := grpc.NewClient(addr, dial...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := tenantagentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		cancel()
		conn.Close()
		return nil, err
	}
	if opts.Executor == nil {
		opts.Executor = Succeed
	}
	a := &Agent{t: t, conn: conn, stream: stream, cancel: cancel, executor: opts.Executor, changed: make(chan struct{}, 1), done: make(chan struct{}), ignoreEndStream: opts.IgnoreEndStream}
	for _, r := range opts.Runtimes {
		a.runtimes = append(a.runtimes, proto.Clone(r).(*tenantagentv1.RuntimeStatus))
	}
	hello := &tenantagentv1.Hello{AgentVersion: "fake", Hostname: "fake-host", DockerVersion: "fake", DockerReachable: true, Runtimes: a.runtimes}
	if opts.Hello != nil {
		proto.Merge(hello, opts.Hello)
	}
	if err := stream.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Hello{Hello: hello}}); err != nil {
		if errors.Is(err, io.EOF) {
			// The server already ended the stream: its status says why.
			_, err = stream.Recv()
		}
		cancel()
		conn.Close()
		return nil, err
	}
	t.Cleanup(a.Close)
	if opts.NoRead {
		close(a.done)
		return a, nil
	}
	go a.loop()
	return a, nil
}

// Close ends the agent's stream and connection.
func (a *Agent) Close() {
	a.cancel()
	a.conn.Close()
	<-a.done
}

// Err is why the stream ended, once it has.
func (a *Agent) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// Done is closed when the stream has ended.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Send sends a message on the agent's stream.
func (a *Agent) Send(msg *tenantagentv1.AgentMessage) error {
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	return a.stream.Send(msg)
}

// SendHealth sends a health report of the agent's current runtimes.
func (a *Agent) SendHealth() error {
	a.mu.Lock()
	h := &tenantagentv1.HealthReport{ObservedAt: timestamppb.Now(), AgentVersion: "fake", DockerReachable: true}
	for _, rt := range a.runtimes { // copies: a refresh changes them while the report is marshaled
		h.Runtimes = append(h.Runtimes, proto.Clone(rt).(*tenantagentv1.RuntimeStatus))
	}
	a.mu.Unlock()
	return a.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Health{Health: h}})
}

// Received returns every message received so far.
func (a *Agent) Received() []*tenantagentv1.ControlMessage {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*tenantagentv1.ControlMessage(nil), a.received...)
}

// Refreshes returns the refresh commands received so far.
func (a *Agent) Refreshes() []*tenantagentv1.RefreshRuntimeImage {
	var out []*tenantagentv1.RefreshRuntimeImage
	for _, m := range a.Received() {
		if r := m.GetRefresh(); r != nil {
			out = append(out, r)
		}
	}
	return out
}

// WaitFor waits until cond holds over the received messages.
func (a *Agent) WaitFor(timeout time.Duration, what string, cond func([]*tenantagentv1.ControlMessage) bool) {
	a.t.Helper()
	deadline := time.After(timeout)
	for {
		if cond(a.Received()) {
			return
		}
		select {
		case <-a.changed:
		case <-deadline:
			a.t.Fatalf("timed out after %s waiting for %s; received %d messages, stream error %v", timeout, what, len(a.Received()), a.Err())
		}
	}
}

func (a *Agent) loop() {
	defer close(a.done)
	for {
		msg, err := a.stream.Recv()
		a.mu.Lock()
		if err != nil {
			a.err = err
			a.mu.Unlock()
			a.notify()
			return
		}
		a.received = append(a.received, msg)
		a.mu.Unlock()
		a.notify()
		switch {
		case msg.GetRefresh() != nil:
			a.run(msg.GetRefresh())
		case msg.GetEndStream() != nil && !a.ignoreEndStream:
			a.sendMu.Lock()
			_ = a.stream.CloseSend() // reading on, for the status
			a.sendMu.Unlock()
		case msg.GetPrefetch() != nil:
			p := msg.GetPrefetch()
			a.ack(p.GetCommandId())
			_ = a.Send(resultMsg(&tenantagentv1.CommandResult{CommandId: p.GetCommandId(), Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED}))
		}
	}
}

func (a *Agent) notify() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

func (a *Agent) ack(id string) {
	_ = a.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Ack{Ack: &tenantagentv1.CommandAck{CommandId: id}}})
}

func (a *Agent) run(cmd *tenantagentv1.RefreshRuntimeImage) {
	a.ack(cmd.GetCommandId())
	_ = a.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Progress{Progress: &tenantagentv1.CommandProgress{
		CommandId: cmd.GetCommandId(), Sequence: 1, Time: timestamppb.Now(), Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING,
		CurrentBytes: 512, TotalBytes: 1024, Message: "pulling " + cmd.GetImageDigest(),
	}}})
	res := a.executor(cmd)
	if res == nil {
		return
	}
	if res.GetOutcome() == tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		a.mu.Lock()
		for _, rt := range a.runtimes {
			if rt.GetRuntime() != cmd.GetRuntime() {
				continue
			}
			for _, c := range rt.GetContainers() {
				res.Containers = append(res.Containers, &tenantagentv1.ContainerResult{Name: c.GetName(), OldDigest: c.GetImageDigest(), NewDigest: cmd.GetImageDigest(),
					Outcome: tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED, WasRunning: true, Downtime: durationpb.New(300 * time.Millisecond)})
				c.ImageDigest, c.ImageRef = cmd.GetImageDigest(), cmd.GetImageRepository()+"@"+cmd.GetImageDigest()
			}
		}
		a.mu.Unlock()
	}
	_ = a.Send(resultMsg(res))
	_ = a.SendHealth()
}

func resultMsg(r *tenantagentv1.CommandResult) *tenantagentv1.AgentMessage {
	return &tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Result{Result: r}}
}

// SendResult sends a result by hand.
func (a *Agent) SendResult(r *tenantagentv1.CommandResult) error { return a.Send(resultMsg(r)) }
