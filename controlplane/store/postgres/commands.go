package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/protobuf/proto"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/controlplane/store/sqlrow"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// Unique indexes InsertCommands may run into when another replica
// journals at the same moment (migrations 0001 and 0002).
const (
	onePendingRefresh   = "commands_one_pending_refresh"
	onePerRolloutAgent  = "commands_one_per_rollout_agent"
	uniqueViolationCode = "23505"
)

func (s *Store) InsertCommands(ctx context.Context, cmds []*store.Command) ([]string, error) {
	superseded, err := s.insertCommands(ctx, cmds)
	if violated(err, onePendingRefresh) {
		// Another replica journaled a pending refresh for one of these
		// agents and runtimes between our supersede and our insert. It
		// has committed (the index waited for it), so a second attempt
		// supersedes it, as a single writer would have.
		superseded, err = s.insertCommands(ctx, cmds)
	}
	if violated(err, onePerRolloutAgent) {
		return nil, fmt.Errorf("%w: %w", store.ErrConflict, err)
	}
	return superseded, err
}

func (s *Store) insertCommands(ctx context.Context, cmds []*store.Command) ([]string, error) {
	var superseded []string
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		if superseded, err = journal(ctx, tx, cmds); err != nil {
			return err
		}
		var agents []string
		for _, c := range cmds {
			if !slices.Contains(agents, c.Agent) {
				agents = append(agents, c.Agent)
			}
		}
		return s.ringHolders(ctx, tx, agents)
	})
	return superseded, err
}

// journal stores the commands, each refresh first superseding the PENDING
// refreshes of its agent and runtime (oldest first, as SQLite does). A
// fan-out journals thousands: each run of commands whose refreshes are
// for distinct agents and runtimes (all of a fan-out) is three statements
// on arrays, in one round trip, whatever its size: its supersedes, with
// their events; its commands; their events. A refresh for the same agent
// and runtime as one before it in cmds starts the next run, so it
// supersedes that one, as one statement a command would.
func journal(ctx context.Context, tx pgx.Tx, cmds []*store.Command) ([]string, error) {
	var superseded []string
	for len(cmds) > 0 {
		n := sqlrow.DistinctRun(cmds)
		ids, err := journalRun(ctx, tx, cmds[:n])
		if err != nil {
			return nil, err
		}
		superseded, cmds = append(superseded, ids...), cmds[n:]
	}
	return superseded, nil
}

// supersedeSQL moves the PENDING refreshes of each new refresh's agent
// and runtime to SUPERSEDED, with an event each, and returns them with
// the ID of the command that superseded them. The rows are locked in ID
// order first, as every multi-row write here does (updateCommands).
const supersedeSQL = `WITH n AS (SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[]) AS n(agent, runtime, id, created_at)),
old AS (SELECT c.id, n.id AS by, n.created_at FROM commands c JOIN n ON c.agent = n.agent AND c.runtime = n.runtime
	WHERE c.kind = $6::int AND c.state = $7::int ORDER BY c.id FOR UPDATE OF c),
moved AS (UPDATE commands c SET state = $1::int, error = 'superseded by ' || old.by, updated_at = old.created_at
	FROM old WHERE c.id = old.id RETURNING c.seq, c.id, old.by, old.created_at),
events AS (INSERT INTO command_events (command_id, at, state, message) SELECT id, created_at, $1::int, 'superseded by ' || by FROM moved)
SELECT seq, id, by FROM moved`

// insertCommandsSQL inserts commands from arrays, in array order.
const insertCommandsSQL = `INSERT INTO commands (id, agent, tenant, kind, runtime, image_repository, image_digest, options, state, requested_by, rollout_id, created_at, updated_at, deadline)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::text[], $8::bytea[], $9::int[], $10::text[], $11::text[], $12::bigint[], $13::bigint[], $14::bigint[])
RETURNING id, seq`

