package pgserver

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
)

// A server starts, serves a database it creates, and Stop leaves nothing
// behind.
func TestStartCreateDatabaseStop(t *testing.T) {
	bin, err := FindBin()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	s, err := Start(bin)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			s.Stop()
		}
	})
	ctx := context.Background()
	dsn, err := s.CreateDatabase(ctx, "demo-db")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	var db string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil || db != "demo-db" {
		t.Fatalf("current_database() = %q, %v; want demo-db", db, err)
	}
	conn.Close(ctx)

	stopped = true
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Fatalf("%s still there after Stop (%v)", s.Dir, err)
	}
	if c, err := pgx.Connect(ctx, dsn); err == nil {
		c.Close(ctx)
		t.Fatal("the server still accepts connections after Stop")
	}
}

func TestNewestPicksTheHighestVersionWithInitdb(t *testing.T) {
	root := t.TempDir()
	var dirs []string
	for _, v := range []string{"9.6", "15", "13", "17"} {
		d := filepath.Join(root, v, "bin")
		os.MkdirAll(d, 0o755)
		if v != "17" { // 17 has no initdb: not a server install
			os.WriteFile(filepath.Join(d, "initdb"), nil, 0o755)
		}
		dirs = append(dirs, d)
	}
	if got, want := newest(dirs), filepath.Join(root, "15", "bin"); got != want {
		t.Fatalf("newest = %s; want %s", got, want)
	}
	if got := newest(nil); got != "" {
		t.Fatalf("newest(nil) = %q", got)
	}
}
