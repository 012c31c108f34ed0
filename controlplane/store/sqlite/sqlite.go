// Package sqlite is the embedded Store: one SQLite file in WAL mode, pure
// Go (modernc.org/sqlite, no cgo), migrations embedded and applied at open.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	msqlite "modernc.org/sqlite" // also registers the "sqlite" driver
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/controlplane/store/sqlrow"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is a store.Store on a SQLite file.
type Store struct {
	db   *sql.DB
	lock *storeLock
	// stmts holds the hot statements, prepared once on the store's one
	// connection (query -> *sql.Stmt): parsing a statement costs SQLite
	// more than running it, and a fan-out runs thousands.
	stmts sync.Map
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database at path and applies any
// migration it has not seen. It fails at once if another control plane
// (or another Open in this process) has the store open: see lock.go.
func Open(ctx context.Context, path string) (_ *Store, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store directory: %w", err)
	}
	lock, err := lockStore(path)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lock.release()
		}
	}()
	// The journal names every tenant and command: readable by the control
	// plane's user only. SQLite gives its -wal and -shm files the
	// database file's mode, so creating the file first covers all three.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store file: %w", err)
	}
	f.Close()
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	// One connection: SQLite has one writer anyway, and this keeps every
	// transaction free of SQLITE_BUSY.
	db.SetMaxOpenConns(1)
	s := &Store{db: db, lock: lock}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("prepare statements on %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database and releases the store's lock. A nil Store
// (a failed Open's, inside a store.Store) closes nothing.
func (s *Store) Close() error {
	if s == nil {
		return nil
	}
	var errs []error
	s.stmts.Range(func(_, st any) bool {
		errs = append(errs, st.(*sql.Stmt).Close())
		return true
	})
	return errors.Join(append(errs, s.db.Close(), s.lock.release())...)
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return err
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		version, err := strconv.Atoi(strings.SplitN(filepath.Base(name), "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migration %s: name must start with a number", name)
		}
		var seen int
		if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, version).Scan(&seen); err != nil {
			return err
		}
		if seen > 0 {
			continue
		}
		body, err := migrations.ReadFile(name)
		if err != nil {
			return err
		}
		err = s.tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, string(body)); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, version, time.Now().UnixNano())
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// hotStatements are prepared once, at Open, on the store's one
// connection: parsing a statement costs SQLite more than running it, and
// a fan-out runs thousands. (Not later: with one connection, preparing
// outside a transaction would wait for the one the caller's holds.)
var hotStatements = []string{
	getCommandSQL, readCommandsSQL, insertCommandSQL, pendingOfSQL, journaledEventsSQL, insertEventSQL, writeCommandSQL, listEventsSQL,
	advanceSQL, advanceEventsSQL,
}

func (s *Store) prepare(ctx context.Context) error {
	for _, q := range hotStatements {
		st, err := s.db.PrepareContext(ctx, q)
		if err != nil {
			return err
		}
		s.stmts.Store(q, st)
	}
	return nil
}

// txStmt is query in tx: the statement as prepared at Open, or else
// prepared for this transaction.
func (s *Store) txStmt(ctx context.Context, tx *sql.Tx, query string) (*sql.Stmt, error) {
	if st, ok := s.stmts.Load(query); ok {
		return tx.StmtContext(ctx, st.(*sql.Stmt)), nil
	}
	return tx.PrepareContext(ctx, query)
}

// hot is one of hotStatements, outside a transaction.
func (s *Store) hot(query string) *sql.Stmt {
	st, _ := s.stmts.Load(query)
	return st.(*sql.Stmt)
}

func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// --- pins

func (s *Store) RecordPin(ctx context.Context, p store.Pin) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO pins (runtime, template_name, image_repository, image_digest, git_sha, promoted_at, promoted_by, notes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		p.Runtime, p.TemplateName, p.Repository, p.Digest, p.GitSHA, p.PromotedAt.UnixNano(), p.PromotedBy, p.Notes)
	return err
}

