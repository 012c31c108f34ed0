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
// refreshes of its agent and runtime (oldest first, as SQLite does), in
// one round trip for the lot (a fan-out journals thousands), plus one for
// the superseded ones' events if there are any.
func journal(ctx context.Context, tx pgx.Tx, cmds []*store.Command) ([]string, error) {
	var b pgx.Batch
	for _, c := range cmds {
		if c.Kind == controlplanev1.CommandKind_COMMAND_KIND_REFRESH {
			b.Queue(`UPDATE commands SET state = $1, error = $2, updated_at = $3
				WHERE agent = $4 AND runtime = $5 AND kind = $6 AND state = $7 RETURNING seq, id`,
				int32(controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED), "superseded by "+c.ID, c.CreatedAt.UnixNano(),
				c.Agent, c.Runtime, int32(c.Kind), int32(controlplanev1.CommandState_COMMAND_STATE_PENDING))
		}
		options, err := sqlrow.MarshalOrNil(c.Options)
		if err != nil {
			return nil, err
		}
		b.Queue(`INSERT INTO commands (id, agent, tenant, kind, runtime, image_repository, image_digest, options, state, requested_by, rollout_id, created_at, updated_at, deadline)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING seq`,
			c.ID, c.Agent, c.Tenant, int32(c.Kind), c.Runtime, c.Repository, c.Digest, options, int32(c.State), c.RequestedBy, c.RolloutID,
			c.CreatedAt.UnixNano(), c.UpdatedAt.UnixNano(), c.Deadline.UnixNano())
		if err := queueEvent(&b, store.Event{CommandID: c.ID, At: c.CreatedAt, State: c.State, Message: "journaled"}); err != nil {
			return nil, err
		}
	}
	results := tx.SendBatch(ctx, &b)
	defer results.Close()
	var superseded []string
	var events pgx.Batch
	for _, c := range cmds {
		if c.Kind == controlplanev1.CommandKind_COMMAND_KIND_REFRESH {
			ids, err := supersededBy(results)
			if err != nil {
				return nil, err
			}
			for _, id := range ids {
				if err := queueEvent(&events, store.Event{CommandID: id, At: c.CreatedAt, State: controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED, Message: "superseded by " + c.ID}); err != nil {
					return nil, err
				}
			}
			superseded = append(superseded, ids...)
		}
		if err := results.QueryRow().Scan(&c.Seq); err != nil {
			return nil, fmt.Errorf("insert command %s: %w", c.ID, err)
		}
		if _, err := results.Exec(); err != nil {
			return nil, err
		}
	}
	if err := results.Close(); err != nil {
		return nil, err
	}
	if events.Len() == 0 {
		return superseded, nil
	}
	return superseded, tx.SendBatch(ctx, &events).Close()
}

// supersededBy reads the IDs a supersede statement moved, oldest first.
func supersededBy(results pgx.BatchResults) ([]string, error) {
	rows, err := results.Query()
	if err != nil {
		return nil, err
	}
	type row struct {
		seq int64
		id  string
	}
	moved, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		return x, r.Scan(&x.seq, &x.id)
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(moved, func(a, b row) int { return cmp.Compare(a.seq, b.seq) })
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
	out := make([]store.UpdatedCommand, len(updates))
	var writes pgx.Batch
	var changed []string
	for i, u := range updates {
		stored := current[u.ID]
		if stored == nil {
			continue
		}
		c := *stored // each update's result stays as it was after it
		if !u.Fn(&c) {
			out[i] = store.UpdatedCommand{Command: &c}
			continue
		}
		current[u.ID] = &c
		if !slices.Contains(changed, u.ID) {
			changed = append(changed, u.ID)
		}
		if u.Event != nil {
			if e := u.Event(&c); e != nil {
				if err := queueEvent(&writes, *e); err != nil {
					return nil, err
				}
			}
		}
		out[i] = store.UpdatedCommand{Command: &c, Changed: true}
	}
	for _, id := range changed {
		c := current[id]
		result, err := sqlrow.MarshalOrNil(c.Result)
		if err != nil {
			return nil, err
		}
		writes.Queue(`UPDATE commands SET state = $1, updated_at = $2, error = $3, result = $4 WHERE id = $5`,
			int32(c.State), c.UpdatedAt.UnixNano(), c.Error, result, id)
	}
	if writes.Len() == 0 {
		return out, nil
	}
	return out, tx.SendBatch(ctx, &writes).Close()
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
		// In the order asked, as the contract says.
		pos := make(map[string]int, len(ids))
		for i, id := range ids {
			pos[id] = i
		}
		slices.SortFunc(changed, func(a, b *store.Command) int { return cmp.Compare(pos[a.ID], pos[b.ID]) })
		done := make([]string, len(changed))
		for i, c := range changed {
			done[i] = c.ID
		}
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

// queueEvent adds an event's insert to a batch of writes.
func queueEvent(b *pgx.Batch, ev store.Event) error {
	progress, err := sqlrow.MarshalOrNil(ev.Progress)
	if err != nil {
		return err
	}
	b.Queue(`INSERT INTO command_events (command_id, at, state, progress, message) VALUES ($1, $2, $3, $4, $5)`,
		ev.CommandID, ev.At.UnixNano(), int32(ev.State), progress, ev.Message)
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
