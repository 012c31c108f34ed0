// Package postgres is the Store for several control plane replicas: one
// PostgreSQL database shared by all, through pgx's pool. Its semantics
// are SQLite's (storetest holds both to one contract); migrations are
// embedded and applied at open under an advisory lock, so replicas
// starting together apply each one once.
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/controlplane/store/sqlrow"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock is the advisory lock key serializing migrations across
// replicas ("tenant-a" in ASCII, so it collides with no one by accident).
const migrationLock = 0x74656e616e742d61

// Store is a store.Store on a PostgreSQL database.
type Store struct {
	pool *pgxpool.Pool
	// suspectUntil (Unix ns) is when pinging every connection stops.
	suspectUntil atomic.Int64
	// replica is the control plane replica using the store (Replica);
	// "" for none.
	replica string
}

var _ store.Store = (*Store)(nil)

// Option configures Open.
type Option func(*Store)

// Replica names the control plane replica using the store (its
// pgcluster ID). InsertCommands then rings the doorbell of every other
// replica holding a stream of an agent it journals a command for, in the
// same transaction; the replica sends to its own agents itself. Without
// it, every holder is rung.
func Replica(id string) Option { return func(s *Store) { s.replica = id } }

// Open connects to the database at dsn (a postgres:// URL or keyword=value
// string) and applies any migration it has not seen.
func Open(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// Not %w: pgx's parse errors may quote the DSN, password included.
		return nil, errors.New("postgres store: invalid DSN")
	}
	s := &Store{}
	s.pingAfterFatal(cfg)
	customPlans(cfg)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, errors.New("postgres store: invalid pool configuration")
	}
	s.pool = pool
	for _, o := range opts {
		o(s)
	}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres store: migrate: %w", err)
	}
	return s, nil
}

// suspectFor is how long after a FATAL error from the server (a restart,
// a failover, an administrator ending connections) every pooled
// connection is pinged before use.
const suspectFor = 10 * time.Second

// pingAfterFatal makes the pool check its connections for a while after
// one of them got a FATAL error: the server that sent it usually ended
// the others too, and each would otherwise fail its next query once.
// Otherwise pgx pings only connections idle for over a second.
func (s *Store) pingAfterFatal(cfg *pgxpool.Config) {
	onError := cfg.ConnConfig.OnPgError
	cfg.ConnConfig.OnPgError = func(c *pgconn.PgConn, e *pgconn.PgError) bool {
		if strings.EqualFold(e.Severity, "FATAL") {
			s.suspectUntil.Store(time.Now().Add(suspectFor).UnixNano())
		}
		return onError(c, e)
	}
	cfg.ShouldPing = func(_ context.Context, p pgxpool.ShouldPingParams) bool {
		return p.IdleDuration > time.Second || time.Now().UnixNano() < s.suspectUntil.Load()
	}
}

// customPlans has PostgreSQL plan every statement for its arguments
// (plan_cache_mode force_custom_plan) unless the DSN says otherwise. The
// store's hot statements look commands up by arrays of IDs; pgx prepares
// them, and a generic plan made while the table was small (a new
// database's first fan-out) went on scanning it whole as it grew, until
// autovacuum's next analyze: a burst of 50 acks scanned 5,000 rows,
// comparing each with all 50 IDs. A custom plan sees the array (an index
// scan, a hashed ANY) for a few tens of microseconds of planning a
// statement, and statements here carry whole bursts.
func customPlans(cfg *pgxpool.Config) {
	if _, set := cfg.ConnConfig.RuntimeParams["plan_cache_mode"]; !set {
		cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_custom_plan"
	}
}

// Close closes the pool.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// migrate applies, in one transaction holding the migration lock, every
// embedded migration not yet in schema_migrations. A replica that waited
// for the lock finds them recorded and applies nothing.
func (s *Store) migrate(ctx context.Context) error {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	return s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
			return err
		}
		for _, name := range names {
			if err := applyMigration(ctx, tx, name); err != nil {
				return err
			}
		}
		return nil
	})
}

func applyMigration(ctx context.Context, tx pgx.Tx, name string) error {
	version, err := strconv.Atoi(strings.SplitN(filepath.Base(name), "_", 2)[0])
	if err != nil {
		return fmt.Errorf("migration %s: name must start with a number", name)
	}
	var seen bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)`, version).Scan(&seen); err != nil || seen {
		return err
	}
	body, err := migrations.ReadFile(name)
	if err != nil {
		return err
	}
	// No arguments: pgx sends it as a simple query, which may hold
	// several statements.
	if _, err := tx.Exec(ctx, string(body)); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	_, err = tx.Exec(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`, version, time.Now().UnixNano())
	return err
}

func (s *Store) tx(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.pool, fn)
}

// --- pins

func (s *Store) RecordPin(ctx context.Context, p store.Pin) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO pins (`+sqlrow.PinColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		p.Runtime, p.TemplateName, p.Repository, p.Digest, p.GitSHA, p.PromotedAt.UnixNano(), p.PromotedBy, p.Notes)
	return err
}

func (s *Store) CurrentPin(ctx context.Context, runtime string) (store.Pin, error) {
	p, err := sqlrow.ScanPin(s.pool.QueryRow(ctx, `SELECT `+sqlrow.PinColumns+` FROM pins WHERE runtime = $1 ORDER BY seq DESC LIMIT 1`, runtime))
	if errors.Is(err, pgx.ErrNoRows) {
		return p, fmt.Errorf("runtime %q has no pin: %w", runtime, store.ErrNotFound)
	}
	return p, err
}

func (s *Store) ListPins(ctx context.Context) ([]store.Pin, error) {
	return queryAll(ctx, s.pool, sqlrow.ScanPin, `SELECT `+sqlrow.PinColumns+` FROM pins WHERE seq IN (SELECT MAX(seq) FROM pins GROUP BY runtime) ORDER BY runtime`)
}

func (s *Store) PinHistory(ctx context.Context, runtime string, limit int) ([]store.Pin, error) {
	var max any // LIMIT NULL is no limit
	if limit > 0 {
		max = limit
	}
	return queryAll(ctx, s.pool, sqlrow.ScanPin, `SELECT `+sqlrow.PinColumns+` FROM pins WHERE runtime = $1 ORDER BY seq DESC LIMIT $2`, runtime, max)
}

// --- helpers

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func queryAll[T any](ctx context.Context, q querier, scan func(sqlrow.Scanner) (T, error), sql string, args ...any) ([]T, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// states is the column form of command states.
func states(ss []controlplanev1.CommandState) []int32 {
	out := make([]int32, len(ss))
	for i, s := range ss {
		out[i] = int32(s)
	}
	return out
}
