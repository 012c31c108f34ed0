package adminsvc

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/dispatch"
	"github.com/molecule-ai/tenant-agent/controlplane/pubsub"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// finishedStore answers GetCommand with a command that already finished.
type finishedStore struct {
	store.Store
	c *store.Command
}

func (f finishedStore) GetCommand(context.Context, string) (*store.Command, error) { return f.c, nil }

// TestFollowTellsWhatCameBeforeAFinishedSnapshot: when an agent finishes
// before the stream reads the command back, the updates the subscription
// already holds are told first (once each, never going back), and the
// stream ends with the result.
func TestFollowTellsWhatCameBeforeAFinishedSnapshot(t *testing.T) {
	t0 := time.Now()
	at := func(state controlplanev1.CommandState, d time.Duration) *store.Command {
		return &store.Command{ID: "c-1", State: state, UpdatedAt: t0.Add(d)}
	}
	final := at(controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED, 4*time.Second)
	hub := pubsub.NewHub[string, dispatch.Update](16)
	sub := hub.Subscribe("c-1")
	defer sub.Close()
	for _, u := range []dispatch.Update{
		{Command: at(controlplanev1.CommandState_COMMAND_STATE_SENT, 0)},
		{Command: at(controlplanev1.CommandState_COMMAND_STATE_SENT, 0)}, // a second doorbell
		{Command: at(controlplanev1.CommandState_COMMAND_STATE_RUNNING, time.Second)},
		// The fan-out's SENT, published after the fast agent's RUNNING.
		{Command: at(controlplanev1.CommandState_COMMAND_STATE_SENT, time.Second)},
		{Progress: &tenantagentv1.CommandProgress{CommandId: "c-1", Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING}},
		{Command: final},
	} {
		hub.Publish("c-1", u)
	}
	s := &service{cfg: Config{Store: finishedStore{c: final}, Logger: slog.New(slog.DiscardHandler)}}
	var got []string
	err := s.follow(t.Context(), "c-1", sub, func(ev *controlplanev1.CommandEvent) error {
		if ev.GetProgress() != nil {
			got = append(got, ev.GetProgress().GetPhase().String())
		} else {
			got = append(got, ev.GetState().String())
		}
		return nil
	})
	want := []string{"COMMAND_STATE_SENT", "COMMAND_STATE_RUNNING", "COMMAND_PHASE_PULLING", "COMMAND_STATE_SUCCEEDED"}
	if err != nil || len(got) != len(want) {
		t.Fatalf("follow sent %v, %v; want %v", got, err, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("follow sent %v; want %v", got, want)
		}
	}
}
