package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/molecule-ai/tenant-agent/controlplane/store/storetest"
)

// BenchmarkFanOut is the store's share of a promote to 1,000 agents
// (storetest.BenchFanOut): ns/op over 1,000 is the store's cost a command.
func BenchmarkFanOut(b *testing.B) {
	s, err := Open(context.Background(), filepath.Join(b.TempDir(), "cp.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	storetest.BenchFanOut(b, s, 1000, 50)
}
