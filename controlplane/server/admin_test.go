package server

import (
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

func TestBadInputChangesNothing(t *testing.T) {
	h := newHarness(t, "acme", "held")
	h.agent("acme", codex(digestV1))
	h.agent("held", codex(digestV1))
	admin := h.operator()
	if _, err := admin.HoldTenant(ctx(t), &controlplanev1.HoldTenantRequest{Tenant: "held", Reason: "incident"}); err != nil {
		t.Fatal(err)
	}
	promoteErr := func(req *controlplanev1.PromoteRuntimeImageRequest) error {
		stream, err := admin.PromoteRuntimeImage(ctx(t), req)
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	}
	refreshErr := func(req *controlplanev1.RefreshRuntimeImageRequest) error {
		stream, err := admin.RefreshRuntimeImage(ctx(t), req)
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	}
	upper := strings.Repeat("ABCDEF12", 8)
	cases := []struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{
		{"tag instead of digest", promoteErr(&controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + ":v2"}), codes.InvalidArgument, "tags are refused"},
		{"short digest", promoteErr(&controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@sha256:abc123"}), codes.InvalidArgument, "has 6 hex digits"},
		{"uppercase hex", promoteErr(&controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@sha256:" + upper}), codes.InvalidArgument, "uppercase"},
		{"empty runtime", promoteErr(&controlplanev1.PromoteRuntimeImageRequest{ImageRef: repo + "@" + digestV2}), codes.InvalidArgument, "runtime"},
		{"too many parallel containers", promoteErr(&controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2, Options: &controlplanev1.RolloutOptions{MaxParallelContainers: 65}}), codes.InvalidArgument, "at most 64"},
		{"unknown canary", promoteErr(&controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2, Options: &controlplanev1.RolloutOptions{CanaryTenants: []string{"nobody"}}}), codes.NotFound, "nobody"},
		{"notes too long", promoteErr(&controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2, Notes: strings.Repeat("n", 5000)}), codes.InvalidArgument, "notes"},
		{"oversized message", promoteErr(&controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2, Notes: strings.Repeat("n", 300<<10)}), codes.ResourceExhausted, "larger than max"},
		{"unknown tenant", refreshErr(&controlplanev1.RefreshRuntimeImageRequest{Tenant: "nobody", Runtime: "codex", ImageDigest: digestV2}), codes.NotFound, `tenant "nobody"`},
		{"held tenant", refreshErr(&controlplanev1.RefreshRuntimeImageRequest{Tenant: "held", Runtime: "codex", ImageDigest: digestV2}), codes.FailedPrecondition, "held"},
		{"runtime the tenant lacks", refreshErr(&controlplanev1.RefreshRuntimeImageRequest{Tenant: "acme", Runtime: "hermes", ImageDigest: digestV2}), codes.NotFound, "hermes"},
		{"no pin and no digest", refreshErr(&controlplanev1.RefreshRuntimeImageRequest{Tenant: "acme", Runtime: "codex"}), codes.NotFound, "no pin"},
		{"bad refresh digest", refreshErr(&controlplanev1.RefreshRuntimeImageRequest{Tenant: "acme", Runtime: "codex", ImageDigest: "latest"}), codes.InvalidArgument, "sha256"},
		{"bad tenant name", refreshErr(&controlplanev1.RefreshRuntimeImageRequest{Tenant: "Acme!", Runtime: "codex"}), codes.InvalidArgument, "tenant"},
	}
	_, pinErr := admin.GetRuntimePin(ctx(t), &controlplanev1.GetRuntimePinRequest{Runtime: "codex"})
	cases = append(cases, struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{"pin of unknown runtime", pinErr, codes.NotFound, "no pin"})
	_, pageErr := admin.ListCommands(ctx(t), &controlplanev1.ListCommandsRequest{PageToken: "garbage"})
	cases = append(cases, struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{"bad page token", pageErr, codes.InvalidArgument, "page_token"})

	for _, tc := range cases {
		if status.Code(tc.err) != tc.code || !strings.Contains(status.Convert(tc.err).Message(), tc.msg) {
			t.Errorf("%s: %v, want %v mentioning %q", tc.name, tc.err, tc.code, tc.msg)
		}
	}
	pins, _ := h.srv.store.ListPins(ctx(t))
	cmds, _ := h.srv.store.ListCommands(ctx(t), store.CommandFilter{})
	rollouts, _ := h.srv.store.ListRollouts(ctx(t), "", "")
	if len(pins) != 0 || len(cmds) != 0 || len(rollouts) != 0 {
		t.Errorf("bad input changed the store: %d pins, %d commands, %d rollouts", len(pins), len(cmds), len(rollouts))
	}
}

