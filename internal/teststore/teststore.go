// Package teststore opens the store a control plane test runs on: a
// SQLite file by default, or a fresh PostgreSQL database when
// TENANT_AGENT_TEST_STORE=postgres (make test runs the control plane's
// tests both ways). A test binary using it calls pgtest.Main in TestMain.
package teststore

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/controlplane/store/postgres"
	"github.com/molecule-ai/tenant-agent/controlplane/store/sqlite"
	"github.com/molecule-ai/tenant-agent/internal/pgtest"
)

// Env selects the store: "postgres", or anything else for SQLite.
const Env = "TENANT_AGENT_TEST_STORE"

// Postgres reports whether tests run on PostgreSQL.
func Postgres() bool { return os.Getenv(Env) == "postgres" }

// Spec is a new store's --store value: a SQLite file in the test's temp
// dir, or a new PostgreSQL database's URL.
func Spec(t testing.TB) string {
	if Postgres() {
		return pgtest.DSN(t)
	}
	return filepath.Join(t.TempDir(), "cp.db")
}

// Open opens a new, empty store that is closed when the test ends.
func Open(t testing.TB) store.Store {
	t.Helper()
	var st store.Store
	var err error
	if spec := Spec(t); Postgres() {
		st, err = postgres.Open(context.Background(), spec)
	} else {
		st, err = sqlite.Open(context.Background(), spec)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}
