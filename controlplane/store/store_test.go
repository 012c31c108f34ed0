package store

import (
	"testing"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

// Terminal decides which commands are finished (pruned, never resent):
// every state a command can end in, PARTIAL included, and nothing else.
func TestTerminalStates(t *testing.T) {
	for v, name := range controlplanev1.CommandState_name {
		s := controlplanev1.CommandState(v)
		want := map[controlplanev1.CommandState]bool{
			controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED: true, controlplanev1.CommandState_COMMAND_STATE_FAILED: true,
			controlplanev1.CommandState_COMMAND_STATE_ROLLED_BACK: true, controlplanev1.CommandState_COMMAND_STATE_PARTIAL: true,
			controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED: true, controlplanev1.CommandState_COMMAND_STATE_CANCELED: true,
			controlplanev1.CommandState_COMMAND_STATE_EXPIRED: true,
		}[s]
		if Terminal(s) != want {
			t.Errorf("Terminal(%s) = %v; want %v", name, Terminal(s), want)
		}
	}
}
