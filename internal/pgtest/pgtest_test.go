package pgtest

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// Each DSN is its own empty database: what one test creates, another
// does not see.
func TestDSNGivesFreshIsolatedDatabases(t *testing.T) {
	ctx := context.Background()
	a, b := connect(t, DSN(t)), connect(t, DSN(t))
	if _, err := a.Exec(ctx, `CREATE TABLE mine (x int); INSERT INTO mine VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := a.QueryRow(ctx, `SELECT count(*) FROM mine`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("count = %d, %v; want 1", n, err)
	}
	if _, err := b.Exec(ctx, `SELECT * FROM mine`); err == nil {
		t.Fatal("the second database sees the first one's table")
	}
	var dbA, dbB string
	a.QueryRow(ctx, `SELECT current_database()`).Scan(&dbA)
	b.QueryRow(ctx, `SELECT current_database()`).Scan(&dbB)
	if dbA == dbB || dbA == "postgres" {
		t.Fatalf("databases %q and %q; want two new ones", dbA, dbB)
	}
}

// A test's database is dropped when it ends.
func TestDatabaseDroppedAtCleanup(t *testing.T) {
	var name string
	t.Run("inner", func(t *testing.T) {
		c := connect(t, DSN(t))
		c.QueryRow(context.Background(), `SELECT current_database()`).Scan(&name)
		c.Close(context.Background())
	})
	c := connect(t, adminDSN)
	var n int
	if err := c.QueryRow(context.Background(), `SELECT count(*) FROM pg_database WHERE datname = $1`, name).Scan(&n); err != nil || n != 0 {
		t.Fatalf("database %q still there (%d, %v)", name, n, err)
	}
}

func TestWithDatabase(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:p@h:5/old?sslmode=disable": "postgres://u:p@h:5/new?sslmode=disable",
		"host=h user=u dbname=old":               "host=h user=u dbname=old dbname=new",
	} {
		if got, err := withDatabase(in, "new"); err != nil || got != want {
			t.Errorf("withDatabase(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}
