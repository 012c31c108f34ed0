package server

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

const (
	stateRunning   = controlplanev1.CommandState_COMMAND_STATE_RUNNING
	statePending   = controlplanev1.CommandState_COMMAND_STATE_PENDING
	stateSucceeded = controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED
)

// refresh starts RefreshRuntimeImage and returns the command ID from its
// first event; the command goes on after the call ends.
func refresh(t *testing.T, admin controlplanev1.AdminServiceClient, tenant, digest string) string {
	t.Helper()
	c, cancel := contextWithCancel(t)
	defer cancel()
	stream, err := admin.RefreshRuntimeImage(c, &controlplanev1.RefreshRuntimeImageRequest{Tenant: tenant, Runtime: "codex", ImageDigest: digest})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("refresh %s: %v", tenant, err)
	}
	return resp.GetEvent().GetCommand().GetCommandId()
}

func (h *harness) command(id string) *store.Command {
	h.t.Helper()
	c, err := h.srv.store.GetCommand(ctx(h.t), id)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

func (h *harness) waitState(id string, want controlplanev1.CommandState) {
	h.t.Helper()
	eventually(h.t, "command "+id+" in "+want.String(), func() bool { return h.command(id).State == want })
}

func TestRestartKeepsPendingAndRunningCommands(t *testing.T) {
	h := newHarness(t, "runner", "sleeper")
	sleeper := h.agent("sleeper", codex(digestV1))
	sleeper.Close()
	h.waitConnected("spiffe://molecule.local/tenant/sleeper", false)
	runner := h.agent("runner", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.Hang})

	running := refresh(t, h.operator(), "runner", digestV2)
	pending := refresh(t, h.operator(), "sleeper", digestV2)
	h.waitState(running, stateRunning)
	if got := h.command(pending).State; got != statePending {
		t.Fatalf("offline tenant's command is %v, want PENDING", got)
	}
	runner.Close()

	h.restart() // same SQLite file

	if got := h.command(pending).State; got != statePending {
		t.Fatalf("after restart the pending command is %v", got)
	}
	// The runner comes back still executing its command, and so says in Hello.
	back := h.agent("runner", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.Hang,
		Hello: &tenantagentv1.Hello{RunningCommandIds: []string{running}}})
	sleeperBack := h.agent("sleeper", codex(digestV1))
	sleeperBack.WaitFor(wait, "the pending refresh", func([]*tenantagentv1.ControlMessage) bool { return len(sleeperBack.Refreshes()) == 1 })
	h.waitState(pending, stateSucceeded)

	// The running command is not sent again; its replayed result lands once.
	result := cptest.Succeed(&tenantagentv1.RefreshRuntimeImage{CommandId: running, ImageRepository: repo, ImageDigest: digestV2})
	for range 2 {
		if err := back.SendResult(result); err != nil {
			t.Fatal(err)
		}
	}
	back.WaitFor(wait, "two ResultReceived", func(msgs []*tenantagentv1.ControlMessage) bool { return countResultReceived(msgs, running) == 2 })
	if n := len(back.Refreshes()); n != 0 {
		t.Errorf("a command the agent said it runs was sent again (%d refreshes)", n)
	}
	c := h.command(running)
	if c.State != stateSucceeded || !proto.Equal(c.Result, result) {
		t.Fatalf("running command after replay: %v %v", c.State, c.Result)
	}
	evs, _ := h.srv.store.ListEvents(ctx(t), running)
	finished := 0
	for _, ev := range evs {
		if ev.State == stateSucceeded {
			finished++
		}
	}
	if finished != 1 {
		t.Errorf("%d SUCCEEDED events, want the result recorded once", finished)
	}
}

func countResultReceived(msgs []*tenantagentv1.ControlMessage, id string) int {
	n := 0
	for _, m := range msgs {
		if m.GetResultReceived().GetCommandId() == id {
			n++
		}
	}
	return n
}

func TestRunningCommandUnknownToReconnectingAgentFails(t *testing.T) {
	h := newHarness(t, "forgetful")
	a := h.agent("forgetful", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.Hang})
	id := refresh(t, h.operator(), "forgetful", digestV2)
	h.waitState(id, stateRunning)
	a.Close()
	h.agent("forgetful", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.Hang}) // its journal was wiped
	h.waitState(id, controlplanev1.CommandState_COMMAND_STATE_FAILED)
	if !strings.Contains(h.command(id).Error, "journal was lost") {
		t.Errorf("error = %q", h.command(id).Error)
	}
}

