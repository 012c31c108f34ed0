package server

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/controlplane/auth"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// Each listener serves only its own services, and every method served has
// a role rule.
func TestListenersServeOnlyTheirServices(t *testing.T) {
	h := newHarness(t)
	want := map[string][]string{
		"agent": {tenantagentv1.AgentService_ServiceDesc.ServiceName},
		"admin": {controlplanev1.AdminService_ServiceDesc.ServiceName, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"},
	}
	for name, srv := range map[string]*grpc.Server{"agent": h.srv.agentSrv, "admin": h.srv.adminSrv} {
		info := srv.GetServiceInfo()
		if len(info) != len(want[name]) {
			t.Errorf("%s listener serves %d services, want %v", name, len(info), want[name])
		}
		for _, svc := range want[name] {
			if _, ok := info[svc]; !ok {
				t.Errorf("%s listener does not serve %s", name, svc)
			}
			for _, m := range info[svc].Methods {
				if _, ok := auth.Rules["/"+svc+"/"+m.Name]; !ok {
					t.Errorf("/%s/%s has no role rule", svc, m.Name)
				}
			}
		}
	}
}

func TestNewerRefreshSupersedesUnsentOne(t *testing.T) {
	h := newHarness(t, "away")
	a := h.agent("away", codex(digestV1))
	a.Close()
	h.waitConnected("spiffe://molecule.local/tenant/away", false)
	older := refresh(t, h.operator(), "away", digestV1)
	newer := refresh(t, h.operator(), "away", digestV2)
	old := h.command(older)
	if old.State != controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED || !strings.Contains(old.Error, newer) {
		t.Fatalf("older command: %v %q, want SUPERSEDED by %s", old.State, old.Error, newer)
	}
	back := h.agent("away", codex(digestV1))
	h.waitState(newer, stateSucceeded)
	if r := back.Refreshes(); len(r) != 1 || r[0].GetCommandId() != newer {
		t.Errorf("agent received %v, want only the newer refresh", r)
	}
}

func TestCommandsExpireWhenTheirAgentStaysAway(t *testing.T) {
	h := newHarness(t, "gone")
	h.stop()
	h.start(func(c *Config) { c.CommandTTL = 50 * time.Millisecond })
	a := h.agent("gone", codex(digestV1))
	a.Close()
	h.waitConnected("spiffe://molecule.local/tenant/gone", false)
	id := refresh(t, h.operator(), "gone", digestV2)
	time.Sleep(60 * time.Millisecond)
	h.srv.dispatcher.ExpireNow(ctx(t))
	c := h.command(id)
	if c.State != controlplanev1.CommandState_COMMAND_STATE_EXPIRED || !strings.Contains(c.Error, "passed before the command started") {
		t.Fatalf("command: %v %q, want EXPIRED", c.State, c.Error)
	}
	back := h.agent("gone", codex(digestV1))
	if err := back.SendHealth(); err != nil {
		t.Fatal(err)
	}
	h.operator().ListAgents(ctx(t), &controlplanev1.ListAgentsRequest{})
	for _, r := range back.Refreshes() {
		if r.GetCommandId() == id {
			t.Errorf("an expired command was delivered")
		}
	}
}

// Agent records are written behind; a graceful stop flushes them, so the
// fleet (and an offline tenant's runtimes) survive a restart.
func TestAgentRecordsSurviveARestart(t *testing.T) {
	h := newHarness(t, "remembered")
	a := h.agent("remembered", codex(digestV1))
	a.Close()
	h.waitConnected("spiffe://molecule.local/tenant/remembered", false)
	h.restart()
	resp, err := h.operator().ListAgents(ctx(t), &controlplanev1.ListAgentsRequest{Tenant: "remembered"})
	if err != nil || len(resp.GetAgents()) != 1 {
		t.Fatalf("agents after restart: %v, %v", resp, err)
	}
	ag := resp.GetAgents()[0]
	if ag.GetConnected() || ag.GetHostname() != "fake-host" || len(ag.GetRuntimes()) != 1 || len(ag.GetRuntimes()[0].GetStatus().GetContainers()) != 2 {
		t.Errorf("agent after restart: %v", ag)
	}
	// And it is still a known tenant: a refresh waits for it.
	if id := refresh(t, h.operator(), "remembered", digestV2); h.command(id).State != statePending {
		t.Errorf("refresh for the remembered tenant: %v", h.command(id).State)
	}
}

// Finished commands older than --history-retention are pruned (at start,
// then hourly); unfinished ones stay whatever their age.
func TestHistoryRetentionPrunesFinishedCommands(t *testing.T) {
	h := newHarness(t, "old", "waiting")
	h.agent("old", codex(digestV1))
	w := h.agent("waiting", codex(digestV1))
	w.Close()
	h.waitConnected("spiffe://molecule.local/tenant/waiting", false)
	done := refresh(t, h.operator(), "old", digestV2)
	h.waitState(done, stateSucceeded)
	pending := refresh(t, h.operator(), "waiting", digestV2)

	h.stop()
	time.Sleep(10 * time.Millisecond)
	h.start(func(c *Config) { c.HistoryRetention = time.Millisecond })
	eventually(t, "the finished command pruned", func() bool {
		_, err := h.operator().GetCommand(ctx(t), &controlplanev1.GetCommandRequest{CommandId: done})
		return status.Code(err) == codes.NotFound
	})
	if h.command(pending).State != statePending {
		t.Errorf("an unfinished command was pruned or changed")
	}
}
