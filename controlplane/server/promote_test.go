package server

import (
	"io"
	"strings"
	"testing"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// promote calls PromoteRuntimeImage and reads the rollout's events to the end.
func promote(t *testing.T, admin controlplanev1.AdminServiceClient, req *controlplanev1.PromoteRuntimeImageRequest) []*controlplanev1.RolloutEvent {
	t.Helper()
	stream, err := admin.PromoteRuntimeImage(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	var events []*controlplanev1.RolloutEvent
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return events
		}
		if err != nil {
			t.Fatalf("promote stream after %d events: %v", len(events), err)
		}
		events = append(events, resp.GetEvent())
	}
}

func kinds(events []*controlplanev1.RolloutEvent, k controlplanev1.RolloutEventKind) []*controlplanev1.RolloutEvent {
	var out []*controlplanev1.RolloutEvent
	for _, e := range events {
		if e.GetKind() == k {
			out = append(out, e)
		}
	}
	return out
}

func TestPromoteReachesConnectedAgentsAndOfflineTenantOnConnect(t *testing.T) {
	h := newHarness(t, "alpha", "bravo", "charlie", "delta")
	// delta was seen once and went offline before the promote.
	offline := h.agent("delta", codex(digestV1))
	offline.Close()
	h.waitConnected("spiffe://molecule.local/tenant/delta", false)

	online := map[string]*cptest.Agent{}
	for _, tenant := range []string{"alpha", "bravo", "charlie"} {
		online[tenant] = h.agent(tenant, codex(digestV1))
	}

	events := promote(t, h.operator(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2, Notes: "v2"})
	if len(kinds(events, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_PIN_RECORDED)) != 1 {
		t.Errorf("no PIN_RECORDED event")
	}
	if got := len(kinds(events, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_ISSUED)); got != 4 {
		t.Errorf("%d COMMAND_ISSUED events, want 4 (3 online + 1 offline)", got)
	}
	last := events[len(events)-1]
	if last.GetKind() != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED {
		t.Fatalf("last event %v, want COMPLETED", last)
	}
	if c := last.GetCounts(); c.GetTenants() != 4 || c.GetSucceeded() != 3 || c.GetFailed() != 0 {
		t.Errorf("counts = %v, want 4 tenants, 3 succeeded", c)
	}
	if !strings.Contains(last.GetMessage(), "1 waiting") {
		t.Errorf("final message %q does not say one tenant waits", last.GetMessage())
	}

	for tenant, a := range online {
		if got := a.Refreshes(); len(got) != 1 || got[0].GetImageDigest() != digestV2 || got[0].GetRuntime() != "codex" {
			t.Errorf("%s received refreshes %v, want exactly one to %s", tenant, got, digestV2)
		}
	}

	// The offline tenant gets its command when it connects.
	back := h.agent("delta", codex(digestV1))
	back.WaitFor(wait, "delta's refresh", func([]*tenantagentv1.ControlMessage) bool { return len(back.Refreshes()) == 1 })
	rolloutID := last.GetRolloutId()
	eventually(t, "all four commands of the rollout succeeded", func() bool {
		resp, err := h.operator().ListCommands(ctx(t), &controlplanev1.ListCommandsRequest{RolloutId: rolloutID})
		if err != nil || len(resp.GetCommands()) != 4 {
			return false
		}
		for _, c := range resp.GetCommands() {
			if c.GetState() != controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED || c.GetResult() == nil {
				return false
			}
		}
		return true
	})

	// Nothing issued a second refresh (reconcile saw the fleet on the pin).
	all, err := h.srv.store.ListCommands(ctx(t), store.CommandFilter{})
	if err != nil || len(all) != 4 {
		t.Errorf("store holds %d commands, want 4: %v", len(all), err)
	}
	pin, err := h.operator().GetRuntimePin(ctx(t), &controlplanev1.GetRuntimePinRequest{Runtime: "codex"})
	if err != nil || pin.GetPin().GetImageDigest() != digestV2 || pin.GetPin().GetPromotedBy() != "spiffe://molecule.local/operator/dev" || pin.GetPin().GetTemplateName() != "workspace-template-codex" {
		t.Errorf("pin = %v, %v", pin, err)
	}
}

func TestCanaryFailureHaltsBeforeTheFleet(t *testing.T) {
	h := newHarness(t, "canary", "fleet-a", "fleet-b")
	canary := h.agent("canary", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.RollBack})
	others := []*cptest.Agent{h.agent("fleet-a", codex(digestV1)), h.agent("fleet-b", codex(digestV1))}

	events := promote(t, h.operator(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2,
		Options: &controlplanev1.RolloutOptions{CanaryTenants: []string{"canary"}}})
	last := events[len(events)-1]
	if last.GetKind() != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED || !strings.Contains(last.GetMessage(), "canary tenant canary did not succeed") {
		t.Fatalf("last event = %v, want HALTED because of the canary", last)
	}
	if len(canary.Refreshes()) != 1 {
		t.Errorf("canary received %d refreshes", len(canary.Refreshes()))
	}
	for i, a := range others {
		if n := len(a.Refreshes()); n != 0 {
			t.Errorf("fleet tenant %d received %d refreshes after a failed canary", i, n)
		}
	}
	// A halted rollout freezes reconcile: health reports do not sneak the
	// pin onto the rest of the fleet.
	for _, a := range others {
		if err := a.SendHealth(); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := h.operator().ListCommands(ctx(t), &controlplanev1.ListCommandsRequest{Tenant: "fleet-a"})
	if err != nil || len(resp.GetCommands()) != 0 {
		t.Errorf("fleet-a has commands %v after the halt (%v)", resp.GetCommands(), err)
	}
}

