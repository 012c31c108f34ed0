package postgres

import (
	"context"
	"io/fs"
	"net/url"
	"os"
	"sync"
	"testing"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/controlplane/store/storetest"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func open(t testing.TB, dsn string) *Store {
	t.Helper()
	s, err := Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, pgtest.DSN(t)) })
}

// Replicas starting together on a new database: the advisory lock lets
// one apply the migrations and the others find them applied.
func TestConcurrentOpensMigrateOnce(t *testing.T) {
	dsn := pgtest.DSN(t)
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for range 5 {
		wg.Go(func() {
			s, err := Open(context.Background(), dsn)
			if err == nil {
				s.Close()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Open: %v", err)
		}
	}
	s := open(t, dsn)
	var n int
	files, _ := fs.Glob(migrations, "migrations/*.sql")
	if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM schema_migrations`).Scan(&n); err != nil || n != len(files) {
		t.Fatalf("schema_migrations has %d rows, %v; want one per migration file (%d)", n, err, len(files))
	}
}

// Reopening keeps the data.
func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	s := open(t, dsn)
	if err := s.RecordPin(ctx, store.Pin{Runtime: "codex", Repository: "r", Digest: "sha256:b", PromotedBy: "op"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if p, err := open(t, dsn).CurrentPin(ctx, "codex"); err != nil || p.Digest != "sha256:b" {
		t.Fatalf("current pin = %+v, %v; want sha256:b", p, err)
	}
}

// Two replicas journaling a refresh for the same agent and runtime at once
// must not both leave theirs PENDING: one supersedes or one fails.
func TestConcurrentRefreshesLeaveOnePending(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	a, b := open(t, dsn), open(t, dsn)
	var wg sync.WaitGroup
	for i, s := range []*Store{a, b} {
		wg.Go(func() { s.InsertCommands(ctx, []*store.Command{storetest.Cmd(string(rune('x'+i)), "agent", "codex")}) })
	}
	wg.Wait()
	cs, err := a.ListCommands(ctx, store.CommandFilter{States: []controlplanev1.CommandState{controlplanev1.CommandState_COMMAND_STATE_PENDING}})
	if err != nil || len(cs) != 1 {
		t.Fatalf("pending = %d, %v; want exactly 1", len(cs), err)
	}
}

// The store's sessions plan every statement for its arguments unless the
// DSN says otherwise (customPlans).
func TestSessionsPlanForTheirArgumentsUnlessTheDSNSays(t *testing.T) {
	dsn := pgtest.DSN(t)
	auto := dsn + " plan_cache_mode=auto"
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		q := u.Query()
		q.Set("plan_cache_mode", "auto")
		u.RawQuery = q.Encode()
		auto = u.String()
	}
	for dsn, want := range map[string]string{dsn: "force_custom_plan", auto: "auto"} {
		var got string
		if err := open(t, dsn).pool.QueryRow(context.Background(), `SHOW plan_cache_mode`).Scan(&got); err != nil || got != want {
			t.Errorf("plan_cache_mode = %q, %v; want %q", got, err, want)
		}
	}
}