func TestResultsFromTheWrongPlaceAreRefused(t *testing.T) {
	h := newHarness(t, "owner", "intruder")
	owner := h.agent("owner", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.Hang})
	intruder := h.agent("intruder", codex(digestV1))
	id := refresh(t, h.operator(), "owner", digestV2)
	h.waitState(id, stateRunning)
	before := h.command(id)

	forged := cptest.Succeed(&tenantagentv1.RefreshRuntimeImage{CommandId: id, ImageRepository: repo, ImageDigest: digestV2})
	if err := intruder.SendResult(forged); err != nil {
		t.Fatal(err)
	}
	unknown := cptest.Succeed(&tenantagentv1.RefreshRuntimeImage{CommandId: "c-never-issued"})
	if err := intruder.SendResult(unknown); err != nil {
		t.Fatal(err)
	}
	// The unknown one is confirmed (so the agent stops resending it); the
	// forged one is not.
	intruder.WaitFor(wait, "ResultReceived for the unknown command", func(m []*tenantagentv1.ControlMessage) bool { return countResultReceived(m, "c-never-issued") == 1 })
	if n := countResultReceived(intruder.Received(), id); n != 0 {
		t.Errorf("the intruder's forged result was confirmed")
	}
	after := h.command(id)
	if after.State != before.State || after.Result != nil || !after.UpdatedAt.Equal(before.UpdatedAt) {
		t.Errorf("a result from another tenant changed the command: %v -> %v", before.State, after.State)
	}
	if _, err := h.srv.store.GetCommand(ctx(t), "c-never-issued"); err == nil {
		t.Errorf("an unknown command appeared in the store")
	}
	logs := h.logs.String()
	for _, want := range []string{"another agent's command refused", "unknown command ignored"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}

	// The owner's result lands; a duplicate changes nothing.
	result := cptest.Succeed(&tenantagentv1.RefreshRuntimeImage{CommandId: id, ImageRepository: repo, ImageDigest: digestV2})
	if err := owner.SendResult(result); err != nil {
		t.Fatal(err)
	}
	h.waitState(id, stateSucceeded)
	first := h.command(id)
	dup := proto.Clone(result).(*tenantagentv1.CommandResult)
	dup.Error = "a different story"
	if err := owner.SendResult(dup); err != nil {
		t.Fatal(err)
	}
	owner.WaitFor(wait, "two ResultReceived", func(m []*tenantagentv1.ControlMessage) bool { return countResultReceived(m, id) == 2 })
	if again := h.command(id); !proto.Equal(again.Result, first.Result) || !again.UpdatedAt.Equal(first.UpdatedAt) {
		t.Errorf("a duplicate result changed the stored one")
	}
	if !strings.Contains(h.logs.String(), "duplicate result ignored") {
		t.Errorf("duplicate not logged")
	}
}

// A stuck agent never reads its stream. Fanning out to it and to others
// must not wait for it: the others get their commands and it is cut off.
func TestStuckAgentDoesNotBlockFanOut(t *testing.T) {
	h := newHarness(t, "stuck", "quick-a", "quick-b")
	h.stop()
	h.start(func(c *Config) { c.SendQueue = 8 })
	// A small fixed window (no BDP growth) so the server's writes block
	// soon, as for a real agent that stopped reading.
	stuck := h.agent("stuck", cptest.Options{Runtimes: codex(digestV1).Runtimes, NoRead: true,
		DialOptions: []grpc.DialOption{grpc.WithInitialWindowSize(64 << 10), grpc.WithInitialConnWindowSize(64 << 10)}})
	_ = stuck
	quick := []*cptest.Agent{h.agent("quick-a", codex(digestV1)), h.agent("quick-b", codex(digestV1))}

	now := time.Now()
	var cmds []*store.Command
	for i := range 3000 {
		cmds = append(cmds, &store.Command{Agent: "spiffe://molecule.local/tenant/stuck", Tenant: "stuck", Kind: controlplanev1.CommandKind_COMMAND_KIND_PREFETCH,
			Runtime: "codex", Repository: repo + strings.Repeat("x", i%50), Digest: digestV2, RequestedBy: "test", Deadline: now.Add(time.Hour)})
	}
	for _, tenant := range []string{"quick-a", "quick-b"} {
		cmds = append(cmds, &store.Command{Agent: "spiffe://molecule.local/tenant/" + tenant, Tenant: tenant, Kind: controlplanev1.CommandKind_COMMAND_KIND_PREFETCH,
			Runtime: "codex", Repository: repo, Digest: digestV2, RequestedBy: "test", Deadline: now.Add(time.Hour)})
	}
	if err := h.srv.dispatcher.Issue(ctx(t), cmds); err != nil {
		t.Fatal(err)
	}
	for _, a := range quick {
		a.WaitFor(wait, "its prefetch", func(m []*tenantagentv1.ControlMessage) bool {
			for _, msg := range m {
				if msg.GetPrefetch() != nil {
					return true
				}
			}
			return false
		})
	}
	h.waitConnected("spiffe://molecule.local/tenant/stuck", false)
	if !strings.Contains(h.logs.String(), "not reading its stream") {
		t.Errorf("the stuck agent's disconnect was not logged with its reason")
	}
	// Nothing is lost: what was never sent waits as PENDING for the next
	// connection.
	pending, _ := h.srv.store.ListCommands(ctx(t), store.CommandFilter{Tenant: "stuck", States: []controlplanev1.CommandState{statePending}})
	if len(pending) == 0 {
		t.Errorf("no command left PENDING for the stuck agent")
	}
}

