package server

import (
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// watchRollout follows a rollout with WatchRollout to its end and returns
// the final response.
func watchRollout(t *testing.T, admin controlplanev1.AdminServiceClient, id string) (first, last *controlplanev1.WatchRolloutResponse) {
	t.Helper()
	stream, err := admin.WatchRollout(ctx(t), &controlplanev1.WatchRolloutRequest{RolloutId: id})
	if err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return first, last
		}
		if err != nil {
			t.Fatalf("watch rollout %s: %v", id, err)
		}
		if first == nil {
			first = resp
		}
		last = resp
	}
}

func TestHaltedRolloutIsListedResumedAndCompletes(t *testing.T) {
	h := newHarness(t, "alpha", "bravo", "charlie")
	h.agent("alpha", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.RollBack})
	h.agent("bravo", codex(digestV1))
	h.agent("charlie", codex(digestV1))
	admin := h.operator()

	events := promote(t, admin, &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2,
		Options: &controlplanev1.RolloutOptions{MaxParallelTenants: 1, HaltAfterFailures: 1}})
	last := events[len(events)-1]
	if last.GetKind() != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED {
		t.Fatalf("last event %v, want HALTED after alpha rolled back", last)
	}
	id := last.GetRolloutId()
	list, err := admin.ListRollouts(ctx(t), &controlplanev1.ListRolloutsRequest{State: controlplanev1.RolloutState_ROLLOUT_STATE_HALTED})
	if err != nil || len(list.GetRollouts()) != 1 || list.GetRollouts()[0].GetRolloutId() != id {
		t.Fatalf("ListRollouts(halted) = %v, %v; want %s", list, err, id)
	}
	if c := list.GetRollouts()[0].GetCounts(); c.GetFailed() != 1 || c.GetSucceeded() != 0 {
		t.Errorf("halted rollout counts %v; want 1 failed", c)
	}
	// Only a halted rollout resumes.
	if _, err := admin.AbortRollout(ctx(t), &controlplanev1.AbortRolloutRequest{RolloutId: "r-nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("AbortRollout(r-nope) = %v; want NotFound", err)
	}

	resumed, err := admin.ResumeRollout(ctx(t), &controlplanev1.ResumeRolloutRequest{RolloutId: id})
	if err != nil || resumed.GetRollout().GetState() != controlplanev1.RolloutState_ROLLOUT_STATE_RUNNING {
		t.Fatalf("ResumeRollout = %v, %v", resumed, err)
	}
	first, end := watchRollout(t, admin, id)
	if first.GetRollout().GetRolloutId() != id || first.GetEvent() != nil {
		t.Errorf("first WatchRollout response %v; want the rollout and no event", first)
	}
	if end.GetEvent().GetKind() != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED || end.GetRollout().GetState() != controlplanev1.RolloutState_ROLLOUT_STATE_COMPLETED {
		t.Fatalf("rollout ended with %v; want COMPLETED: alpha's failure before the resume no longer halts it", end)
	}
	if c := end.GetRollout().GetCounts(); c.GetTenants() != 3 || c.GetSucceeded() != 2 || c.GetFailed() != 1 {
		t.Errorf("final counts %v; want 3 tenants, 2 succeeded, 1 failed", c)
	}
	if _, err := admin.ResumeRollout(ctx(t), &controlplanev1.ResumeRolloutRequest{RolloutId: id}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("resuming a completed rollout = %v; want FailedPrecondition", err)
	}
	got, err := admin.GetRollout(ctx(t), &controlplanev1.GetRolloutRequest{RolloutId: id})
	if err != nil || got.GetRollout().GetState() != controlplanev1.RolloutState_ROLLOUT_STATE_COMPLETED {
		t.Errorf("GetRollout = %v, %v", got, err)
	}
}

