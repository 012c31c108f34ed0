// Package storetest is the contract every store.Store implementation
// passes: one suite, run by each implementation's tests, so SQLite and
// PostgreSQL cannot drift apart in ordering, errors or supersede rules.
package storetest

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

const (
	pending   = controlplanev1.CommandState_COMMAND_STATE_PENDING
	sent      = controlplanev1.CommandState_COMMAND_STATE_SENT
	acked     = controlplanev1.CommandState_COMMAND_STATE_ACKED
	succeeded = controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED
	refresh   = controlplanev1.CommandKind_COMMAND_KIND_REFRESH
	prefetch  = controlplanev1.CommandKind_COMMAND_KIND_PREFETCH
)

// Run runs the contract against stores from open, which returns a new,
// empty store for each subtest and closes it when the test ends.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"Pins", testPins},
		{"InsertSupersedesPendingRefreshes", testSupersede},
		{"CommandsRoundTrip", testCommandRoundTrip},
		{"UpdateCommands", testUpdateCommands},
		{"ListCommandsFiltersAndPages", testListCommands},
		{"AdvanceCommandsMovesOnlyFromTheGivenStates", testAdvance},
		{"PruneHistoryKeepsUnfinishedAndRecent", testPrune},
		{"Events", testEvents},
		{"Agents", testAgents},
		{"HoldsAndDenials", testHoldsAndDenials},
		{"Rollouts", testRollouts},
		{"ClaimRollouts", testClaimRollouts},
		{"ConcurrentClaimsTakeARolloutOnce", testConcurrentClaims},
		{"UpdateRolloutIsFenced", testUpdateRollout},
		{"SetRolloutStateMovesOnlyFromTheGivenStates", testSetRolloutState},
		{"GetAgents", testGetAgents},
		{"TouchAgents", testTouchAgents},
		{"OneCommandPerRolloutAgentAndKind", testRolloutCommandConflict},
		{"RotateTicketKeys", testRotateTicketKeys},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

// at is a time with nanoseconds, which every store keeps exactly.
func at(sec int64) time.Time { return time.Unix(sec, 123456789) }

// Cmd is a PENDING refresh of runtime for agent, of tenant acme.
func Cmd(id, agent, runtime string) *store.Command {
	now := time.Now()
	return &store.Command{ID: id, Agent: agent, Tenant: "acme", Kind: refresh, Runtime: runtime, Repository: "r", Digest: "sha256:x",
		State: pending, RequestedBy: "test", CreatedAt: now, UpdatedAt: now, Deadline: now.Add(time.Hour)}
}

func insert(t *testing.T, s store.Store, cmds ...*store.Command) []string {
	t.Helper()
	superseded, err := s.InsertCommands(context.Background(), cmds)
	if err != nil {
		t.Fatalf("InsertCommands: %v", err)
	}
	return superseded
}

// update is one UpdateCommands, as the dispatcher makes them.
func update(t *testing.T, s store.Store, id string, fn func(*store.Command) bool, ev func(*store.Command) *store.Event) (*store.Command, bool) {
	t.Helper()
	out, err := s.UpdateCommands(context.Background(), []store.CommandUpdate{{ID: id, Fn: fn, Event: ev}})
	if err != nil || len(out) != 1 {
		t.Fatalf("UpdateCommands(%s) = %v, %v", id, out, err)
	}
	return out[0].Command, out[0].Changed
}

func ids(cs []*store.Command) []string {
	out := []string{}
	for _, c := range cs {
		out = append(out, c.ID)
	}
	return out
}

func listIDs(t *testing.T, s store.Store, f store.CommandFilter) []string {
	t.Helper()
	cs, err := s.ListCommands(context.Background(), f)
	if err != nil {
		t.Fatalf("ListCommands(%+v): %v", f, err)
	}
	return ids(cs)
}

