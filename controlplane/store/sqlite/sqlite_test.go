package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

const (
	pending = controlplanev1.CommandState_COMMAND_STATE_PENDING
	refresh = controlplanev1.CommandKind_COMMAND_KIND_REFRESH
)

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func cmd(id, agent, runtime string) *store.Command {
	now := time.Now()
	return &store.Command{ID: id, Agent: agent, Tenant: "acme", Kind: refresh, Runtime: runtime, Repository: "r", Digest: "sha256:x",
		State: pending, RequestedBy: "test", CreatedAt: now, UpdatedAt: now, Deadline: now.Add(time.Hour)}
}

func TestPinsAndReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "cp.db")
	s := open(t, path)
	if _, err := s.CurrentPin(ctx, "codex"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("no pin yet: err = %v, want ErrNotFound", err)
	}
	for i, d := range []string{"sha256:a", "sha256:b"} {
		if err := s.RecordPin(ctx, store.Pin{Runtime: "codex", Repository: "r", Digest: d, PromotedAt: time.Unix(int64(i), 0), PromotedBy: "op"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RecordPin(ctx, store.Pin{Runtime: "hermes", Repository: "h", Digest: "sha256:h", PromotedBy: "op"}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = open(t, path) // reopening applies no migration twice and keeps the data
	p, err := s.CurrentPin(ctx, "codex")
	if err != nil || p.Digest != "sha256:b" {
		t.Fatalf("current pin = %+v, %v; want sha256:b", p, err)
	}
	pins, err := s.ListPins(ctx)
	if err != nil || len(pins) != 2 || pins[0].Runtime != "codex" || pins[1].Runtime != "hermes" {
		t.Fatalf("ListPins = %+v, %v", pins, err)
	}
	hist, err := s.PinHistory(ctx, "codex", 0)
	if err != nil || len(hist) != 2 || hist[1].Digest != "sha256:a" {
		t.Fatalf("history = %+v, %v", hist, err)
	}
}

func TestCommandsSupersedeUpdateAndList(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "cp.db"))
	if _, err := s.InsertCommands(ctx, []*store.Command{cmd("c1", "a1", "codex"), cmd("h1", "a1", "hermes"), cmd("x1", "a2", "codex")}); err != nil {
		t.Fatal(err)
	}
	superseded, err := s.InsertCommands(ctx, []*store.Command{cmd("c2", "a1", "codex")})
	if err != nil || len(superseded) != 1 || superseded[0] != "c1" {
		t.Fatalf("superseded = %v, %v; want [c1]", superseded, err)
	}
	c1, err := s.GetCommand(ctx, "c1")
	if err != nil || c1.State != controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED || c1.Error != "superseded by c2" {
		t.Fatalf("c1 = %+v, %v", c1, err)
	}
	if _, err := s.InsertCommands(ctx, []*store.Command{cmd("c2", "a1", "codex")}); err == nil {
		t.Fatal("duplicate command ID accepted")
	}

	result := &tenantagentv1.CommandResult{CommandId: "c2", Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED}
	got, changed := update(t, s, "c2", func(c *store.Command) bool {
		c.State, c.Result = controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED, result
		return true
	}, func(c *store.Command) *store.Event {
		return &store.Event{CommandID: c.ID, State: c.State, Message: "result"}
	})
	if !changed || got.Result.GetOutcome() != result.Outcome {
		t.Fatalf("update: %+v, %v", got, changed)
	}
	again, _ := s.GetCommand(ctx, "c2")
	if again.Result.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("result not stored: %+v", again)
	}
	evs, err := s.ListEvents(ctx, "c2")
	if err != nil || len(evs) != 2 || evs[1].Message != "result" {
		t.Fatalf("events = %+v, %v", evs, err)
	}
	if got, changed := update(t, s, "nope", func(*store.Command) bool { return true }, nil); got != nil || changed {
		t.Fatalf("update unknown: %+v, %v; want no command", got, changed)
	}

	active, err := s.ListCommands(ctx, store.CommandFilter{Agent: "a1", States: store.ActiveStates})
	if err != nil || len(active) != 1 || active[0].ID != "h1" {
		t.Fatalf("active for a1 = %v, %v; want [h1]", ids(active), err)
	}
	page1, _ := s.ListCommands(ctx, store.CommandFilter{Limit: 2})
	page2, _ := s.ListCommands(ctx, store.CommandFilter{Limit: 2, BeforeSeq: page1[1].Seq})
	if len(page1) != 2 || len(page2) != 2 || page1[0].ID != "c2" || page2[1].ID != "c1" {
		t.Fatalf("pages = %v %v", ids(page1), ids(page2))
	}
}

// update is one UpdateCommands, as the dispatcher makes them.
func update(t *testing.T, s *Store, id string, fn func(*store.Command) bool, ev func(*store.Command) *store.Event) (*store.Command, bool) {
	t.Helper()
	out, err := s.UpdateCommands(context.Background(), []store.CommandUpdate{{ID: id, Fn: fn, Event: ev}})
	if err != nil || len(out) != 1 {
		t.Fatalf("UpdateCommands(%s) = %v, %v", id, out, err)
	}
	return out[0].Command, out[0].Changed
}

func ids(cs []*store.Command) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.ID)
	}
	return out
}