func TestHelloClaimingAnotherTenantIsRefused(t *testing.T) {
	h := newHarness(t, "honest")
	a := cptest.Connect(t, h.srv.AgentAddr(), h.pki.Files("agent-honest"), cptest.Options{Hello: &tenantagentv1.Hello{Tenant: "victim"}})
	<-a.Done()
	if status.Code(a.Err()) != codes.PermissionDenied || !strings.Contains(a.Err().Error(), `Hello claims tenant "victim"`) {
		t.Fatalf("stream ended with %v, want PermissionDenied naming the claim", a.Err())
	}
	if h.srv.sessions.Len() != 0 {
		t.Errorf("a session was registered")
	}
}

func TestSecondConnectionReplacesTheFirst(t *testing.T) {
	h := newHarness(t, "twice")
	first := h.agent("twice", codex(digestV1))
	second := h.agent("twice", codex(digestV1))
	<-first.Done()
	if status.Code(first.Err()) != codes.Aborted {
		t.Errorf("first stream ended with %v, want Aborted (replaced)", first.Err())
	}
	id := refresh(t, h.operator(), "twice", digestV2)
	h.waitState(id, stateSucceeded)
	if len(second.Refreshes()) != 1 {
		t.Errorf("the new connection did not get the command")
	}
}

// An agent that keeps its side open when asked to end the stream (one
// built before EndStream) is cut off with its connection: its handler
// cannot return before, and an older stream must not stay.
func TestAgentThatDoesNotEndItsStreamIsCutOff(t *testing.T) {
	h := newHarness(t, "old")
	opts := codex(digestV1)
	opts.IgnoreEndStream = true
	first := h.agent("old", opts)
	start := time.Now()
	second := h.agent("old", codex(digestV1))
	<-first.Done()
	took := time.Since(start)
	if status.Code(first.Err()) != codes.Unavailable || took < cutOffAfterForTests/2 || took > 5*cutOffAfterForTests {
		t.Errorf("older stream ended after %s with %v; want its connection closed (Unavailable) about %s after it was asked to end", took, first.Err(), cutOffAfterForTests)
	}
	if n := len(first.Received()); n == 0 || first.Received()[n-1].GetEndStream() == nil {
		t.Errorf("the older stream's last message is not EndStream")
	}
	id := refresh(t, h.operator(), "old", digestV2)
	h.waitState(id, stateSucceeded)
	if len(second.Refreshes()) != 1 {
		t.Errorf("the new connection did not get the command")
	}
}

// cutOffAfterForTests is agentsvc's cut-off.
const cutOffAfterForTests = time.Second

func TestDenyTenantDisconnectsAtOnce(t *testing.T) {
	h := newHarness(t, "bad", "good")
	bad := h.agent("bad", codex(digestV1))
	good := h.agent("good", codex(digestV1))
	resp, err := h.operator().DenyTenant(ctx(t), &controlplanev1.DenyTenantRequest{Tenant: "bad", Reason: "compromised host"})
	if err != nil || resp.GetDisconnected() != 1 {
		t.Fatalf("DenyTenant = %v, %v", resp, err)
	}
	<-bad.Done()
	if status.Code(bad.Err()) != codes.PermissionDenied {
		t.Errorf("denied agent's stream ended with %v", bad.Err())
	}
	// Refused on reconnect, at the call with the reason (the handshake
	// completes so the agent can be told); the denial survives a restart.
	h.restart()
	if err := deniedAgentDial(t, h, "agent-bad"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "compromised host") {
		t.Errorf("denied agent reconnecting: %v, want PermissionDenied with the reason", err)
	}
	_ = good
	h.agent("good", codex(digestV1))
	if _, err := h.operator().AllowTenant(ctx(t), &controlplanev1.AllowTenantRequest{Tenant: "bad"}); err != nil {
		t.Fatal(err)
	}
	h.agent("bad", codex(digestV1))
}