func TestReconcileBringsLateAgentsToThePinAndBacksOff(t *testing.T) {
	h := newHarness(t, "late", "broken", "paused")
	// Promote while nobody reports codex: the rollout completes at once.
	events := promote(t, h.operator(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2})
	if last := events[len(events)-1]; last.GetKind() != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED || last.GetCounts().GetTenants() != 0 {
		t.Fatalf("empty rollout ended with %v", last)
	}
	// paused's agent was seen once (with nothing to refresh): a hold needs
	// a tenant the control plane knows.
	seen := h.agent("paused", cptest.Options{})
	seen.Close()
	h.waitConnected(spiffe("paused"), false)
	if _, err := h.operator().HoldTenant(ctx(t), &controlplanev1.HoldTenantRequest{Tenant: "paused"}); err != nil {
		t.Fatal(err)
	}

	late := h.agent("late", codex(digestV1))
	late.WaitFor(wait, "a reconcile refresh", func([]*tenantagentv1.ControlMessage) bool { return len(late.Refreshes()) == 1 })
	eventually(t, "late's containers on the pin", func() bool {
		resp, err := h.operator().ListAgents(ctx(t), &controlplanev1.ListAgentsRequest{Tenant: "late"})
		return err == nil && len(resp.GetAgents()) == 1 && resp.GetAgents()[0].GetRuntimes()[0].GetOnPin() == 2 && resp.GetAgents()[0].GetRuntimes()[0].GetOffPin() == 0
	})

	broken := h.agent("broken", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.RollBack})
	broken.WaitFor(wait, "a reconcile refresh", func([]*tenantagentv1.ControlMessage) bool { return len(broken.Refreshes()) == 1 })
	eventually(t, "broken's refresh rolled back", func() bool {
		cmds, _ := h.srv.store.ListCommands(ctx(t), store.CommandFilter{Tenant: "broken"})
		return len(cmds) == 1 && cmds[0].State == controlplanev1.CommandState_COMMAND_STATE_ROLLED_BACK
	})
	// More health reports inside the backoff issue nothing new.
	for range 3 {
		if err := broken.SendHealth(); err != nil {
			t.Fatal(err)
		}
	}
	paused := h.agent("paused", codex(digestV1))
	if err := paused.SendHealth(); err != nil {
		t.Fatal(err)
	}
	// Each health report's reconcile logs its decision; the counts below
	// are read once all four were made (a round trip on another stream,
	// as this once waited for, does not order them: CI saw it miss).
	eventually(t, "the reconciles of broken's three reports and paused's one", func() bool {
		var backoffs, holds int
		for line := range strings.Lines(h.logs.String()) {
			switch {
			case strings.Contains(line, "backing off after failures") && strings.Contains(line, "broken"):
				backoffs++
			case strings.Contains(line, "drift left alone: tenant held") && strings.Contains(line, "paused"):
				holds++
			}
		}
		return backoffs >= 3 && holds >= 1
	})
	if cmds, _ := h.srv.store.ListCommands(ctx(t), store.CommandFilter{Tenant: "broken"}); len(cmds) != 1 {
		t.Errorf("broken tenant got %d refreshes inside its backoff", len(cmds))
	}
	if cmds, _ := h.srv.store.ListCommands(ctx(t), store.CommandFilter{Tenant: "paused"}); len(cmds) != 0 {
		t.Errorf("held tenant got %d automatic refreshes", len(cmds))
	}
}

