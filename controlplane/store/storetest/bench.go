package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// BenchFanOut is the store's share of a promote to agents agents, as the
// control plane does it: journal the fan-out in one call, record it sent
// in one, read each command once (a rollout following it), then record
// the acks and the results in bursts of burst reports. b.N counts
// promotes; the figure to read is ns/op divided by agents.
func BenchFanOut(b *testing.B, s store.Store, agents, burst int) {
	ctx := context.Background()
	b.ReportAllocs()
	for i := range b.N {
		cmds := make([]*store.Command, agents)
		ids := make([]string, agents)
		for j := range cmds {
			cmds[j] = Cmd(fmt.Sprintf("c-%d-%d", i, j), fmt.Sprintf("agent-%d", j), "codex")
			cmds[j].RolloutID = fmt.Sprintf("r-%d", i)
			ids[j] = cmds[j].ID
		}
		if _, err := s.InsertCommands(ctx, cmds); err != nil {
			b.Fatal(err)
		}
		if _, err := s.AdvanceCommands(ctx, ids, []controlplanev1.CommandState{pending}, sent, time.Now(), "sent on the agent's stream"); err != nil {
			b.Fatal(err)
		}
		for _, id := range ids {
			if _, err := s.GetCommand(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
		for _, report := range []func(*store.Command) bool{
			func(c *store.Command) bool { c.State, c.UpdatedAt = acked, time.Now(); return true },
			func(c *store.Command) bool {
				c.State, c.UpdatedAt = succeeded, time.Now()
				c.Result = &tenantagentv1.CommandResult{CommandId: c.ID, Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED}
				return true
			},
		} {
			for from := 0; from < agents; from += burst {
				var updates []store.CommandUpdate
				for _, id := range ids[from:min(from+burst, agents)] {
					updates = append(updates, store.CommandUpdate{ID: id, Fn: report, Event: func(c *store.Command) *store.Event {
						return &store.Event{CommandID: c.ID, At: c.UpdatedAt, State: c.State, Message: "reported"}
					}})
				}
				if _, err := s.UpdateCommands(ctx, updates); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
}
