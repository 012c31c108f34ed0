package sqlite

import (
	"context"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/controlplane/store/storetest"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

const pending = controlplanev1.CommandState_COMMAND_STATE_PENDING

var cmd = storetest.Cmd

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, filepath.Join(t.TempDir(), "cp.db")) })
}

// Reopening the file applies no migration twice and keeps the data.
func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "cp.db")
	s := open(t, path)
	if err := s.RecordPin(ctx, store.Pin{Runtime: "codex", Repository: "r", Digest: "sha256:b", PromotedBy: "op"}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = open(t, path)
	if p, err := s.CurrentPin(ctx, "codex"); err != nil || p.Digest != "sha256:b" {
		t.Fatalf("current pin = %+v, %v; want sha256:b", p, err)
	}
	names, _ := fs.Glob(migrations, "migrations/*.sql")
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil || n != len(names) {
		t.Fatalf("schema_migrations has %d rows, %v; want %d, one per migration", n, err, len(names))
	}
}