func (s *Store) CurrentPin(ctx context.Context, runtime string) (store.Pin, error) {
	p, err := sqlrow.ScanPin(s.db.QueryRowContext(ctx, `SELECT `+sqlrow.PinColumns+` FROM pins WHERE runtime = ? ORDER BY seq DESC LIMIT 1`, runtime))
	if errors.Is(err, sql.ErrNoRows) {
		return p, fmt.Errorf("runtime %q has no pin: %w", runtime, store.ErrNotFound)
	}
	return p, err
}

func (s *Store) ListPins(ctx context.Context) ([]store.Pin, error) {
	return queryAll(ctx, s.db, sqlrow.ScanPin, `SELECT `+sqlrow.PinColumns+` FROM pins WHERE seq IN (SELECT MAX(seq) FROM pins GROUP BY runtime) ORDER BY runtime`)
}

func (s *Store) PinHistory(ctx context.Context, runtime string, limit int) ([]store.Pin, error) {
	if limit <= 0 {
		limit = -1
	}
	return queryAll(ctx, s.db, sqlrow.ScanPin, `SELECT `+sqlrow.PinColumns+` FROM pins WHERE runtime = ? ORDER BY seq DESC LIMIT ?`, runtime, limit)
}

// --- commands

// InsertCommands journals the commands run by run (sqlrow.DistinctRun: a
// fan-out is one run), each run in a few statements: one read of the
// PENDING refreshes its refreshes supersede, an insert a command, one
// statement for the journaled events.
func (s *Store) InsertCommands(ctx context.Context, cmds []*store.Command) ([]string, error) {
	var superseded []string
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for rest := cmds; len(rest) > 0; {
			n := sqlrow.DistinctRun(rest)
			ids, err := s.journalRun(ctx, tx, rest[:n])
			if err != nil {
				return err
			}
			superseded, rest = append(superseded, ids...), rest[n:]
		}
		return nil
	})
	return superseded, err
}

// journalRun journals commands none of which supersedes another.
func (s *Store) journalRun(ctx context.Context, tx *sql.Tx, cmds []*store.Command) ([]string, error) {
	superseded, err := s.supersede(ctx, tx, cmds)
	if err != nil {
		return nil, err
	}
	insert, err := s.txStmt(ctx, tx, insertCommandSQL)
	if err != nil {
		return nil, err
	}
	journaled := make([][3]any, len(cmds))
	for i, c := range cmds {
		options, err := sqlrow.MarshalOrNil(c.Options)
		if err != nil {
			return nil, err
		}
		res, err := insert.ExecContext(ctx, c.ID, c.Agent, c.Tenant, int32(c.Kind), c.Runtime, c.Repository, c.Digest, options, int32(c.State), c.RequestedBy, c.RolloutID, c.CreatedAt.UnixNano(), c.UpdatedAt.UnixNano(), c.Deadline.UnixNano())
		if isRolloutCommandConflict(err) {
			return nil, fmt.Errorf("insert command %s: rollout %s already has a command of this kind for %s: %w", c.ID, c.RolloutID, c.Agent, store.ErrConflict)
		}
		if err != nil {
			return nil, fmt.Errorf("insert command %s: %w", c.ID, err)
		}
		if c.Seq, err = res.LastInsertId(); err != nil {
			return nil, err
		}
		journaled[i] = [3]any{c.ID, c.CreatedAt.UnixNano(), int32(c.State)}
	}
	events, err := s.txStmt(ctx, tx, journaledEventsSQL)
	if err != nil {
		return nil, err
	}
	list, err := dialect.List(journaled)
	if err != nil {
		return nil, err
	}
	_, err = events.ExecContext(ctx, list)
	return superseded, err
}

