package dispatch

import (
	"context"
	"testing"
	"time"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// BenchmarkHandleProgress is the control plane's cost of one progress
// report of a running command: a pull reports every 250 ms, so a promote
// to N pulling agents brings 4N a second. The store is the test store
// (SQLite, or PostgreSQL with TENANT_AGENT_TEST_STORE=postgres).
func BenchmarkHandleProgress(b *testing.B) {
	ctx := context.Background()
	e, s, c := withSentRefresh(b)
	pulling := func(n uint64) *tenantagentv1.CommandProgress {
		return &tenantagentv1.CommandProgress{CommandId: c.ID, Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING, CurrentBytes: n, TotalBytes: 1 << 30}
	}
	e.d.HandleProgress(ctx, s, pulling(0)) // RUNNING and the pull's step recorded
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		e.now = e.now.Add(250 * time.Millisecond) // a pull's pace, so the store is reread as often as it is for real
		e.d.HandleProgress(ctx, s, pulling(uint64(i)))
	}
}