// journalRun journals commands none of which supersedes another.
func journalRun(ctx context.Context, tx pgx.Tx, cmds []*store.Command) ([]string, error) {
	var b pgx.Batch
	var by []string // the refreshes, in order
	var sup struct {
		agents, runtimes, ids []string
		created               []int64
	}
	n := len(cmds)
	ids, agents, tenants, runtimes, repos, digests := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	requested, rollouts := make([]string, n), make([]string, n)
	kinds, states := make([]int32, n), make([]int32, n)
	created, updated, deadlines := make([]int64, n), make([]int64, n), make([]int64, n)
	options := make([][]byte, n)
	evs := make([]store.Event, n)
	for i, c := range cmds {
		if c.Kind == controlplanev1.CommandKind_COMMAND_KIND_REFRESH {
			by = append(by, c.ID)
			sup.agents, sup.runtimes, sup.ids, sup.created = append(sup.agents, c.Agent), append(sup.runtimes, c.Runtime), append(sup.ids, c.ID), append(sup.created, c.CreatedAt.UnixNano())
		}
		var err error
		if options[i], err = sqlrow.MarshalOrNil(c.Options); err != nil {
			return nil, err
		}
		ids[i], agents[i], tenants[i], runtimes[i], repos[i], digests[i] = c.ID, c.Agent, c.Tenant, c.Runtime, c.Repository, c.Digest
		requested[i], rollouts[i], kinds[i], states[i] = c.RequestedBy, c.RolloutID, int32(c.Kind), int32(c.State)
		created[i], updated[i], deadlines[i] = c.CreatedAt.UnixNano(), c.UpdatedAt.UnixNano(), c.Deadline.UnixNano()
		evs[i] = store.Event{CommandID: c.ID, At: c.CreatedAt, State: c.State, Message: "journaled"}
	}
	if len(by) > 0 {
		b.Queue(supersedeSQL, int32(controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED), sup.agents, sup.runtimes, sup.ids, sup.created,
			int32(controlplanev1.CommandKind_COMMAND_KIND_REFRESH), int32(controlplanev1.CommandState_COMMAND_STATE_PENDING))
	}
	b.Queue(insertCommandsSQL, ids, agents, tenants, kinds, runtimes, repos, digests, options, states, requested, rollouts, created, updated, deadlines)
	if err := queueEvents(&b, evs); err != nil {
		return nil, err
	}
	results := tx.SendBatch(ctx, &b)
	defer results.Close()
	var superseded []string
	if len(by) > 0 {
		var err error
		if superseded, err = supersededBy(results, by); err != nil {
			return nil, err
		}
	}
	rows, err := results.Query()
	if err != nil {
		return nil, err
	}
	seqs := make(map[string]int64, n)
	for rows.Next() {
		var id string
		var seq int64
		if err := rows.Scan(&id, &seq); err != nil {
			rows.Close()
			return nil, err
		}
		seqs[id] = seq
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("insert commands: %w", err)
	}
	for _, c := range cmds {
		c.Seq = seqs[c.ID]
	}
	return superseded, results.Close()
}

// supersededBy reads the commands the supersede statement moved: by
// refresh in by's order, each refresh's oldest first.
func supersededBy(results pgx.BatchResults, by []string) ([]string, error) {
	rows, err := results.Query()
	if err != nil {
		return nil, err
	}
	type row struct {
		seq     int64
		id, by  string
		ordinal int
	}
	moved, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		return x, r.Scan(&x.seq, &x.id, &x.by)
	})
	if err != nil {
		return nil, err
	}
	for i := range moved {
		moved[i].ordinal = slices.Index(by, moved[i].by)
	}
	slices.SortFunc(moved, func(a, b row) int { return cmp.Or(cmp.Compare(a.ordinal, b.ordinal), cmp.Compare(a.seq, b.seq)) })
	ids := make([]string, len(moved))
	for i, m := range moved {
		ids[i] = m.id
	}
	return ids, nil
}