// supersede marks the PENDING refreshes of the agents and runtimes of
// cmds' refreshes SUPERSEDED, each by the refresh of its agent and
// runtime, and returns them by refresh in cmds' order, oldest first.
func (s *Store) supersede(ctx context.Context, tx *sql.Tx, cmds []*store.Command) ([]string, error) {
	var refreshes [][3]any // agent, runtime, index in cmds
	for i, c := range cmds {
		if c.Kind == controlplanev1.CommandKind_COMMAND_KIND_REFRESH {
			refreshes = append(refreshes, [3]any{c.Agent, c.Runtime, i})
		}
	}
	if len(refreshes) == 0 {
		return nil, nil
	}
	list, err := dialect.List(refreshes)
	if err != nil {
		return nil, err
	}
	pendingOf, err := s.txStmt(ctx, tx, pendingOfSQL)
	if err != nil {
		return nil, err
	}
	type old struct {
		id string
		by int
	}
	found, err := queryAll(ctx, stmtQuerier{pendingOf}, func(r sqlrow.Scanner) (old, error) {
		var o old
		return o, r.Scan(&o.id, &o.by)
	}, "", list, int32(controlplanev1.CommandKind_COMMAND_KIND_REFRESH), int32(controlplanev1.CommandState_COMMAND_STATE_PENDING))
	if err != nil || len(found) == 0 {
		return nil, err
	}
	events, err := s.txStmt(ctx, tx, insertEventSQL)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(found))
	for i, o := range found {
		c := cmds[o.by]
		msg := "superseded by " + c.ID
		if _, err := tx.ExecContext(ctx, `UPDATE commands SET state = ?, error = ?, updated_at = ? WHERE id = ?`,
			int32(controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED), msg, c.CreatedAt.UnixNano(), o.id); err != nil {
			return nil, err
		}
		if err := execEvent(ctx, events, store.Event{CommandID: o.id, At: c.CreatedAt, State: controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED, Message: msg}); err != nil {
			return nil, err
		}
		ids[i] = o.id
	}
	return ids, nil
}

// isRolloutCommandConflict reports whether err is a violation of
// commands_one_per_rollout_agent. SQLite names the index's columns, not
// the index, in the message; a duplicate command ID names commands.id.
func isRolloutCommandConflict(err error) bool {
	var se *msqlite.Error
	return errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE &&
		strings.Contains(se.Error(), "commands.rollout_id, commands.agent, commands.kind")
}

