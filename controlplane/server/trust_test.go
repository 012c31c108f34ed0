package server

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

const (
	idGlobex    = "spiffe://molecule.local/tenant/globex"
	idAcmeHost2 = "spiffe://molecule.local/tenant/acme/agent/host-2"
)

// agentListed returns ListAgents' entry for one identity.
func agentListed(t *testing.T, h *harness, tenant, id string) *controlplanev1.Agent {
	t.Helper()
	for _, a := range listedAgents(t, h.operator(), &controlplanev1.ListAgentsRequest{Tenant: tenant}) {
		if a.GetIdentity() == id {
			return a
		}
	}
	t.Fatalf("%s is not listed under tenant %s", id, tenant)
	return nil
}

// commandsOf is an agent's commands as stored, by ID, with their state.
func commandsOf(t *testing.T, h *harness, agent string) map[string]controlplanev1.CommandState {
	t.Helper()
	cmds, err := h.srv.store.ListCommands(ctx(t), store.CommandFilter{Agent: agent})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]controlplanev1.CommandState{}
	for _, c := range cmds {
		out[c.ID] = c.State
	}
	return out
}

// TestAReportIsTrustedOnlyForItsOwnAgent: a second identity of tenant acme
// reports globex's containers as its own. The claim is stored under that
// identity and tenant only, and the refresh it triggers goes to that
// agent only; globex's record and commands do not change.
func TestAReportIsTrustedOnlyForItsOwnAgent(t *testing.T) {
	h := newHarness(t, "acme", "acme/host-2", "globex")
	globexRuntime := cptest.Runtime("codex", repo, digestV1, 2)
	for i, c := range globexRuntime.GetContainers() {
		c.Name, c.Id = "globex-ws-"+string(rune('1'+i)), "globex-id-"+string(rune('1'+i))
	}
	globex := h.agent("globex", cptest.Options{Runtimes: []*tenantagentv1.RuntimeStatus{globexRuntime}})
	acme := h.agent("acme", codex(digestV1))

	// Everyone on the v2 pin, the rollout completed.
	events := promote(t, h.operator(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2})
	if len(kinds(events, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED)) != 1 {
		t.Fatalf("the rollout did not complete")
	}
	eventually(t, "globex reported on the pin", func() bool {
		rts := agentListed(t, h, "globex", idGlobex).GetRuntimes()
		return len(rts) == 1 && rts[0].GetOnPin() == 2
	})
	globexBefore := agentListed(t, h, "globex", idGlobex)
	globexCmdsBefore := commandsOf(t, h, idGlobex)
	globexRefreshes, acmeRefreshes := len(globex.Refreshes()), len(acme.Refreshes())

	// acme's second agent claims globex's containers, off the pin.
	claim := proto.Clone(globexRuntime).(*tenantagentv1.RuntimeStatus)
	liar := h.agent("acme-host-2", cptest.Options{Runtimes: []*tenantagentv1.RuntimeStatus{claim}})
	liar.WaitFor(wait, "the refresh reconcile issues for the claim", func([]*tenantagentv1.ControlMessage) bool { return len(liar.Refreshes()) == 1 })
	if err := liar.SendHealth(); err != nil {
		t.Fatal(err)
	}
	cmd := liar.Refreshes()[0]
	h.waitState(cmd.GetCommandId(), stateSucceeded)
	if got := h.command(cmd.GetCommandId()); got.Agent != idAcmeHost2 || got.Tenant != "acme" {
		t.Errorf("the claim's refresh is for %s of tenant %s, want %s of acme", got.Agent, got.Tenant, idAcmeHost2)
	}

	// The claim is acme/host-2's, listed under acme.
	if got := agentListed(t, h, "acme", idAcmeHost2).GetRuntimes()[0].GetStatus().GetContainers()[0].GetName(); got != "globex-ws-1" {
		t.Errorf("acme/host-2 lists container %q, want its claim globex-ws-1", got)
	}
	// globex: the same record, the same commands, no new refresh.
	globexAfter := agentListed(t, h, "globex", idGlobex)
	if !proto.Equal(globexBefore, globexAfter) {
		t.Errorf("globex's record changed:\nbefore %v\nafter  %v", globexBefore, globexAfter)
	}
	if after := commandsOf(t, h, idGlobex); !equalStates(globexCmdsBefore, after) {
		t.Errorf("globex's commands changed: %v -> %v", globexCmdsBefore, after)
	}
	if n := len(globex.Refreshes()); n != globexRefreshes {
		t.Errorf("globex got %d refreshes after the claim, want none", n-globexRefreshes)
	}
	// acme's first agent is not touched either: the refresh is per agent.
	if n := len(acme.Refreshes()); n != acmeRefreshes {
		t.Errorf("acme's first agent got %d refreshes after the claim, want none", n-acmeRefreshes)
	}
	if listed := listedAgents(t, h.operator(), &controlplanev1.ListAgentsRequest{Tenant: "globex"}); len(listed) != 1 {
		t.Errorf("globex lists %d agents, want its own one", len(listed))
	}
}

func equalStates(a, b map[string]controlplanev1.CommandState) bool {
	if len(a) != len(b) {
		return false
	}
	for id, s := range a {
		if b[id] != s {
			return false
		}
	}
	return true
}
