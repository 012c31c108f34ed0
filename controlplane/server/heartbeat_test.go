package server

import (
	"testing"

	"google.golang.org/protobuf/proto"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// A report that says its runtimes are unchanged keeps the ones the agent
// sent before on the stream; one that also lists runtimes is refused.
func TestUnchangedRuntimesKeepTheAgentsPreviousReport(t *testing.T) {
	h := newHarness(t, "acme")
	admin := h.operator()
	hello := codex(digestV1)
	a := h.agent("acme", hello)
	if w := a.Received()[0].GetWelcome(); !w.GetAcceptsUnchangedRuntimes() {
		t.Fatalf("Welcome %v does not accept unchanged runtimes", w)
	}
	watch, err := admin.WatchAgents(ctx(t), &controlplanev1.WatchAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	next := func(kind controlplanev1.AgentEventKind) *controlplanev1.Agent {
		t.Helper()
		for {
			ev, err := watch.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if ev.GetKind() == kind {
				return ev.GetAgent()
			}
		}
	}
	next(controlplanev1.AgentEventKind_AGENT_EVENT_KIND_SYNCED)

	// Unchanged, then unchanged with a new agent version (a record that
	// changed, the runtimes kept).
	unchanged := &tenantagentv1.HealthReport{DockerReachable: true, RuntimesUnchanged: true}
	newVersion := &tenantagentv1.HealthReport{DockerReachable: true, RuntimesUnchanged: true, AgentVersion: "fake-2"}
	for _, report := range []*tenantagentv1.HealthReport{unchanged, newVersion} {
		if err := a.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Health{Health: report}}); err != nil {
			t.Fatal(err)
		}
		got := next(controlplanev1.AgentEventKind_AGENT_EVENT_KIND_HEALTH)
		if len(got.GetRuntimes()) != 1 || !proto.Equal(got.GetRuntimes()[0].GetStatus(), hello.Runtimes[0]) {
			t.Fatalf("after %v the agent shows %v; want Hello's runtimes", report, got.GetRuntimes())
		}
	}

	both := proto.CloneOf(unchanged)
	both.Runtimes = codex(digestV2).Runtimes
	if err := a.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Health{Health: both}}); err != nil {
		t.Fatal(err)
	}
	<-a.Done()
	wantRefusal(t, a.Err(), "runtimes_unchanged")
	listed := listedAgents(t, admin, &controlplanev1.ListAgentsRequest{})
	if len(listed) != 1 || listed[0].GetRuntimes()[0].GetStatus().GetContainers()[0].GetImageDigest() != digestV1 {
		t.Errorf("after a refused report the agent shows %v; want Hello's runtimes kept", listed)
	}
}