const (
	getCommandSQL    = `SELECT ` + sqlrow.CommandColumns + ` FROM commands WHERE id = ?`
	readCommandsSQL  = `SELECT ` + sqlrow.CommandColumns + ` FROM commands WHERE id IN (SELECT value FROM json_each(?))`
	insertCommandSQL = `INSERT INTO commands (id, agent, tenant, kind, runtime, image_repository, image_digest, options, state, requested_by, rollout_id, created_at, updated_at, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	// pendingOfSQL finds the PENDING refreshes of each [agent, runtime,
	// index] of a JSON array, by index then oldest first (CROSS JOIN: the
	// array outside, so each element is one search of commands_by_agent).
	pendingOfSQL = `SELECT c.id, j.value ->> 2 FROM json_each(?) AS j
		CROSS JOIN commands AS c ON c.agent = j.value ->> 0 AND c.runtime = j.value ->> 1 AND c.kind = ? AND c.state = ?
		ORDER BY j.key, c.seq`
	journaledEventsSQL = `INSERT INTO command_events (command_id, at, state, message)
		SELECT value ->> 0, value ->> 1, value ->> 2, 'journaled' FROM json_each(?) ORDER BY key`
	writeCommandSQL = `UPDATE commands SET state = ?, updated_at = ?, error = ?, result = ? WHERE id = ?`
	listEventsSQL   = `SELECT command_id, at, state, progress, message FROM command_events WHERE command_id = ? ORDER BY seq`
	advanceSQL      = `UPDATE commands SET state = ?, updated_at = ? WHERE id IN (SELECT value FROM json_each(?)) AND state IN (SELECT value FROM json_each(?)) RETURNING ` + sqlrow.CommandColumns
	// advanceEventsSQL stores one event a command, in the array's order.
	advanceEventsSQL = `INSERT INTO command_events (command_id, at, state, message) SELECT value, ?, ?, ? FROM json_each(?) ORDER BY key`
)

func (s *Store) GetCommand(ctx context.Context, id string) (*store.Command, error) {
	c, err := sqlrow.ScanCommand(s.hot(getCommandSQL).QueryRowContext(ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("command %q: %w", id, store.ErrNotFound)
	}
	return c, err
}

// dialect writes arguments as ? and lists as JSON arrays (json_each).
var dialect = sqlrow.Dialect{
	Param: func(int) string { return "?" },
	OneOf: func(column, param string) string { return column + " IN (SELECT value FROM json_each(" + param + "))" },
	List: func(values any) (any, error) {
		b, err := json.Marshal(values)
		return string(b), err
	},
}

func (s *Store) ListCommands(ctx context.Context, f store.CommandFilter) ([]*store.Command, error) {
	q, args, err := sqlrow.ListCommandsQuery(f, dialect)
	if err != nil {
		return nil, err
	}
	return queryAll(ctx, s.db, sqlrow.ScanCommand, q, args...)
}

// UpdateCommands reads the burst's commands in one statement, applies
// the updates in memory, in order (sqlrow.ApplyUpdates), then writes each
// changed command once, as its last update left it, and the events.
func (s *Store) UpdateCommands(ctx context.Context, updates []store.CommandUpdate) ([]store.UpdatedCommand, error) {
	ids := make([]string, len(updates))
	for i, u := range updates {
		ids[i] = u.ID
	}
	list, err := dialect.List(ids)
	if err != nil {
		return nil, err
	}
	var out []store.UpdatedCommand
	err = s.tx(ctx, func(tx *sql.Tx) error {
		read, err := s.txStmt(ctx, tx, readCommandsSQL)
		if err != nil {
			return err
		}
		rows, err := queryAll(ctx, stmtQuerier{read}, sqlrow.ScanCommand, "", list)
		if err != nil {
			return err
		}
		current := make(map[string]*store.Command, len(rows))
		for _, c := range rows {
			current[c.ID] = c
		}
		a := sqlrow.ApplyUpdates(updates, current)
		out = a.Out
		if len(a.Changed) > 0 {
			write, err := s.txStmt(ctx, tx, writeCommandSQL)
			if err != nil {
				return err
			}
			for _, c := range a.Changed {
				result, err := sqlrow.MarshalOrNil(c.Result)
				if err != nil {
					return err
				}
				if _, err := write.ExecContext(ctx, int32(c.State), c.UpdatedAt.UnixNano(), c.Error, result, c.ID); err != nil {
					return err
				}
			}
		}
		if len(a.Events) > 0 {
			events, err := s.txStmt(ctx, tx, insertEventSQL)
			if err != nil {
				return err
			}
			for _, e := range a.Events {
				if err := execEvent(ctx, events, e); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// AdvanceCommands is two statements for the lot, on JSON arrays: the
// update, whose RETURNING hands back the rows as updated (no second read
// for the watchers), and the events.
func (s *Store) AdvanceCommands(ctx context.Context, ids []string, from []controlplanev1.CommandState, to controlplanev1.CommandState, at time.Time, message string) ([]*store.Command, error) {
	list, err := dialect.List(ids)
	if err != nil {
		return nil, err
	}
	states, err := dialect.List(from)
	if err != nil {
		return nil, err
	}
	var changed []*store.Command
	err = s.tx(ctx, func(tx *sql.Tx) error {
		update, err := s.txStmt(ctx, tx, advanceSQL)
		if err != nil {
			return err
		}
		if changed, err = queryAll(ctx, stmtQuerier{update}, sqlrow.ScanCommand, "", int32(to), at.UnixNano(), list, states); err != nil || len(changed) == 0 {
			return err
		}
		done := sqlrow.InOrder(changed, ids) // in the order asked, as the contract says
		events, err := s.txStmt(ctx, tx, advanceEventsSQL)
		if err != nil {
			return err
		}
		doneList, err := dialect.List(done)
		if err != nil {
			return err
		}
		_, err = events.ExecContext(ctx, at.UnixNano(), int32(to), message, doneList)
		return err
	})
	return changed, err
}

func (s *Store) PruneHistory(ctx context.Context, cutoff time.Time) (int, error) {
	var n int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		marks := strings.TrimSuffix(strings.Repeat("?,", len(store.ActiveStates)), ",")
		args := []any{cutoff.UnixNano()}
		for _, st := range store.ActiveStates {
			args = append(args, int32(st))
		}
		old := `SELECT id FROM commands WHERE updated_at < ? AND state NOT IN (` + marks + `)`
		if _, err := tx.ExecContext(ctx, `DELETE FROM command_events WHERE command_id IN (`+old+`)`, args...); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM commands WHERE updated_at < ? AND state NOT IN (`+marks+`)`, args...)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}

