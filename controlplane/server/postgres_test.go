package server

import (
	"os"
	"strings"
	"testing"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/internal/pgtest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// A --store URL runs the control plane on PostgreSQL: the journal
// supersedes, delivers and survives a restart as on SQLite.
func TestControlPlaneOnPostgres(t *testing.T) {
	dsn := pgtest.DSN(t)
	if !isPostgres(dsn) {
		t.Skipf("%s is not a postgres:// URL, which --store needs", pgtest.EnvDSN)
	}
	h := &harness{t: t, pki: pkitest.New(t, "away"), storePath: dsn, logs: &testlog.Buffer{}}
	h.start(nil)
	a := h.agent("away", codex(digestV1))
	a.Close()
	h.waitConnected("spiffe://molecule.local/tenant/away", false)
	older := refresh(t, h.operator(), "away", digestV1)
	newer := refresh(t, h.operator(), "away", digestV2)
	h.restart()
	if old := h.command(older); old.State != controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED {
		t.Fatalf("older command after restart: %v, want SUPERSEDED", old.State)
	}
	back := h.agent("away", codex(digestV1))
	h.waitState(newer, stateSucceeded)
	if r := back.Refreshes(); len(r) != 1 || r[0].GetCommandId() != newer {
		t.Errorf("agent received %v, want only the newer refresh", r)
	}
}

func TestStoreForLogHidesThePassword(t *testing.T) {
	for in, want := range map[string]string{
		"var/cp.db": "var/cp.db",
		"postgres://cp:s3cret@db:5432/cp?sslmode=verify-full": "postgres://cp:xxxxx@db:5432/cp?sslmode=verify-full",
		"postgresql://cp@db/cp":                               "postgresql://cp@db/cp",
	} {
		if got := storeForLog(in); got != want || strings.Contains(got, "s3cret") {
			t.Errorf("storeForLog(%q) = %q; want %q", in, got, want)
		}
	}
}
