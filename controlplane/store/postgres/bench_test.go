package postgres

import (
	"testing"

	"github.com/molecule-ai/tenant-agent/controlplane/store/storetest"
	"github.com/molecule-ai/tenant-agent/internal/pgtest"
)

// BenchmarkFanOut is the store's share of a promote to 1,000 agents
// (storetest.BenchFanOut): ns/op over 1,000 is the store's cost a
// command, on this side of the connection (PostgreSQL's own CPU is not
// in it).
func BenchmarkFanOut(b *testing.B) {
	storetest.BenchFanOut(b, open(b, pgtest.DSN(b)), 1000, 50)
}
