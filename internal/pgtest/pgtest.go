// Package pgtest gives each test a fresh, empty PostgreSQL database.
//
// With TENANT_AGENT_TEST_POSTGRES_DSN set, databases are created on that
// server (its user needs CREATEDB). Otherwise the package starts one
// throwaway server per test binary from the machine's PostgreSQL binaries
// (the newest under /usr/lib/postgresql/*/bin, else initdb on PATH), which
// the binary's TestMain stops:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// Without binaries the tests skip, or fail when CI is set.
package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/molecule-ai/tenant-agent/internal/pgserver"
)

// EnvDSN names the variable holding an existing server's DSN.
const EnvDSN = "TENANT_AGENT_TEST_POSTGRES_DSN"

var (
	mainCalled atomic.Bool
	once       sync.Once
	local      *pgserver.Server // the started server, nil when EnvDSN is used
	adminDSN   string           // a DSN with rights to CREATE DATABASE
	startErr   error
	skipReason string // set when there is no server and none can start
	dbCount    atomic.Int64
)

// Main runs the tests, then stops the server they started, if any.
func Main(m *testing.M) int {
	mainCalled.Store(true)
	code := m.Run()
	if local != nil {
		if err := local.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
		}
	}
	return code
}

// DSN returns the DSN of a new, empty database that is dropped when the
// test ends.
func DSN(t testing.TB) string {
	t.Helper()
	once.Do(setup)
	if skipReason != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("pgtest: %s (CI is set: PostgreSQL is required)", skipReason)
		}
		t.Skip("pgtest: " + skipReason)
	}
	if startErr != nil {
		t.Fatalf("pgtest: %v", startErr)
	}
	name := fmt.Sprintf("pgtest_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9, dbCount.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := admin(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// FORCE: a store the test forgot to close must not keep it alive.
		if err := admin(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database: %v", err)
		}
	})
	dsn, err := withDatabase(adminDSN, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return dsn
}

func setup() {
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		adminDSN = dsn
		return
	}
	if !mainCalled.Load() {
		startErr = fmt.Errorf("call pgtest.Main from TestMain, so the server it starts is stopped")
		return
	}
	bin, err := pgserver.FindBin()
	if err != nil {
		skipReason = err.Error() + "; install PostgreSQL or set " + EnvDSN
		return
	}
	local, startErr = pgserver.Start(bin)
	if startErr == nil {
		adminDSN = local.DSN("postgres")
	}
}

// admin runs one statement on the admin database (CREATE DATABASE cannot
// run in a transaction, so no pool or tx here).
func admin(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// withDatabase returns dsn pointing at database name instead, for both
// the URL and the keyword=value forms.
func withDatabase(dsn, name string) (string, error) {
	if !strings.Contains(dsn, "://") {
		// A later keyword wins in libpq's and pgx's parsing.
		return dsn + " dbname=" + name, nil
	}
	u, err := url.Parse(dsn)
	if err != nil {
		// Not %w: the error quotes the DSN, password included.
		return "", fmt.Errorf("%s is not a valid URL", EnvDSN)
	}
	u.Path = "/" + name
	return u.String(), nil
}