func testPins(t *testing.T, s store.Store) {
	ctx := context.Background()
	if _, err := s.CurrentPin(ctx, "codex"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("no pin yet: err = %v, want ErrNotFound", err)
	}
	if pins, err := s.ListPins(ctx); err != nil || len(pins) != 0 {
		t.Fatalf("ListPins on empty = %+v, %v", pins, err)
	}
	first := store.Pin{Runtime: "codex", TemplateName: "t", Repository: "r", Digest: "sha256:a", GitSHA: "abc", PromotedAt: at(1), PromotedBy: "op", Notes: "n"}
	for _, p := range []store.Pin{first,
		{Runtime: "hermes", Repository: "h", Digest: "sha256:h", PromotedAt: at(2), PromotedBy: "op"},
		{Runtime: "codex", Repository: "r", Digest: "sha256:b", PromotedAt: at(3), PromotedBy: "op"},
	} {
		if err := s.RecordPin(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	p, err := s.CurrentPin(ctx, "codex")
	if err != nil || p.Digest != "sha256:b" {
		t.Fatalf("current pin = %+v, %v; want sha256:b", p, err)
	}
	pins, err := s.ListPins(ctx)
	if err != nil || len(pins) != 2 || pins[0].Digest != "sha256:b" || pins[1].Runtime != "hermes" {
		t.Fatalf("ListPins = %+v, %v; want codex@b, hermes", pins, err)
	}
	hist, err := s.PinHistory(ctx, "codex", 0)
	if err != nil || len(hist) != 2 || hist[0].Digest != "sha256:b" {
		t.Fatalf("history = %+v, %v; want b then a", hist, err)
	}
	if !hist[1].PromotedAt.Equal(first.PromotedAt) {
		t.Errorf("PromotedAt = %v; want %v", hist[1].PromotedAt, first.PromotedAt)
	}
	hist[1].PromotedAt = first.PromotedAt
	if hist[1] != first {
		t.Errorf("oldest pin = %+v; want %+v", hist[1], first)
	}
	if hist, _ := s.PinHistory(ctx, "codex", 1); len(hist) != 1 || hist[0].Digest != "sha256:b" {
		t.Errorf("history limited to 1 = %+v", hist)
	}
}

func testSupersede(t *testing.T, s store.Store) {
	ctx := context.Background()
	pf := Cmd("p1", "a1", "codex")
	pf.Kind = prefetch
	insert(t, s, Cmd("c1", "a1", "codex"), Cmd("h1", "a1", "hermes"), Cmd("x1", "a2", "codex"), pf)
	if got := insert(t, s, Cmd("c2", "a1", "codex")); !slices.Equal(got, []string{"c1"}) {
		t.Fatalf("superseded = %v; want [c1] (not hermes, not another agent, not a prefetch)", got)
	}
	c1, err := s.GetCommand(ctx, "c1")
	if err != nil || c1.State != controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED || c1.Error != "superseded by c2" {
		t.Fatalf("c1 = %+v, %v", c1, err)
	}
	if evs, _ := s.ListEvents(ctx, "c1"); len(evs) != 2 || evs[1].State != controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED {
		t.Errorf("c1 events = %+v; want journaled, superseded", evs)
	}
	// A sent refresh is under way: a new one does not supersede it.
	update(t, s, "c2", func(c *store.Command) bool { c.State = sent; return true }, nil)
	if got := insert(t, s, Cmd("c3", "a1", "codex")); len(got) != 0 {
		t.Fatalf("superseded = %v; want none (c2 was sent)", got)
	}
	// Within one batch, the later refresh supersedes the earlier.
	if got := insert(t, s, Cmd("y1", "a3", "codex"), Cmd("y2", "a3", "codex")); !slices.Equal(got, []string{"y1"}) {
		t.Fatalf("superseded in batch = %v; want [y1]", got)
	}
	// Superseded ones come in the order of the refreshes that superseded
	// them, whatever their own.
	insert(t, s, Cmd("w1", "a5", "codex"), Cmd("v1", "a6", "codex"))
	if got := insert(t, s, Cmd("v2", "a6", "codex"), Cmd("w2", "a5", "codex"), Cmd("v3", "a6", "codex")); !slices.Equal(got, []string{"v1", "w1", "v2"}) {
		t.Fatalf("superseded = %v; want [v1 w1 v2]", got)
	}
	for id, by := range map[string]string{"v1": "v2", "w1": "w2", "v2": "v3"} {
		if c, err := s.GetCommand(ctx, id); err != nil || c.State != controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED || c.Error != "superseded by "+by {
			t.Errorf("%s = %+v, %v; want superseded by %s", id, c, err, by)
		}
	}
	if _, err := s.InsertCommands(ctx, []*store.Command{Cmd("c2", "a9", "codex")}); err == nil {
		t.Fatal("duplicate command ID accepted")
	}
	// A failed batch stores nothing of itself.
	if _, err := s.InsertCommands(ctx, []*store.Command{Cmd("z1", "a4", "codex"), Cmd("c2", "a4", "codex")}); err == nil {
		t.Fatal("batch with a duplicate accepted")
	}
	if _, err := s.GetCommand(ctx, "z1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("half a failed batch stored: %v", err)
	}
}

func testCommandRoundTrip(t *testing.T, s store.Store) {
	ctx := context.Background()
	if _, err := s.GetCommand(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetCommand(nope) = %v; want ErrNotFound", err)
	}
	c := &store.Command{ID: "c1", Agent: "spiffe://td/tenant/acme", Tenant: "acme", Kind: refresh, Runtime: "codex",
		Repository: "r", Digest: "sha256:x", Options: &tenantagentv1.RefreshOptions{MaxParallelContainers: 2}, State: pending, RequestedBy: "op",
		RolloutID: "r1", CreatedAt: at(10), UpdatedAt: at(11), Deadline: at(12)}
	insert(t, s, c, Cmd("c2", "b", "codex"))
	if c.Seq == 0 {
		t.Error("InsertCommands left Seq unset")
	}
	got, err := s.GetCommand(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if !got.CreatedAt.Equal(c.CreatedAt) || !got.UpdatedAt.Equal(c.UpdatedAt) || !got.Deadline.Equal(c.Deadline) {
		t.Errorf("times = %v %v %v; want %v %v %v", got.CreatedAt, got.UpdatedAt, got.Deadline, c.CreatedAt, c.UpdatedAt, c.Deadline)
	}
	if !proto.Equal(got.Options, c.Options) || got.Result != nil {
		t.Errorf("options %v, result %v; want %v, nil", got.Options, got.Result, c.Options)
	}
	got.CreatedAt, got.UpdatedAt, got.Deadline, got.Options = c.CreatedAt, c.UpdatedAt, c.Deadline, c.Options
	if *got != *c {
		t.Errorf("stored %+v;\nwant %+v", got, c)
	}
	if c2, _ := s.GetCommand(ctx, "c2"); c2.Options != nil || c2.Seq <= c.Seq {
		t.Errorf("c2 options %v (want nil), seq %d after %d", c2.Options, c2.Seq, c.Seq)
	}
}

func testUpdateCommands(t *testing.T, s store.Store) {
	ctx := context.Background()
	insert(t, s, Cmd("c1", "a", "codex"), Cmd("c2", "b", "codex"))
	result := &tenantagentv1.CommandResult{CommandId: "c1", Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED}
	out, err := s.UpdateCommands(ctx, []store.CommandUpdate{
		{ID: "c1", Fn: func(c *store.Command) bool {
			c.State, c.Result, c.Error, c.UpdatedAt = succeeded, result, "e", at(50)
			return true
		}, Event: func(c *store.Command) *store.Event {
			return &store.Event{CommandID: c.ID, At: at(50), State: c.State, Message: "result"}
		}},
		{ID: "nope", Fn: func(*store.Command) bool { t.Error("Fn called for a missing command"); return true }},
		{ID: "c2", Fn: func(c *store.Command) bool { c.State = acked; return false }, // unchanged: not written
			Event: func(*store.Command) *store.Event { t.Error("Event called without a change"); return nil }},
	})
	if err != nil || len(out) != 3 {
		t.Fatalf("UpdateCommands = %+v, %v", out, err)
	}
	if !out[0].Changed || out[0].Command.State != succeeded || out[1].Command != nil || out[1].Changed || out[2].Changed || out[2].Command == nil {
		t.Fatalf("outcomes = %+v %+v %+v", out[0], out[1], out[2])
	}
	got, _ := s.GetCommand(ctx, "c1")
	if got.State != succeeded || got.Error != "e" || !got.UpdatedAt.Equal(at(50)) || !proto.Equal(got.Result, result) {
		t.Fatalf("c1 stored as %+v", got)
	}
	if c2, _ := s.GetCommand(ctx, "c2"); c2.State != pending {
		t.Errorf("unchanged c2 written: %v", c2.State)
	}
	evs, err := s.ListEvents(ctx, "c1")
	if err != nil || len(evs) != 2 || evs[1].Message != "result" || evs[1].State != succeeded {
		t.Fatalf("events = %+v, %v", evs, err)
	}
	// One burst may change a command twice (its ack and its result): both
	// events are stored, in order, and the last change is what is stored.
	out, err = s.UpdateCommands(ctx, []store.CommandUpdate{
		{ID: "c2", Fn: func(c *store.Command) bool { c.State = acked; return true },
			Event: func(c *store.Command) *store.Event {
				return &store.Event{CommandID: c.ID, At: at(60), State: c.State, Message: "ack"}
			}},
		{ID: "c2", Fn: func(c *store.Command) bool { c.State = succeeded; return true },
			Event: func(c *store.Command) *store.Event {
				return &store.Event{CommandID: c.ID, At: at(61), State: c.State, Message: "done"}
			}},
	})
	if err != nil || out[0].Command.State != acked || out[1].Command.State != succeeded {
		t.Fatalf("UpdateCommands twice = %+v, %v", out, err)
	}
	if c2, _ := s.GetCommand(ctx, "c2"); c2.State != succeeded {
		t.Errorf("c2 = %v; want succeeded", c2.State)
	}
	if evs, _ := s.ListEvents(ctx, "c2"); len(evs) != 3 || evs[1].Message != "ack" || evs[2].Message != "done" {
		t.Errorf("c2 events = %+v; want journaled, ack, done", evs)
	}
	insert(t, s, Cmd("c3", "b", "codex"))
	// A failing update rolls the whole batch back.
	if _, err := s.UpdateCommands(ctx, []store.CommandUpdate{
		{ID: "c3", Fn: func(c *store.Command) bool { c.State = acked; return true }},
		{ID: "c1", Fn: func(c *store.Command) bool {
			c.Result = &tenantagentv1.CommandResult{CommandId: string([]byte{0xff})}
			return true
		}},
	}); err == nil {
		t.Fatal("an update with an unencodable result succeeded")
	}
	if c3, _ := s.GetCommand(ctx, "c3"); c3.State != pending {
		t.Errorf("c3 = %v after a failed batch; want pending", c3.State)
	}
}

func testListCommands(t *testing.T, s store.Store) {
	a, b, c, d := Cmd("a", "x", "codex"), Cmd("b", "y", "codex"), Cmd("c", "x", "hermes"), Cmd("d", "y", "codex")
	b.Tenant, c.RolloutID, d.Kind = "other", "r1", prefetch
	a.Deadline = time.Now().Add(-time.Minute)
	insert(t, s, a, b, c, d)
	update(t, s, "b", func(c *store.Command) bool { c.State = acked; return true }, nil)
	for _, tc := range []struct {
		f    store.CommandFilter
		want []string
	}{
		{store.CommandFilter{}, []string{"d", "c", "b", "a"}},
		{store.CommandFilter{Oldest: true}, []string{"a", "b", "c", "d"}},
		{store.CommandFilter{Agent: "x"}, []string{"c", "a"}},
		{store.CommandFilter{Tenant: "other"}, []string{"b"}},
		{store.CommandFilter{Runtime: "hermes"}, []string{"c"}},
		{store.CommandFilter{RolloutID: "r1"}, []string{"c"}},
		{store.CommandFilter{Kind: prefetch}, []string{"d"}},
		{store.CommandFilter{States: []controlplanev1.CommandState{acked, sent}}, []string{"b"}},
		{store.CommandFilter{DeadlineBefore: time.Now()}, []string{"a"}},
		{store.CommandFilter{Agent: "y", Kind: refresh}, []string{"b"}},
		{store.CommandFilter{Agents: []string{"x", "y"}, Oldest: true}, []string{"a", "b", "c", "d"}},
		{store.CommandFilter{Agents: []string{"y", "nobody"}}, []string{"d", "b"}},
		{store.CommandFilter{Agents: []string{"x"}, Runtime: "codex"}, []string{"a"}},
		{store.CommandFilter{IDs: []string{"d", "a", "nope"}}, []string{"d", "a"}},
		{store.CommandFilter{IDs: []string{"a", "c"}, Agent: "x", Runtime: "hermes"}, []string{"c"}},
		{store.CommandFilter{Limit: 2}, []string{"d", "c"}},
		{store.CommandFilter{Limit: 2, Oldest: true}, []string{"a", "b"}},
	} {
		if got := listIDs(t, s, tc.f); !slices.Equal(got, tc.want) {
			t.Errorf("ListCommands(%+v) = %v; want %v", tc.f, got, tc.want)
		}
	}
	page1, _ := s.ListCommands(context.Background(), store.CommandFilter{Limit: 2})
	if got := listIDs(t, s, store.CommandFilter{Limit: 2, BeforeSeq: page1[1].Seq}); !slices.Equal(got, []string{"b", "a"}) {
		t.Errorf("second page = %v; want [b a]", got)
	}
}

func testAdvance(t *testing.T, s store.Store) {
	ctx := context.Background()
	insert(t, s, Cmd("a", "x", "codex"), Cmd("b", "y", "codex"), Cmd("c", "z", "codex"))
	update(t, s, "b", func(c *store.Command) bool { c.State = acked; return true }, nil)
	changed, err := s.AdvanceCommands(ctx, []string{"c", "a", "b", "missing"}, []controlplanev1.CommandState{pending}, sent, at(70), "sent")
	if err != nil || !slices.Equal(ids(changed), []string{"c", "a"}) {
		t.Fatalf("changed = %v, %v; want [c a] (b was already acked)", ids(changed), err)
	}
	if changed[1].State != sent || !changed[1].UpdatedAt.Equal(at(70)) || changed[1].Agent != "x" {
		t.Errorf("returned %+v; want a as stored after", changed[1])
	}
	if b, _ := s.GetCommand(ctx, "b"); b.State != acked {
		t.Errorf("b moved back to %v", b.State)
	}
	if evs, _ := s.ListEvents(ctx, "a"); len(evs) != 2 || evs[1].Message != "sent" || evs[1].State != sent || !evs[1].At.Equal(at(70)) {
		t.Errorf("a's events = %+v", evs)
	}
	if evs, _ := s.ListEvents(ctx, "b"); len(evs) != 1 {
		t.Errorf("b got an event without moving: %+v", evs)
	}
	changed, err = s.AdvanceCommands(ctx, []string{"a", "b"}, []controlplanev1.CommandState{sent, acked}, controlplanev1.CommandState_COMMAND_STATE_RUNNING, at(80), "running")
	if err != nil || len(changed) != 2 {
		t.Fatalf("from two states: %v, %v; want a and b", ids(changed), err)
	}
}

func testPrune(t *testing.T, s store.Store) {
	ctx := context.Background()
	old := time.Now().Add(-48 * time.Hour)
	cmds := []*store.Command{Cmd("old-done", "a", "codex"), Cmd("old-pending", "b", "codex"), Cmd("new-done", "c", "codex")}
	cmds[0].CreatedAt, cmds[0].UpdatedAt = old, old
	cmds[1].CreatedAt, cmds[1].UpdatedAt = old, old
	insert(t, s, cmds...)
	for _, id := range []string{"old-done", "new-done"} {
		update(t, s, id, func(c *store.Command) bool {
			// UpdateCommands stamps no time of its own: the old one
			// stays old.
			c.State = succeeded
			return true
		}, func(c *store.Command) *store.Event {
			return &store.Event{CommandID: c.ID, At: c.UpdatedAt, State: c.State}
		})
	}
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
	if n, err := s.PruneHistory(ctx, time.Now().Add(-24*time.Hour)); err != nil || n != 0 {
		t.Errorf("second prune = %d, %v; want 0", n, err)
	}
}

func testEvents(t *testing.T, s store.Store) {
	ctx := context.Background()
	insert(t, s, Cmd("c1", "a", "codex"))
	progress := &tenantagentv1.CommandProgress{CommandId: "c1", Message: "pulling"}
	for i, ev := range []store.Event{
		{CommandID: "c1", At: at(1), State: sent, Message: "one"},
		{CommandID: "c1", At: at(0), State: sent, Progress: progress, Message: "two"}, // earlier At: still listed second
	} {
		if err := s.AppendEvent(ctx, ev); err != nil {
			t.Fatalf("AppendEvent %d: %v", i, err)
		}
	}
	evs, err := s.ListEvents(ctx, "c1")
	if err != nil || len(evs) != 3 {
		t.Fatalf("events = %+v, %v; want journaled, one, two", evs, err)
	}
	if evs[0].Message != "journaled" || evs[0].State != pending || evs[1].Message != "one" || evs[1].Progress != nil {
		t.Errorf("events = %+v", evs)
	}
	if e := evs[2]; e.Message != "two" || e.CommandID != "c1" || !e.At.Equal(at(0)) || !proto.Equal(e.Progress, progress) {
		t.Errorf("event = %+v; want two with its progress", e)
	}
	if evs, err := s.ListEvents(ctx, "nope"); err != nil || len(evs) != 0 {
		t.Errorf("ListEvents(nope) = %v, %v", evs, err)
	}
}

func testAgents(t *testing.T, s store.Store) {
	ctx := context.Background()
	a := store.Agent{Identity: "spiffe://td/tenant/zeta", Tenant: "zeta", Name: "n", ConnectedAt: at(4), LastSeen: at(5), Hostname: "h",
		AgentVersion: "1", DockerVersion: "28", DockerReachable: true,
		Runtimes: []*tenantagentv1.RuntimeStatus{{Runtime: "codex", Containers: []*tenantagentv1.ContainerStatus{{Name: "ws-1", ImageDigest: "sha256:a"}}}}}
	b := store.Agent{Identity: "spiffe://td/tenant/acme/2", Tenant: "acme"}
	c := store.Agent{Identity: "spiffe://td/tenant/acme/1", Tenant: "acme"}
	if err := s.PutAgents(ctx, []store.Agent{a, b, c}); err != nil {
		t.Fatal(err)
	}
	agents, err := s.ListAgents(ctx)
	if err != nil || len(agents) != 3 || agents[0].Identity != c.Identity || agents[1].Identity != b.Identity {
		t.Fatalf("agents = %+v, %v; want ordered by tenant, identity", agents, err)
	}
	got := agents[2]
	if !got.ConnectedAt.Equal(a.ConnectedAt) || !got.LastSeen.Equal(a.LastSeen) || len(got.Runtimes) != 1 || !proto.Equal(got.Runtimes[0], a.Runtimes[0]) {
		t.Fatalf("agent = %+v", got)
	}
	got.ConnectedAt, got.LastSeen, got.Runtimes = a.ConnectedAt, a.LastSeen, a.Runtimes
	if !agentEqual(got, a) {
		t.Errorf("agent = %+v; want %+v", got, a)
	}
	a.DockerReachable, a.Runtimes = false, nil
	if err := s.PutAgents(ctx, []store.Agent{a}); err != nil {
		t.Fatal(err)
	}
	agents, _ = s.ListAgents(ctx)
	if len(agents) != 3 || agents[2].DockerReachable || len(agents[2].Runtimes) != 0 {
		t.Errorf("replaced agent = %+v", agents[2])
	}
}

func testTouchAgents(t *testing.T, s store.Store) {
	ctx := context.Background()
	a := store.Agent{Identity: "spiffe://td/tenant/acme/a", Tenant: "acme", Name: "a", ConnectedAt: at(1), LastSeen: at(5), Hostname: "h",
		AgentVersion: "1", DockerReachable: true,
		Runtimes: []*tenantagentv1.RuntimeStatus{{Runtime: "codex", Containers: []*tenantagentv1.ContainerStatus{{Name: "ws-1", ImageDigest: "sha256:a"}}}}}
	b := store.Agent{Identity: "spiffe://td/tenant/acme/b", Tenant: "acme", ConnectedAt: at(1), LastSeen: at(5)}
	if err := s.PutAgents(ctx, []store.Agent{a, b}); err != nil {
		t.Fatal(err)
	}
	if err := s.TouchAgents(ctx, []store.AgentSeen{{Identity: a.Identity, At: at(9)}, {Identity: b.Identity, At: at(3)}, {Identity: "spiffe://td/tenant/acme/nobody", At: at(9)}}); err != nil {
		t.Fatal(err)
	}
	if err := s.TouchAgents(ctx, nil); err != nil {
		t.Fatalf("TouchAgents(nil) = %v", err)
	}
	agents, err := s.ListAgents(ctx)
	if err != nil || len(agents) != 2 {
		t.Fatalf("agents = %+v, %v; want a and b only (a touch creates no record)", agents, err)
	}
	want := a
	want.LastSeen = at(9)
	if !agentEqual(agents[0], want) || len(agents[0].Runtimes) != 1 || !proto.Equal(agents[0].Runtimes[0], a.Runtimes[0]) {
		t.Errorf("touched agent = %+v; want %+v with its runtimes (only last seen moved)", agents[0], want)
	}
	if !agents[1].LastSeen.Equal(at(5)) {
		t.Errorf("an older touch set last seen to %v; want %v kept (only forward)", agents[1].LastSeen, at(5))
	}
}

func agentEqual(a, b store.Agent) bool {
	a.Runtimes, b.Runtimes = nil, nil
	return a.Identity == b.Identity && a.Tenant == b.Tenant && a.Name == b.Name && a.ConnectedAt.Equal(b.ConnectedAt) &&
		a.LastSeen.Equal(b.LastSeen) && a.Hostname == b.Hostname && a.AgentVersion == b.AgentVersion &&
		a.DockerVersion == b.DockerVersion && a.DockerReachable == b.DockerReachable
}

func testHoldsAndDenials(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, h := range []store.Hold{{Tenant: "zeta", HeldBy: "op", HeldAt: at(1)}, {Tenant: "acme", Reason: "canary", HeldBy: "op", HeldAt: at(2)}, {Tenant: "acme", Reason: "again", HeldBy: "op2", HeldAt: at(3)}} {
		if err := s.PutHold(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	holds, err := s.ListHolds(ctx)
	if err != nil || len(holds) != 2 || holds[0].Tenant != "acme" || holds[0].Reason != "again" || holds[0].HeldBy != "op2" || !holds[0].HeldAt.Equal(at(3)) {
		t.Fatalf("holds = %+v, %v; want acme (replaced), zeta", holds, err)
	}
	if ok, err := s.DeleteHold(ctx, "acme"); !ok || err != nil {
		t.Fatalf("delete hold: %v %v", ok, err)
	}
	if ok, err := s.DeleteHold(ctx, "acme"); ok || err != nil {
		t.Fatalf("deleted a hold twice: %v %v", ok, err)
	}
	for _, d := range []store.Denial{{Kind: store.DenyTenant, Value: "ab", DeniedBy: "op", DeniedAt: at(1)}, {Kind: store.DenySerial, Value: "ab", Reason: "x", DeniedBy: "op", DeniedAt: at(2)}, {Kind: store.DenySerial, Value: "ab", Reason: "y", DeniedBy: "op", DeniedAt: at(3)}} {
		if err := s.PutDenial(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := s.ListDenials(ctx)
	if err != nil || len(ds) != 2 || ds[0].Kind != store.DenySerial || ds[0].Reason != "y" || !ds[0].DeniedAt.Equal(at(3)) || ds[1].Kind != store.DenyTenant {
		t.Fatalf("denials = %+v, %v; want serial (replaced), tenant", ds, err)
	}
	if ok, err := s.DeleteDenial(ctx, store.DenySerial, "ab"); !ok || err != nil {
		t.Fatalf("delete denial: %v %v", ok, err)
	}
	if ok, _ := s.DeleteDenial(ctx, store.DenySerial, "ab"); ok {
		t.Fatal("deleted a denial twice")
	}
	if ds, _ := s.ListDenials(ctx); len(ds) != 1 || ds[0].Kind != store.DenyTenant {
		t.Errorf("denials after delete = %+v", ds)
	}
}

func testRollouts(t *testing.T, s store.Store) {
	ctx := context.Background()
	r := store.Rollout{ID: "r1", Runtime: "codex", Repository: "r", Digest: "sha256:a", RequestedBy: "op", CreatedAt: at(1), UpdatedAt: at(1),
		Options: store.RolloutOptions{Prefetch: true, MaxParallelTenants: 3, HaltAfterFailures: 2, MaxParallelContainers: 2, CanaryTenants: []string{"acme", "zeta"}}, State: store.RolloutRunning}
	for _, ro := range []store.Rollout{r, {ID: "r2", Runtime: "hermes", State: store.RolloutRunning}, {ID: "r3", Runtime: "codex", State: store.RolloutCompleted}} {
		if err := s.PutRollout(ctx, ro); err != nil {
			t.Fatal(err)
		}
	}
	if g, err := s.GetRollout(ctx, "r1"); err != nil || g.Owner != "" || g.Epoch != 0 || !g.LeaseUntil.IsZero() {
		t.Fatalf("GetRollout(r1) = %+v, %v; want no owner, epoch 0, no lease", g, err)
	}
	if _, err := s.GetRollout(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetRollout(nope) = %v; want ErrNotFound", err)
	}
	r.State, r.UpdatedAt, r.Message, r.Digest = store.RolloutHalted, at(9), "2 failed", "sha256:ignored"
	r.Owner, r.Epoch, r.LeaseUntil = "replica-a", 4, at(20)
	if err := s.PutRollout(ctx, r); err != nil {
		t.Fatal(err)
	}
	got, err := s.ListRollouts(ctx, "codex", store.RolloutHalted)
	if err != nil || len(got) != 1 {
		t.Fatalf("halted rollouts = %+v, %v; want r1, replaced in place", got, err)
	}
	g := got[0]
	if g.ID != "r1" || g.Message != "2 failed" || !g.UpdatedAt.Equal(at(9)) || !g.CreatedAt.Equal(at(1)) || g.Digest != "sha256:a" ||
		g.Owner != "replica-a" || g.Epoch != 4 || !g.LeaseUntil.Equal(at(20)) ||
		!g.Options.Prefetch || g.Options.MaxParallelTenants != 3 || g.Options.HaltAfterFailures != 2 || g.Options.MaxParallelContainers != 2 || !slices.Equal(g.Options.CanaryTenants, []string{"acme", "zeta"}) {
		t.Errorf("r1 = %+v; want state, time, message and lease replaced, the rest as created", g)
	}
	for _, tc := range []struct {
		runtime string
		state   store.RolloutState
		want    []string
	}{
		{"", "", []string{"r3", "r2", "r1"}},
		{"codex", "", []string{"r3", "r1"}},
		{"", store.RolloutRunning, []string{"r2"}},
		{"codex", store.RolloutRunning, nil},
	} {
		rs, err := s.ListRollouts(ctx, tc.runtime, tc.state)
		var names []string
		for _, r := range rs {
			names = append(names, r.ID)
		}
		if err != nil || !slices.Equal(names, tc.want) {
			t.Errorf("ListRollouts(%q, %q) = %v, %v; want %v", tc.runtime, tc.state, names, err, tc.want)
		}
	}
}

// putRollouts creates running rollouts with the given owner and lease end,
// created in the order given.
func putRollouts(t *testing.T, s store.Store, owner string, leaseUntil time.Time, ids ...string) {
	t.Helper()
	for _, id := range ids {
		r := store.Rollout{ID: id, Runtime: "codex", State: store.RolloutRunning, CreatedAt: time.Now(), Owner: owner, Epoch: 1, LeaseUntil: leaseUntil}
		if err := s.PutRollout(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
}

func rolloutIDs(rs []store.Rollout) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}

func testClaimRollouts(t *testing.T, s store.Store) {
	ctx := context.Background()
	now := at(100)
	putRollouts(t, s, "a", at(99), "expired-a")
	putRollouts(t, s, "b", at(101), "live-b")
	putRollouts(t, s, "c", at(50), "expired-c")
	putRollouts(t, s, "mine", at(200), "mine-live", "mine-running")
	// As migrated from before leases: no owner, epoch 0, no lease.
	if err := s.PutRollout(ctx, store.Rollout{ID: "never-owned", Runtime: "codex", State: store.RolloutRunning, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"done", "halted"} {
		state := store.RolloutCompleted
		if id == "halted" {
			state = store.RolloutHalted
		}
		if err := s.PutRollout(ctx, store.Rollout{ID: id, Runtime: "codex", State: state, CreatedAt: time.Now(), Owner: "a", LeaseUntil: at(1)}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ClaimRollouts(ctx, "mine", now, at(130), []string{"mine-running", "not-a-rollout"})
	want := []string{"expired-a", "expired-c", "mine-live", "never-owned"}
	if err != nil || !slices.Equal(rolloutIDs(got), want) {
		t.Fatalf("ClaimRollouts = %v, %v; want %v (expired, own not running here, never owned; oldest first)", rolloutIDs(got), err, want)
	}
	for _, r := range got {
		stored, err := s.GetRollout(ctx, r.ID)
		if err != nil || r.Owner != "mine" || !r.LeaseUntil.Equal(at(130)) || r.State != store.RolloutRunning || r.Runtime != "codex" ||
			stored.Owner != r.Owner || stored.Epoch != r.Epoch || !stored.LeaseUntil.Equal(r.LeaseUntil) {
			t.Errorf("claimed %+v, stored %+v, %v; want owner mine, lease until 130, as stored", r, stored, err)
		}
	}
	if got[0].Epoch != 2 || got[3].Epoch != 1 {
		t.Errorf("epochs %d, %d; want each one more than before (2, 1)", got[0].Epoch, got[3].Epoch)
	}
	for id, owner := range map[string]string{"live-b": "b", "mine-running": "mine", "done": "a", "halted": "a"} {
		if r, _ := s.GetRollout(ctx, id); r.Owner != owner || r.Epoch != map[bool]int64{true: 0, false: 1}[id == "done" || id == "halted"] {
			t.Errorf("%s = owner %q epoch %d; want untouched (owner %q)", id, r.Owner, r.Epoch, owner)
		}
	}
	// Nothing left to claim for another replica: every lease is live.
	if got, err := s.ClaimRollouts(ctx, "other", now, at(140), nil); err != nil || len(got) != 0 {
		t.Errorf("second claim = %v, %v; want none", rolloutIDs(got), err)
	}
	// A restarted replica takes its own back at once, even on a live lease.
	if got, err := s.ClaimRollouts(ctx, "b", now, at(140), nil); err != nil || !slices.Equal(rolloutIDs(got), []string{"live-b"}) || got[0].Epoch != 2 {
		t.Errorf("own claim = %+v, %v; want live-b at epoch 2", got, err)
	}
}

// Replicas claiming at once: each expired rollout goes to exactly one.
func testConcurrentClaims(t *testing.T, s store.Store) {
	ctx := context.Background()
	ids := []string{"r1", "r2", "r3"}
	putRollouts(t, s, "dead", at(1), ids...)
	var mu sync.Mutex
	owners := map[string][]string{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 8 {
		owner := "replica-" + strconv.Itoa(i)
		wg.Go(func() {
			<-start
			got, err := s.ClaimRollouts(ctx, owner, at(100), at(200), nil)
			if err != nil {
				t.Errorf("%s: ClaimRollouts: %v", owner, err)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, r := range got {
				owners[r.ID] = append(owners[r.ID], owner)
			}
		})
	}
	close(start)
	wg.Wait()
	for _, id := range ids {
		r, err := s.GetRollout(ctx, id)
		if err != nil || len(owners[id]) != 1 || r.Owner != owners[id][0] || r.Epoch != 2 {
			t.Errorf("%s claimed by %v; stored owner %q epoch %d, %v; want exactly one claimer, epoch 2", id, owners[id], r.Owner, r.Epoch, err)
		}
	}
}

func testUpdateRollout(t *testing.T, s store.Store) {
	ctx := context.Background()
	putRollouts(t, s, "a", at(10), "r1")
	r, _ := s.GetRollout(ctx, "r1")
	r.LeaseUntil = at(20)
	if err := s.UpdateRollout(ctx, r); err != nil {
		t.Fatalf("renewal by the owner: %v", err)
	}
	// b takes it over; a's writes at its epoch are refused and change nothing.
	claimed, err := s.ClaimRollouts(ctx, "b", at(30), at(40), nil)
	if err != nil || len(claimed) != 1 || claimed[0].Epoch != 2 {
		t.Fatalf("claim = %+v, %v", claimed, err)
	}
	stale := r
	stale.State, stale.Message, stale.UpdatedAt, stale.LeaseUntil = store.RolloutCompleted, "zombie", at(31), at(50)
	if err := s.UpdateRollout(ctx, stale); !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("stale epoch write = %v; want ErrLeaseLost", err)
	}
	stale.Owner, stale.Epoch = "b", 1 // b's name at an old epoch is just as stale
	if err := s.UpdateRollout(ctx, stale); !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("old epoch under the new owner's name = %v; want ErrLeaseLost", err)
	}
	if got, _ := s.GetRollout(ctx, "r1"); got.State != store.RolloutRunning || got.Message != "" || got.Owner != "b" || got.Epoch != 2 || !got.LeaseUntil.Equal(at(40)) {
		t.Fatalf("after refused writes r1 = %+v; want b's claim untouched", got)
	}
	b := claimed[0]
	b.State, b.Message, b.UpdatedAt, b.LeaseUntil = store.RolloutCompleted, "done", at(35), at(36)
	b.Digest, b.RequestedBy = "sha256:ignored", "ignored"
	if err := s.UpdateRollout(ctx, b); err != nil {
		t.Fatalf("owner's end: %v", err)
	}
	got, _ := s.GetRollout(ctx, "r1")
	if got.State != store.RolloutCompleted || got.Message != "done" || !got.UpdatedAt.Equal(at(35)) || !got.LeaseUntil.Equal(at(36)) || got.Digest != "" || got.RequestedBy != "" {
		t.Errorf("r1 = %+v; want state, message, updated_at and lease written, nothing else", got)
	}
	if err := s.UpdateRollout(ctx, store.Rollout{ID: "nope", Owner: "b", Epoch: 2}); !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("UpdateRollout(nope) = %v; want ErrLeaseLost", err)
	}
}

func testSetRolloutState(t *testing.T, s store.Store) {
	ctx := context.Background()
	putRollouts(t, s, "a", at(10), "r1")
	halted, _ := s.GetRollout(ctx, "r1")
	halted.State, halted.UpdatedAt = store.RolloutHalted, at(11)
	if err := s.UpdateRollout(ctx, halted); err != nil {
		t.Fatal(err)
	}
	// Resume: b takes the halted rollout at a new epoch; a's writes fail.
	want := store.Rollout{ID: "r1", State: store.RolloutRunning, Message: "resumed", UpdatedAt: at(20), Owner: "b", LeaseUntil: at(30), ResumedAt: at(20)}
	got, err := s.SetRolloutState(ctx, want, []store.RolloutState{store.RolloutHalted})
	if err != nil || got.State != store.RolloutRunning || got.Owner != "b" || got.Epoch != halted.Epoch+1 || !got.ResumedAt.Equal(at(20)) || !got.LeaseUntil.Equal(at(30)) || got.Message != "resumed" || got.Runtime != "codex" {
		t.Fatalf("resume = %+v, %v", got, err)
	}
	if err := s.UpdateRollout(ctx, halted); !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("the old owner's write after a resume = %v; want ErrLeaseLost", err)
	}
	// Resuming again is a conflict naming the state; nothing changes.
	if _, err := s.SetRolloutState(ctx, want, []store.RolloutState{store.RolloutHalted}); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "running") {
		t.Errorf("second resume = %v; want ErrConflict saying it is running", err)
	}
	// Abort from running: no owner, no lease.
	abort := store.Rollout{ID: "r1", State: store.RolloutAborted, Message: "aborted: bad image", UpdatedAt: at(40), ResumedAt: got.ResumedAt}
	if got, err = s.SetRolloutState(ctx, abort, []store.RolloutState{store.RolloutRunning, store.RolloutHalted}); err != nil || got.State != store.RolloutAborted || got.Owner != "" || !got.LeaseUntil.IsZero() {
		t.Fatalf("abort = %+v, %v", got, err)
	}
	if claimed, err := s.ClaimRollouts(ctx, "c", at(100), at(110), nil); err != nil || len(claimed) != 0 {
		t.Errorf("claim after abort = %v, %v; want none", rolloutIDs(claimed), err)
	}
	if _, err := s.SetRolloutState(ctx, abort, []store.RolloutState{store.RolloutRunning}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("abort of an aborted rollout = %v; want ErrConflict", err)
	}
	if _, err := s.SetRolloutState(ctx, store.Rollout{ID: "nope"}, []store.RolloutState{store.RolloutRunning}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetRolloutState(nope) = %v; want ErrNotFound", err)
	}
}

func testGetAgents(t *testing.T, s store.Store) {
	ctx := context.Background()
	agents := []store.Agent{{Identity: "z1", Tenant: "zeta", LastSeen: at(3)}, {Identity: "a2", Tenant: "acme"}, {Identity: "a1", Tenant: "acme"}, {Identity: "b1", Tenant: "beta"},
		{Identity: "a3", Tenant: "acme", Runtimes: []*tenantagentv1.RuntimeStatus{{Runtime: "codex"}}}}
	if err := s.PutAgents(ctx, agents); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetAgents(ctx, []string{"z1", "a3", "missing", "a1"})
	var names []string
	for _, a := range got {
		names = append(names, a.Identity)
	}
	if err != nil || !slices.Equal(names, []string{"a1", "a3", "z1"}) {
		t.Fatalf("GetAgents = %v, %v; want a1, a3, z1 (existing ones, by tenant and identity)", names, err)
	}
	if !got[2].LastSeen.Equal(at(3)) || len(got[1].Runtimes) != 1 || got[1].Runtimes[0].GetRuntime() != "codex" {
		t.Errorf("records = %+v; want them whole", got)
	}
	if got, err := s.GetAgents(ctx, nil); err != nil || len(got) != 0 {
		t.Errorf("GetAgents(nil) = %v, %v; want none", got, err)
	}
}

// A rollout journals at most one command of a kind per agent: a second,
// e.g. from a replica that lost the rollout, fails with ErrConflict and
// stores nothing of its batch.
func testRolloutCommandConflict(t *testing.T, s store.Store) {
	ctx := context.Background()
	first := Cmd("c1", "a", "codex")
	first.RolloutID = "r1"
	pf := Cmd("p1", "a", "codex")
	pf.RolloutID, pf.Kind = "r1", prefetch
	// Another kind, another rollout, or none: allowed for the same agent
	// (on another runtime, so they do not supersede c1).
	other := Cmd("o1", "a", "hermes")
	other.RolloutID = "r2"
	insert(t, s, first, pf, other, Cmd("n1", "a", "hermes"))
	dup := Cmd("c2", "a", "codex")
	dup.RolloutID = "r1"
	_, err := s.InsertCommands(ctx, []*store.Command{Cmd("z1", "b", "codex"), dup})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second refresh of r1 for agent a = %v; want ErrConflict", err)
	}
	for _, id := range []string{"z1", "c2"} {
		if _, err := s.GetCommand(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s of the failed batch stored: %v", id, err)
		}
	}
	if c, _ := s.GetCommand(ctx, "c1"); c.State != pending {
		t.Errorf("c1 = %v after the failed batch; want still pending (its supersede rolled back)", c.State)
	}
	// A finished command still counts: a rollout never refreshes an agent twice.
	update(t, s, "c1", func(c *store.Command) bool { c.State = succeeded; return true }, nil)
	if _, err := s.InsertCommands(ctx, []*store.Command{dup}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("after c1 ended: %v; want ErrConflict", err)
	}
	// A duplicate ID is an error, but not this conflict.
	again := Cmd("n1", "x", "codex")
	if _, err := s.InsertCommands(ctx, []*store.Command{again}); err == nil || errors.Is(err, store.ErrConflict) {
		t.Errorf("duplicate ID = %v; want an error other than ErrConflict", err)
	}
}

func testRotateTicketKeys(t *testing.T, s store.Store) {
	ctx := context.Background()
	key := func(b byte, sec int64) store.TicketKey {
		return store.TicketKey{Secret: [32]byte{b, 31: b}, CreatedAt: at(sec)}
	}
	rotate := func(fresh store.TicketKey, due, expired int64) []store.TicketKey {
		t.Helper()
		keys, err := s.RotateTicketKeys(ctx, fresh, at(due), at(expired))
		if err != nil {
			t.Fatalf("RotateTicketKeys: %v", err)
		}
		return keys
	}
	if keys := rotate(key(1, 100), 0, 0); len(keys) != 1 || keys[0] != key(1, 100) {
		t.Fatalf("first rotation = %v; want the fresh key, as given", keys)
	}
	// Not due: the key of 100 is younger than the rotation interval.
	if keys := rotate(key(2, 150), 100, 0); len(keys) != 1 || keys[0] != key(1, 100) {
		t.Fatalf("a rotation before the key was due added one: %v", keys)
	}
	if keys := rotate(key(3, 200), 101, 0); len(keys) != 2 || keys[0] != key(3, 200) || keys[1] != key(1, 100) {
		t.Fatalf("due rotation = %v; want the new key, then the old", keys)
	}
	// The key of 100 has expired; the one of 200 is not due.
	if keys := rotate(key(4, 300), 200, 101); len(keys) != 1 || keys[0] != key(3, 200) {
		t.Fatalf("rotation after expiry = %v; want only the key of 200", keys)
	}
}