// ringHolders wakes the replicas holding the agents' streams (other than
// this one, which sends to its own agents itself) with pgcluster's
// "d <identity>" on their ta_r_<replica> channel. In the transaction: a
// notification is delivered at commit, so an uncommitted command never
// rings, and a rolled-back one never does. An identity too long for a
// payload (pgcluster's bound) is left to the sweep rather than failing
// the journal write.
func (s *Store) ringHolders(ctx context.Context, tx pgx.Tx, agents []string) error {
	_, err := tx.Exec(ctx, `SELECT pg_notify('ta_r_' || replica, 'd ' || identity) FROM agent_sessions
		WHERE identity = ANY($1) AND replica <> '' AND replica <> $2 AND octet_length(identity) <= 2048`, agents, s.replica)
	return err
}

// violated reports whether err is a unique violation of index.
func violated(err error, index string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == uniqueViolationCode && pgErr.ConstraintName == index
}

func (s *Store) GetCommand(ctx context.Context, id string) (*store.Command, error) {
	c, err := sqlrow.ScanCommand(s.pool.QueryRow(ctx, `SELECT `+sqlrow.CommandColumns+` FROM commands WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("command %q: %w", id, store.ErrNotFound)
	}
	return c, err
}

// dialect writes arguments as $n and lists as arrays (= ANY).
var dialect = sqlrow.Dialect{
	Param: func(n int) string { return "$" + strconv.Itoa(n) },
	OneOf: func(column, param string) string { return column + " = ANY(" + param + ")" },
	List:  func(values any) (any, error) { return values, nil },
}

func (s *Store) ListCommands(ctx context.Context, f store.CommandFilter) ([]*store.Command, error) {
	q, args, err := sqlrow.ListCommandsQuery(f, dialect)
	if err != nil {
		return nil, err
	}
	return queryAll(ctx, s.pool, sqlrow.ScanCommand, q, args...)
}

func (s *Store) UpdateCommands(ctx context.Context, updates []store.CommandUpdate) ([]store.UpdatedCommand, error) {
	var out []store.UpdatedCommand
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = updateCommands(ctx, tx, updates)
		return err
	})
	return out, err
}

// updateCommands reads every command of the burst FOR UPDATE in one
// statement, in ID order (so two transactions locking overlapping sets,
// a burst of acks and a fan-out marked sent, never deadlock), applies the
// updates in their order in memory, and writes the changes and events in
// one round trip. A replica updating the same command waits for the lock
// and then reads this write, as SQLite's single writer guarantees.
func updateCommands(ctx context.Context, tx pgx.Tx, updates []store.CommandUpdate) ([]store.UpdatedCommand, error) {
	ids := make([]string, 0, len(updates))
	for _, u := range updates {
		ids = append(ids, u.ID)
	}
	rows, err := queryAll(ctx, tx, sqlrow.ScanCommand, `SELECT `+sqlrow.CommandColumns+` FROM commands WHERE id = ANY($1) ORDER BY id FOR UPDATE`, ids)
	if err != nil {
		return nil, err
	}
	current := make(map[string]*store.Command, len(rows))
	for _, c := range rows {
		current[c.ID] = c
	}
	a := sqlrow.ApplyUpdates(updates, current)
	if len(a.Changed) == 0 && len(a.Events) == 0 {
		return a.Out, nil
	}
	// Two statements on arrays, in one round trip, for the burst.
	var writes pgx.Batch
	if n := len(a.Changed); n > 0 {
		ids, states, updated, errs, results := make([]string, n), make([]int32, n), make([]int64, n), make([]string, n), make([][]byte, n)
		for i, c := range a.Changed {
			result, err := sqlrow.MarshalOrNil(c.Result)
			if err != nil {
				return nil, err
			}
			ids[i], states[i], updated[i], errs[i], results[i] = c.ID, int32(c.State), c.UpdatedAt.UnixNano(), c.Error, result
		}
		writes.Queue(`UPDATE commands c SET state = n.state, updated_at = n.updated_at, error = n.error, result = n.result
			FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::bytea[]) AS n(id, state, updated_at, error, result)
			WHERE c.id = n.id`, ids, states, updated, errs, results)
	}
	if err := queueEvents(&writes, a.Events); err != nil {
		return nil, err
	}
	return a.Out, tx.SendBatch(ctx, &writes).Close()
}

func (s *Store) AdvanceCommands(ctx context.Context, ids []string, from []controlplanev1.CommandState, to controlplanev1.CommandState, at time.Time, message string) ([]*store.Command, error) {
	var changed []*store.Command
	err := s.tx(ctx, func(tx pgx.Tx) error {
		// One statement for the lot: the rows are locked in ID order (see
		// updateCommands), RETURNING hands them back as updated, and one
		// more statement stores an event each.
		var err error
		changed, err = queryAll(ctx, tx, sqlrow.ScanCommand, `UPDATE commands SET state = $1, updated_at = $2
			WHERE id IN (SELECT id FROM commands WHERE id = ANY($3) AND state = ANY($4) ORDER BY id FOR UPDATE)
			RETURNING `+sqlrow.CommandColumns,
			int32(to), at.UnixNano(), ids, states(from))
		if err != nil || len(changed) == 0 {
			return err
		}
		done := sqlrow.InOrder(changed, ids) // in the order asked, as the contract says
		_, err = tx.Exec(ctx, `INSERT INTO command_events (command_id, at, state, message) SELECT unnest($1::text[]), $2, $3, $4`,
			done, at.UnixNano(), int32(to), message)
		return err
	})
	return changed, err
}

func (s *Store) PruneHistory(ctx context.Context, cutoff time.Time) (int, error) {
	var n int64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		old := `SELECT id FROM commands WHERE updated_at < $1 AND NOT (state = ANY($2))`
		args := []any{cutoff.UnixNano(), states(store.ActiveStates)}
		if _, err := tx.Exec(ctx, `DELETE FROM command_events WHERE command_id IN (`+old+`)`, args...); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM commands WHERE id IN (`+old+`)`, args...)
		n = tag.RowsAffected()
		return err
	})
	return int(n), err
}