func TestCanaryFirstThenHaltAfterFailures(t *testing.T) {
	h := newHarness(t, "canary", "f1", "f2", "f3", "f4")
	canary := h.agent("canary", codex(digestV1))
	fail := cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.RollBack}
	f1, f2 := h.agent("f1", fail), h.agent("f2", fail)
	f3, f4 := h.agent("f3", codex(digestV1)), h.agent("f4", codex(digestV1))

	events := promote(t, h.operator(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2,
		Options: &controlplanev1.RolloutOptions{CanaryTenants: []string{"canary"}, MaxParallelTenants: 1, HaltAfterFailures: 2}})

	issued := kinds(events, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_ISSUED)
	if len(issued) != 3 || issued[0].GetTenant() != "canary" || issued[0].GetPhase() != controlplanev1.RolloutPhase_ROLLOUT_PHASE_CANARY {
		t.Fatalf("issued = %v, want the canary first, then f1 and f2", issued)
	}
	last := events[len(events)-1]
	if last.GetKind() != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED {
		t.Fatalf("last event = %v, want HALTED", last)
	}
	if c := last.GetCounts(); c.GetSucceeded() != 1 || c.GetFailed() != 2 || c.GetSkipped() != 2 {
		t.Errorf("counts = %v, want 1 succeeded, 2 failed, 2 skipped", c)
	}
	if len(canary.Refreshes()) != 1 || len(f1.Refreshes()) != 1 || len(f2.Refreshes()) != 1 || len(f3.Refreshes()) != 0 || len(f4.Refreshes()) != 0 {
		t.Errorf("refreshes: canary %d f1 %d f2 %d f3 %d f4 %d; want 1 1 1 0 0",
			len(canary.Refreshes()), len(f1.Refreshes()), len(f2.Refreshes()), len(f3.Refreshes()), len(f4.Refreshes()))
	}
	if got := len(kinds(events, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_TENANT_SKIPPED)); got != 2 {
		t.Errorf("%d TENANT_SKIPPED events, want 2", got)
	}
}

func TestPrefetchPhaseRunsBeforeRefreshes(t *testing.T) {
	h := newHarness(t, "one", "two")
	agents := []*cptest.Agent{h.agent("one", codex(digestV1)), h.agent("two", codex(digestV1))}
	events := promote(t, h.operator(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2,
		Options: &controlplanev1.RolloutOptions{Prefetch: true, MaxParallelContainers: 2}})
	if last := events[len(events)-1]; last.GetKind() != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED || last.GetCounts().GetSucceeded() != 2 {
		t.Fatalf("last event %v", last)
	}
	var phases []controlplanev1.RolloutPhase
	for _, e := range kinds(events, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_PHASE_STARTED) {
		phases = append(phases, e.GetPhase())
	}
	if len(phases) != 2 || phases[0] != controlplanev1.RolloutPhase_ROLLOUT_PHASE_PREFETCH || phases[1] != controlplanev1.RolloutPhase_ROLLOUT_PHASE_FLEET {
		t.Errorf("phases = %v, want PREFETCH then FLEET", phases)
	}
	for i, a := range agents {
		var order []string
		for _, m := range a.Received() {
			switch {
			case m.GetPrefetch() != nil:
				order = append(order, "prefetch")
			case m.GetRefresh() != nil:
				order = append(order, "refresh")
			}
		}
		if strings.Join(order, ",") != "prefetch,refresh" {
			t.Errorf("agent %d received %v, want a prefetch then a refresh", i, order)
		}
		// The rollout's cap on parallel recreates reaches each refresh.
		for _, r := range a.Refreshes() {
			if r.GetOptions().GetMaxParallelContainers() != 2 {
				t.Errorf("agent %d's refresh options = %v, want max_parallel_containers 2", i, r.GetOptions())
			}
		}
	}
}

func TestRolloutOutlivesItsCallerAndARestart(t *testing.T) {
	h := newHarness(t, "first", "second")
	first := h.agent("first", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.Hang})
	h.agent("second", codex(digestV1))

	// The caller reads one event and goes away.
	c, cancel := contextWithCancel(t)
	stream, err := h.operator().PromoteRuntimeImage(c, &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2,
		Options: &controlplanev1.RolloutOptions{MaxParallelTenants: 1}})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	rolloutID := ev.GetEvent().GetRolloutId()
	cancel()
	first.WaitFor(wait, "its refresh", func([]*tenantagentv1.ControlMessage) bool { return len(first.Refreshes()) == 1 })
	cmdID := first.Refreshes()[0].GetCommandId()
	h.waitState(cmdID, stateRunning)

	// The control plane restarts while the first tenant's refresh runs.
	first.Close()
	h.restart()
	back := h.agent("first", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.Hang,
		Hello: &tenantagentv1.Hello{RunningCommandIds: []string{cmdID}}})
	second := h.agent("second", codex(digestV1))
	if err := back.SendResult(cptest.Succeed(&tenantagentv1.RefreshRuntimeImage{CommandId: cmdID, ImageRepository: repo, ImageDigest: digestV2})); err != nil {
		t.Fatal(err)
	}
	// The resumed rollout moves on to the second tenant and completes.
	second.WaitFor(wait, "the second tenant's refresh", func([]*tenantagentv1.ControlMessage) bool { return len(second.Refreshes()) == 1 })
	eventually(t, "the rollout completed", func() bool {
		ros, err := h.srv.store.ListRollouts(ctx(t), "", store.RolloutCompleted)
		return err == nil && len(ros) == 1 && ros[0].ID == rolloutID
	})
	cmds, _ := h.srv.store.ListCommands(ctx(t), store.CommandFilter{RolloutID: rolloutID})
	if len(cmds) != 2 {
		t.Errorf("rollout has %d commands, want 2 (none issued twice)", len(cmds))
	}
}