const insertEventSQL = `INSERT INTO command_events (command_id, at, state, progress, message) VALUES (?, ?, ?, ?, ?)`

func insertEvent(ctx context.Context, tx *sql.Tx, ev store.Event) error {
	progress, err := sqlrow.MarshalOrNil(ev.Progress)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, insertEventSQL, ev.CommandID, ev.At.UnixNano(), int32(ev.State), progress, ev.Message)
	return err
}

func execEvent(ctx context.Context, stmt *sql.Stmt, ev store.Event) error {
	progress, err := sqlrow.MarshalOrNil(ev.Progress)
	if err != nil {
		return err
	}
	_, err = stmt.ExecContext(ctx, ev.CommandID, ev.At.UnixNano(), int32(ev.State), progress, ev.Message)
	return err
}

func (s *Store) AppendEvent(ctx context.Context, ev store.Event) error {
	return s.tx(ctx, func(tx *sql.Tx) error { return insertEvent(ctx, tx, ev) })
}

func (s *Store) ListEvents(ctx context.Context, commandID string) ([]store.Event, error) {
	return queryAll(ctx, stmtQuerier{s.hot(listEventsSQL)}, func(r sqlrow.Scanner) (store.Event, error) {
		ev := store.Event{}
		var at int64
		var state int32
		var progress []byte
		if err := r.Scan(&ev.CommandID, &at, &state, &progress, &ev.Message); err != nil {
			return ev, err
		}
		ev.At, ev.State = time.Unix(0, at), controlplanev1.CommandState(state)
		if progress != nil {
			ev.Progress = &tenantagentv1.CommandProgress{}
			if err := proto.Unmarshal(progress, ev.Progress); err != nil {
				return ev, err
			}
		}
		return ev, nil
	}, "", commandID)
}

// --- agents

func (s *Store) PutAgents(ctx context.Context, agents []store.Agent) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		put, err := tx.PrepareContext(ctx, `INSERT OR REPLACE INTO agents (`+sqlrow.AgentColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer put.Close()
		for _, a := range agents {
			runtimes, err := proto.Marshal(&tenantagentv1.HealthReport{Runtimes: a.Runtimes})
			if err != nil {
				return err
			}
			if _, err := put.ExecContext(ctx, a.Identity, a.Tenant, a.Name, a.ConnectedAt.UnixNano(), a.LastSeen.UnixNano(), a.Hostname, a.AgentVersion, a.DockerVersion, a.DockerReachable, runtimes); err != nil {
				return err
			}
		}
		return nil
	})
}

// TouchAgents is one statement on a JSON array of [identity, nanos].
func (s *Store) TouchAgents(ctx context.Context, seen []store.AgentSeen) error {
	if len(seen) == 0 {
		return nil
	}
	pairs := make([][2]any, len(seen))
	for i, a := range seen {
		pairs[i] = [2]any{a.Identity, a.At.UnixNano()}
	}
	list, err := dialect.List(pairs)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, `UPDATE agents SET last_seen = max(last_seen, j.value ->> 1)
		FROM json_each(?) AS j WHERE agents.identity = j.value ->> 0`, list)
	return err
}

func (s *Store) ListAgents(ctx context.Context) ([]store.Agent, error) {
	return queryAll(ctx, s.db, sqlrow.ScanAgent, `SELECT `+sqlrow.AgentColumns+` FROM agents ORDER BY tenant, identity`)
}