func TestAgentsHoldsDenialsRollouts(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "cp.db"))
	a := store.Agent{Identity: "spiffe://td/tenant/acme", Tenant: "acme", LastSeen: time.Unix(5, 0), DockerReachable: true,
		Runtimes: []*tenantagentv1.RuntimeStatus{{Runtime: "codex", Containers: []*tenantagentv1.ContainerStatus{{Name: "ws-1", ImageDigest: "sha256:a"}}}}}
	if err := s.PutAgents(ctx, []store.Agent{a}); err != nil {
		t.Fatal(err)
	}
	agents, err := s.ListAgents(ctx)
	if err != nil || len(agents) != 1 || agents[0].Runtimes[0].Containers[0].Name != "ws-1" || !agents[0].DockerReachable {
		t.Fatalf("agents = %+v, %v", agents, err)
	}
	if err := s.PutHold(ctx, store.Hold{Tenant: "acme", Reason: "canary", HeldBy: "op"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.DeleteHold(ctx, "acme"); !ok || err != nil {
		t.Fatalf("delete hold: %v %v", ok, err)
	}
	if ok, _ := s.DeleteHold(ctx, "acme"); ok {
		t.Fatal("deleted a hold twice")
	}
	if err := s.PutDenial(ctx, store.Denial{Kind: store.DenySerial, Value: "ab", DeniedBy: "op"}); err != nil {
		t.Fatal(err)
	}
	if ds, _ := s.ListDenials(ctx); len(ds) != 1 || ds[0].Kind != store.DenySerial {
		t.Fatalf("denials = %+v", ds)
	}
	r := store.Rollout{ID: "r1", Runtime: "codex", Options: store.RolloutOptions{MaxParallelTenants: 3, CanaryTenants: []string{"acme"}}, State: store.RolloutRunning}
	if err := s.PutRollout(ctx, r); err != nil {
		t.Fatal(err)
	}
	r.State = store.RolloutHalted
	if err := s.PutRollout(ctx, r); err != nil {
		t.Fatal(err)
	}
	got, err := s.ListRollouts(ctx, "codex", store.RolloutHalted)
	if err != nil || len(got) != 1 || got[0].ID != "r1" || got[0].Options.MaxParallelTenants != 3 || len(got[0].Options.CanaryTenants) != 1 {
		t.Fatalf("halted rollouts = %+v, %v; want r1, replaced in place", got, err)
	}
	if rs, _ := s.ListRollouts(ctx, "codex", store.RolloutRunning); len(rs) != 0 {
		t.Fatalf("running rollouts = %+v", rs)
	}
}

func TestAdvanceCommandsMovesOnlyFromTheGivenStates(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "cp.db"))
	s.InsertCommands(ctx, []*store.Command{cmd("a", "x", "codex"), cmd("b", "y", "codex")})
	update(t, s, "b", func(c *store.Command) bool { c.State = controlplanev1.CommandState_COMMAND_STATE_ACKED; return true }, nil)
	changed, err := s.AdvanceCommands(ctx, []string{"a", "b", "missing"}, []controlplanev1.CommandState{pending}, controlplanev1.CommandState_COMMAND_STATE_SENT, time.Now(), "sent")
	if err != nil || len(changed) != 1 || changed[0].ID != "a" || changed[0].State != controlplanev1.CommandState_COMMAND_STATE_SENT {
		t.Fatalf("changed = %v, %v; want only a (b was already acked)", changed, err)
	}
	if b, _ := s.GetCommand(ctx, "b"); b.State != controlplanev1.CommandState_COMMAND_STATE_ACKED {
		t.Errorf("b moved back to %v", b.State)
	}
	if evs, _ := s.ListEvents(ctx, "a"); len(evs) != 2 || evs[1].Message != "sent" {
		t.Errorf("a's events = %+v", evs)
	}
}

func TestPruneHistoryKeepsUnfinishedAndRecent(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "cp.db"))
	old := time.Now().Add(-48 * time.Hour)
	for _, c := range []*store.Command{cmd("old-done", "a", "codex"), cmd("old-pending", "b", "codex"), cmd("new-done", "c", "codex")} {
		if c.ID != "new-done" {
			c.CreatedAt, c.UpdatedAt = old, old
		}
		if _, err := s.InsertCommands(ctx, []*store.Command{c}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"old-done", "new-done"} {
		update(t, s, id, func(c *store.Command) bool {
			c.State = controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED
			return true
		}, nil)
	}
	// UpdateCommands stamps no time of its own: age old-done by hand.
	s.db.ExecContext(ctx, `UPDATE commands SET updated_at = ? WHERE id = 'old-done'`, old.UnixNano())
	n, err := s.PruneHistory(ctx, time.Now().Add(-24*time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("pruned %d, %v; want 1", n, err)
	}
	if _, err := s.GetCommand(ctx, "old-done"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("old finished command kept: %v", err)
	}
	if evs, _ := s.ListEvents(ctx, "old-done"); len(evs) != 0 {
		t.Errorf("its events kept: %v", evs)
	}
	for _, id := range []string{"old-pending", "new-done"} {
		if _, err := s.GetCommand(ctx, id); err != nil {
			t.Errorf("%s pruned: %v", id, err)
		}
	}
}
