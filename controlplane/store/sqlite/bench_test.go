package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

// BenchmarkFanOutWrites is the store's share of a promote to 1,000
// agents: journal the commands, then record them sent, one transaction
// each.
func BenchmarkFanOutWrites(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(b.TempDir(), "cp.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := range b.N {
		cmds := make([]*store.Command, 1000)
		ids := make([]string, len(cmds))
		for j := range cmds {
			cmds[j] = cmd(fmt.Sprintf("c-%d-%d", i, j), fmt.Sprintf("agent-%d", j), "codex")
			ids[j] = cmds[j].ID
		}
		if _, err := s.InsertCommands(ctx, cmds); err != nil {
			b.Fatal(err)
		}
		if _, err := s.AdvanceCommands(ctx, ids, []controlplanev1.CommandState{pending}, controlplanev1.CommandState_COMMAND_STATE_SENT, time.Now(), "sent"); err != nil {
			b.Fatal(err)
		}
	}
}