// queueEvents adds the insert of events, in their order, to a batch of
// writes: one statement for the lot.
func queueEvents(b *pgx.Batch, evs []store.Event) error {
	if len(evs) == 0 {
		return nil
	}
	ids, at, states, progress, messages := make([]string, len(evs)), make([]int64, len(evs)), make([]int32, len(evs)), make([][]byte, len(evs)), make([]string, len(evs))
	for i, ev := range evs {
		p, err := sqlrow.MarshalOrNil(ev.Progress)
		if err != nil {
			return err
		}
		ids[i], at[i], states[i], progress[i], messages[i] = ev.CommandID, ev.At.UnixNano(), int32(ev.State), p, ev.Message
	}
	b.Queue(`INSERT INTO command_events (command_id, at, state, progress, message)
		SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[], $4::bytea[], $5::text[])`, ids, at, states, progress, messages)
	return nil
}

func insertEvent(ctx context.Context, tx pgx.Tx, ev store.Event) error {
	progress, err := sqlrow.MarshalOrNil(ev.Progress)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO command_events (command_id, at, state, progress, message) VALUES ($1, $2, $3, $4, $5)`,
		ev.CommandID, ev.At.UnixNano(), int32(ev.State), progress, ev.Message)
	return err
}

func (s *Store) AppendEvent(ctx context.Context, ev store.Event) error {
	return s.tx(ctx, func(tx pgx.Tx) error { return insertEvent(ctx, tx, ev) })
}

func (s *Store) ListEvents(ctx context.Context, commandID string) ([]store.Event, error) {
	return queryAll(ctx, s.pool, scanEvent, `SELECT command_id, at, state, progress, message FROM command_events WHERE command_id = $1 ORDER BY seq`, commandID)
}

func scanEvent(r sqlrow.Scanner) (store.Event, error) {
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
}