func TestWatchCommandAndListCommandsPaging(t *testing.T) {
	h := newHarness(t, "acme")
	a := h.agent("acme", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.Hang})
	id := refresh(t, h.operator(), "acme", digestV2)
	h.waitState(id, stateRunning)

	watch, err := h.operator().WatchCommand(ctx(t), &controlplanev1.WatchCommandRequest{CommandId: id})
	if err != nil {
		t.Fatal(err)
	}
	first, err := watch.Recv()
	if err != nil || first.GetEvent().GetCommand().GetState() != stateRunning {
		t.Fatalf("first watch event = %v, %v; want the RUNNING snapshot", first, err)
	}
	if err := a.SendResult(cptest.Succeed(&tenantagentv1.RefreshRuntimeImage{CommandId: id, ImageRepository: repo, ImageDigest: digestV2})); err != nil {
		t.Fatal(err)
	}
	var last *controlplanev1.WatchCommandResponse
	for {
		resp, err := watch.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = resp
	}
	if last.GetEvent().GetCommand().GetState() != stateSucceeded || last.GetEvent().GetCommand().GetResult() == nil {
		t.Fatalf("watch ended with %v, want the SUCCEEDED command with its result", last)
	}

	got, err := h.operator().GetCommand(ctx(t), &controlplanev1.GetCommandRequest{CommandId: id, IncludeEvents: true})
	if err != nil || len(got.GetEvents()) < 4 {
		t.Fatalf("GetCommand events = %v, %v", got.GetEvents(), err)
	}
	// States only move forward; SENT may be skipped when the agent's ack
	// is recorded before the send is.
	var states []string
	prev := controlplanev1.CommandState_COMMAND_STATE_UNSPECIFIED
	for _, ev := range got.GetEvents() {
		if ev.GetState() < prev {
			t.Errorf("state went back from %v to %v", prev, ev.GetState())
		}
		prev = ev.GetState()
		states = append(states, strings.TrimPrefix(ev.GetState().String(), "COMMAND_STATE_"))
	}
	joined := strings.Join(states, " ")
	for _, want := range []string{"PENDING", "ACKED", "RUNNING", "SUCCEEDED"} {
		if !strings.Contains(joined, want) {
			t.Errorf("event states %v lack %s", states, want)
		}
	}

	for range 4 {
		refresh(t, h.operator(), "acme", digestV1)
	}
	var seen []string
	token := ""
	for {
		page, err := h.operator().ListCommands(ctx(t), &controlplanev1.ListCommandsRequest{Tenant: "acme", PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range page.GetCommands() {
			seen = append(seen, c.GetCommandId())
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(seen) != 5 || seen[4] != id {
		t.Errorf("paged through %d commands (%v), want 5 ending with the oldest", len(seen), seen)
	}
}

func TestWatchAgentsSnapshotThenChanges(t *testing.T) {
	h := newHarness(t, "first", "second")
	h.agent("first", codex(digestV1))
	watch, err := h.operator().WatchAgents(ctx(t), &controlplanev1.WatchAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	next := func() *controlplanev1.WatchAgentsResponse {
		resp, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if ev := next(); ev.GetKind() != controlplanev1.AgentEventKind_AGENT_EVENT_KIND_SNAPSHOT || ev.GetAgent().GetTenant() != "first" || !ev.GetAgent().GetConnected() {
		t.Fatalf("first event %v, want first's snapshot", ev)
	}
	if ev := next(); ev.GetKind() != controlplanev1.AgentEventKind_AGENT_EVENT_KIND_SYNCED {
		t.Fatalf("second event %v, want SYNCED", ev)
	}
	second := h.agent("second", codex(digestV1))
	if ev := next(); ev.GetKind() != controlplanev1.AgentEventKind_AGENT_EVENT_KIND_CONNECTED || ev.GetAgent().GetTenant() != "second" || len(ev.GetAgent().GetRuntimes()) != 1 {
		t.Fatalf("event %v, want second CONNECTED with its runtime", ev)
	}
	second.Close()
	if ev := next(); ev.GetKind() != controlplanev1.AgentEventKind_AGENT_EVENT_KIND_DISCONNECTED || ev.GetAgent().GetConnected() {
		t.Fatalf("event %v, want second DISCONNECTED", ev)
	}
}

func TestMetricsShowAgentsAndCommands(t *testing.T) {
	h := newHarness(t, "acme")
	h.agent("acme", codex(digestV1))
	events := promote(t, h.operator(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2})
	if events[len(events)-1].GetCounts().GetSucceeded() != 1 {
		t.Fatalf("rollout did not succeed: %v", events[len(events)-1])
	}
	eventually(t, "containers reported on the pin", func() bool {
		return strings.Contains(scrape(t, h), `tenantagent_controlplane_containers{on_pin="true",runtime="codex"} 2`)
	})
	body := scrape(t, h)
	for _, want := range []string{
		"tenantagent_controlplane_connected_agents 1",
		`tenantagent_controlplane_commands_finished_total{kind="refresh",state="succeeded"} 1`,
		`tenantagent_controlplane_heartbeat_age_seconds{tenant="acme"}`,
		`tenantagent_controlplane_containers_refreshed_total{outcome="recreated"} 2`,
		"tenantagent_controlplane_recreate_downtime_seconds_count 2",
		"tenantagent_controlplane_pull_bytes_total 1.048576e+06",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	resp, err := http.Get("http://" + h.srv.HTTPAddr() + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %v %v", resp, err)
	}

	// Every series the Grafana dashboard queries exists.
	dashboard, err := os.ReadFile("../../deploy/grafana/controlplane-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range regexp.MustCompile(`tenantagent_controlplane_[a-z_]+`).FindAllString(string(dashboard), -1) {
		if !strings.Contains(body, name) {
			t.Errorf("the dashboard queries %s, which /metrics does not serve", name)
		}
	}
}

func scrape(t *testing.T, h *harness) string {
	resp, err := http.Get("http://" + h.srv.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestShutdownTellsAgentsToReconnect(t *testing.T) {
	h := newHarness(t, "acme")
	a := h.agent("acme", codex(digestV1))
	healthClient := grpc_health_v1.NewHealthClient(h.adminConn("operator-dev"))
	watch, err := healthClient.Watch(ctx(t), &grpc_health_v1.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", resp, err)
	}
	h.stop()
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != grpc_health_v1.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health during shutdown = %v, %v; want NOT_SERVING", resp, err)
	}
	<-a.Done()
	reconnect := false
	for _, m := range a.Received() {
		if m.GetReconnect() != nil {
			reconnect = true
		}
	}
	if !reconnect {
		t.Errorf("agent was not told to reconnect")
	}
	if status.Code(a.Err()) != codes.Unavailable {
		t.Errorf("agent stream ended with %v, want Unavailable", a.Err())
	}
}