func TestAbortCancelsWhatWaitsAndGivesTheRuntimeBackToReconcile(t *testing.T) {
	h := newHarness(t, "late", "stuck")
	late := h.agent("late", codex(digestV1))
	late.Close()
	h.waitConnected(spiffe("late"), false)
	h.agent("stuck", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: cptest.Hang})
	admin := h.operator()

	stream, err := admin.PromoteRuntimeImage(ctx(t), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2,
		Options: &controlplanev1.RolloutOptions{MaxParallelTenants: 1}})
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for id == "" {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		// late waits for its agent; stuck's refresh runs and hangs.
		if ev := resp.GetEvent(); ev.GetTenant() == "stuck" && ev.GetState() == controlplanev1.CommandState_COMMAND_STATE_RUNNING {
			id = ev.GetRolloutId()
		}
	}
	aborted, err := admin.AbortRollout(ctx(t), &controlplanev1.AbortRolloutRequest{RolloutId: id, Reason: "bad image"})
	if err != nil || aborted.GetRollout().GetState() != controlplanev1.RolloutState_ROLLOUT_STATE_ABORTED || aborted.GetCanceled() != 1 {
		t.Fatalf("AbortRollout = %v, %v; want ABORTED with late's pending command canceled", aborted, err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("the promote stream did not end with ABORTED: %v", err)
		}
		if resp.GetEvent().GetKind() == controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_ABORTED {
			break
		}
	}
	if _, err := admin.AbortRollout(ctx(t), &controlplanev1.AbortRolloutRequest{RolloutId: id}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("aborting again = %v; want FailedPrecondition", err)
	}

	// late comes back off the pin: reconcile, no longer held off by the
	// rollout, refreshes it; the rollout's canceled command is not sent.
	back := h.agent("late", codex(digestV1))
	back.WaitFor(wait, "a refresh", func(m []*tenantagentv1.ControlMessage) bool {
		for _, msg := range m {
			if msg.GetRefresh() != nil {
				return true
			}
		}
		return false
	})
	refreshes := back.Refreshes()
	if len(refreshes) != 1 {
		t.Fatalf("late received %d refreshes; want 1 (reconcile's)", len(refreshes))
	}
	if c := h.command(refreshes[0].GetCommandId()); c.RequestedBy != "reconcile" || c.RolloutID != "" {
		t.Errorf("late's refresh was requested by %q (rollout %q); want reconcile's", c.RequestedBy, c.RolloutID)
	}
}

func TestHoldNeedsAKnownTenantAndReleaseIsIdempotent(t *testing.T) {
	h := newHarness(t, "acme")
	h.agent("acme", codex(digestV1))
	admin := h.operator()
	if _, err := admin.HoldTenant(ctx(t), &controlplanev1.HoldTenantRequest{Tenant: "acmee"}); status.Code(err) != codes.NotFound {
		t.Errorf("HoldTenant(unknown) = %v; want NotFound", err)
	}
	if _, err := admin.HoldTenant(ctx(t), &controlplanev1.HoldTenantRequest{Tenant: "acme", Reason: "canary"}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, false} {
		resp, err := admin.ReleaseTenant(ctx(t), &controlplanev1.ReleaseTenantRequest{Tenant: "acme"})
		if err != nil || resp.GetReleased() != want {
			t.Errorf("release #%d = %v, %v; want released=%v", i+1, resp, err, want)
		}
	}
}

func TestRefreshStreamStatesOnlyMoveForward(t *testing.T) {
	h := newHarness(t, "acme")
	h.agent("acme", codex(digestV1))
	for range 5 {
		stream, err := h.operator().RefreshRuntimeImage(ctx(t), &controlplanev1.RefreshRuntimeImageRequest{Tenant: "acme", Runtime: "codex", ImageDigest: digestV2})
		if err != nil {
			t.Fatal(err)
		}
		var states []controlplanev1.CommandState
		for {
			resp, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := resp.GetEvent().GetState(); s != controlplanev1.CommandState_COMMAND_STATE_UNSPECIFIED && resp.GetEvent().GetProgress() == nil {
				states = append(states, s)
			}
		}
		for i := 1; i < len(states); i++ {
			if store.StateOrder(states[i]) <= store.StateOrder(states[i-1]) {
				t.Fatalf("refresh stream states %v: repeated or out of order", states)
			}
		}
	}
}

// A rollout's first window is issued (and sent) before its tenants follow
// their commands; the stream still tells the states they reached
// meanwhile. The agent never reads, so its command stays SENT: without
// that, SENT would never be told.
func TestPromoteStreamTellsTheFirstWindowsStates(t *testing.T) {
	h := newHarness(t, "solo")
	h.agent("solo", cptest.Options{Runtimes: codex(digestV1).Runtimes, NoRead: true})
	admin := h.operator()
	stream, err := admin.PromoteRuntimeImage(ctx(t), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			if ev := resp.GetEvent(); ev.GetTenant() == "solo" && ev.GetState() == controlplanev1.CommandState_COMMAND_STATE_SENT {
				got <- ev.GetRolloutId()
				return
			}
		}
	}()
	select {
	case id := <-got:
		if _, err := admin.AbortRollout(ctx(t), &controlplanev1.AbortRolloutRequest{RolloutId: id}); err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the promote stream never told solo's command SENT")
	}
}