func (s *Store) GetAgents(ctx context.Context, ids []string) ([]store.Agent, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	// A JSON array: any number of identities in one parameter.
	list, err := json.Marshal(ids)
	if err != nil {
		return nil, err
	}
	return queryAll(ctx, s.db, sqlrow.ScanAgent, `SELECT `+sqlrow.AgentColumns+` FROM agents WHERE identity IN (SELECT value FROM json_each(?)) ORDER BY tenant, identity`, string(list))
}

// --- holds and denials

func (s *Store) PutHold(ctx context.Context, h store.Hold) error {
	_, err := s.db.ExecContext(ctx, `INSERT OR REPLACE INTO holds (tenant, reason, held_by, held_at) VALUES (?, ?, ?, ?)`, h.Tenant, h.Reason, h.HeldBy, h.HeldAt.UnixNano())
	return err
}

func (s *Store) DeleteHold(ctx context.Context, tenant string) (bool, error) {
	return deleted(s.db.ExecContext(ctx, `DELETE FROM holds WHERE tenant = ?`, tenant))
}

func (s *Store) ListHolds(ctx context.Context) ([]store.Hold, error) {
	return queryAll(ctx, s.db, func(r sqlrow.Scanner) (store.Hold, error) {
		var h store.Hold
		var at int64
		err := r.Scan(&h.Tenant, &h.Reason, &h.HeldBy, &at)
		h.HeldAt = time.Unix(0, at)
		return h, err
	}, `SELECT tenant, reason, held_by, held_at FROM holds ORDER BY tenant`)
}

func (s *Store) PutDenial(ctx context.Context, d store.Denial) error {
	_, err := s.db.ExecContext(ctx, `INSERT OR REPLACE INTO denials (kind, value, reason, denied_by, denied_at) VALUES (?, ?, ?, ?, ?)`, string(d.Kind), d.Value, d.Reason, d.DeniedBy, d.DeniedAt.UnixNano())
	return err
}

func (s *Store) DeleteDenial(ctx context.Context, kind store.DenialKind, value string) (bool, error) {
	return deleted(s.db.ExecContext(ctx, `DELETE FROM denials WHERE kind = ? AND value = ?`, string(kind), value))
}

func (s *Store) ListDenials(ctx context.Context) ([]store.Denial, error) {
	return queryAll(ctx, s.db, func(r sqlrow.Scanner) (store.Denial, error) {
		var d store.Denial
		var kind string
		var at int64
		err := r.Scan(&kind, &d.Value, &d.Reason, &d.DeniedBy, &at)
		d.Kind, d.DeniedAt = store.DenialKind(kind), time.Unix(0, at)
		return d, err
	}, `SELECT kind, value, reason, denied_by, denied_at FROM denials ORDER BY kind, value`)
}

// --- rollouts

func (s *Store) PutRollout(ctx context.Context, r store.Rollout) error {
	options, err := sqlrow.RolloutOptions(r.Options)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO rollouts (`+sqlrow.RolloutColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, message = excluded.message,
			owner = excluded.owner, epoch = excluded.epoch, lease_until = excluded.lease_until, resumed_at = excluded.resumed_at`,
		r.ID, r.Runtime, r.Repository, r.Digest, options, string(r.State), r.RequestedBy, r.CreatedAt.UnixNano(), r.UpdatedAt.UnixNano(), r.Message,
		r.Owner, r.Epoch, sqlrow.LeaseNanos(r.LeaseUntil), sqlrow.LeaseNanos(r.ResumedAt))
	return err
}

func (s *Store) GetRollout(ctx context.Context, id string) (store.Rollout, error) {
	r, err := sqlrow.ScanRollout(s.db.QueryRowContext(ctx, `SELECT `+sqlrow.RolloutColumns+` FROM rollouts WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("rollout %q: %w", id, store.ErrNotFound)
	}
	return r, err
}

func (s *Store) ListRollouts(ctx context.Context, runtime string, state store.RolloutState) ([]store.Rollout, error) {
	q := `SELECT ` + sqlrow.RolloutColumns + ` FROM rollouts WHERE (? = '' OR runtime = ?) AND (? = '' OR state = ?) ORDER BY seq DESC`
	return queryAll(ctx, s.db, sqlrow.ScanRollout, q, runtime, runtime, string(state), string(state))
}

func (s *Store) ClaimRollouts(ctx context.Context, owner string, now, until time.Time, except []string) ([]store.Rollout, error) {
	// One statement: SQLite's single writer makes it atomic, so a row
	// another process's claim just renewed is no longer expired here.
	// except is a JSON array: any number of IDs in one parameter.
	skip, err := json.Marshal(append([]string{}, except...))
	if err != nil {
		return nil, err
	}
	rs, err := queryAll(ctx, s.db, sqlrow.ScanRollout, `UPDATE rollouts SET owner = ?, epoch = epoch + 1, lease_until = ?
		WHERE state = ? AND (lease_until < ? OR (owner = ? AND id NOT IN (SELECT value FROM json_each(?))))
		RETURNING `+sqlrow.RolloutColumns,
		owner, until.UnixNano(), string(store.RolloutRunning), now.UnixNano(), owner, string(skip))
	sqlrow.SortRollouts(rs)
	return rs, err
}

func (s *Store) UpdateRollout(ctx context.Context, r store.Rollout) error {
	res, err := s.db.ExecContext(ctx, `UPDATE rollouts SET state = ?, message = ?, updated_at = ?, lease_until = ? WHERE id = ? AND owner = ? AND epoch = ?`,
		string(r.State), r.Message, r.UpdatedAt.UnixNano(), sqlrow.LeaseNanos(r.LeaseUntil), r.ID, r.Owner, r.Epoch)
	if ok, err := deleted(res, err); err != nil || ok {
		return err
	}
	return fmt.Errorf("rollout %s (owner %s, epoch %d): %w", r.ID, r.Owner, r.Epoch, store.ErrLeaseLost)
}

func (s *Store) SetRolloutState(ctx context.Context, r store.Rollout, from []store.RolloutState) (store.Rollout, error) {
	states, err := json.Marshal(from)
	if err != nil {
		return store.Rollout{}, err
	}
	rs, err := queryAll(ctx, s.db, sqlrow.ScanRollout, `UPDATE rollouts SET state = ?, message = ?, updated_at = ?, owner = ?, lease_until = ?, resumed_at = ?, epoch = epoch + 1
		WHERE id = ? AND state IN (SELECT value FROM json_each(?))
		RETURNING `+sqlrow.RolloutColumns,
		string(r.State), r.Message, r.UpdatedAt.UnixNano(), r.Owner, sqlrow.LeaseNanos(r.LeaseUntil), sqlrow.LeaseNanos(r.ResumedAt), r.ID, string(states))
	return sqlrow.OneRollout(ctx, s, r.ID, from, rs, err)
}

// --- helpers

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func queryAll[T any](ctx context.Context, q querier, scan func(sqlrow.Scanner) (T, error), query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
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

// stmtQuerier runs a prepared statement as a querier (the query is its own).
type stmtQuerier struct{ *sql.Stmt }

func (q stmtQuerier) QueryContext(ctx context.Context, _ string, args ...any) (*sql.Rows, error) {
	return q.Stmt.QueryContext(ctx, args...)
}

// deleted reports whether a statement changed any row.
func deleted(res sql.Result, err error) (bool, error) {
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// --- TLS session ticket keys

func (s *Store) RotateTicketKeys(ctx context.Context, fresh store.TicketKey, due, expired time.Time) (keys []store.TicketKey, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM tls_ticket_keys WHERE created_at < ?`, expired.UnixNano()); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO tls_ticket_keys (created_at, secret) SELECT ?, ?
			WHERE NOT EXISTS (SELECT 1 FROM tls_ticket_keys WHERE created_at >= ?)`, fresh.CreatedAt.UnixNano(), fresh.Secret[:], due.UnixNano()); err != nil {
			return err
		}
		keys, err = queryAll(ctx, tx, sqlrow.ScanTicketKey, `SELECT created_at, secret FROM tls_ticket_keys ORDER BY created_at DESC`)
		return err
	})
	return keys, err
}
