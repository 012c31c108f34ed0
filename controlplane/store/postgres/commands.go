package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
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
		superseded = nil // BeginFunc does not retry, but a reused slice would lie
		var agents []string
		seen := map[string]bool{}
		for _, c := range cmds {
			if c.Kind == controlplanev1.CommandKind_COMMAND_KIND_REFRESH {
				ids, err := supersede(ctx, tx, c)
				if err != nil {
					return err
				}
				superseded = append(superseded, ids...)
			}
			if err := insertCommand(ctx, tx, c); err != nil {
				return err
			}
			if !seen[c.Agent] {
				seen[c.Agent] = true
				agents = append(agents, c.Agent)
			}
		}
		return s.ringHolders(ctx, tx, agents)
	})
	return superseded, err
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

func insertCommand(ctx context.Context, tx pgx.Tx, c *store.Command) error {
	options, err := sqlrow.MarshalOrNil(c.Options)
	if err != nil {
		return err
	}
	err = tx.QueryRow(ctx, `INSERT INTO commands (id, agent, tenant, kind, runtime, image_repository, image_digest, options, state, requested_by, rollout_id, created_at, updated_at, deadline)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING seq`,
		c.ID, c.Agent, c.Tenant, int32(c.Kind), c.Runtime, c.Repository, c.Digest, options, int32(c.State), c.RequestedBy, c.RolloutID,
		c.CreatedAt.UnixNano(), c.UpdatedAt.UnixNano(), c.Deadline.UnixNano()).Scan(&c.Seq)
	if err != nil {
		return fmt.Errorf("insert command %s: %w", c.ID, err)
	}
	return insertEvent(ctx, tx, store.Event{CommandID: c.ID, At: c.CreatedAt, State: c.State, Message: "journaled"})
}

// supersede marks PENDING refreshes for the command's agent and runtime as
// SUPERSEDED by it, oldest first as SQLite does.
func supersede(ctx context.Context, tx pgx.Tx, c *store.Command) ([]string, error) {
	msg := "superseded by " + c.ID
	rows, err := tx.Query(ctx, `UPDATE commands SET state = $1, error = $2, updated_at = $3
		WHERE agent = $4 AND runtime = $5 AND kind = $6 AND state = $7 RETURNING seq, id`,
		int32(controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED), msg, c.CreatedAt.UnixNano(),
		c.Agent, c.Runtime, int32(c.Kind), int32(controlplanev1.CommandState_COMMAND_STATE_PENDING))
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
	var ids []string
	for _, m := range moved {
		ev := store.Event{CommandID: m.id, At: c.CreatedAt, State: controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED, Message: msg}
		if err := insertEvent(ctx, tx, ev); err != nil {
			return nil, err
		}
		ids = append(ids, m.id)
	}
	return ids, nil
}

func (s *Store) GetCommand(ctx context.Context, id string) (*store.Command, error) {
	c, err := sqlrow.ScanCommand(s.pool.QueryRow(ctx, `SELECT `+sqlrow.CommandColumns+` FROM commands WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("command %q: %w", id, store.ErrNotFound)
	}
	return c, err
}

func (s *Store) ListCommands(ctx context.Context, f store.CommandFilter) ([]*store.Command, error) {
	var where []string
	var args []any
	add := func(clause string, arg any) {
		args = append(args, arg)
		where = append(where, clause+" $"+strconv.Itoa(len(args)))
	}
	if f.Agent != "" {
		add("agent =", f.Agent)
	}
	if f.Tenant != "" {
		add("tenant =", f.Tenant)
	}
	if f.Runtime != "" {
		add("runtime =", f.Runtime)
	}
	if f.RolloutID != "" {
		add("rollout_id =", f.RolloutID)
	}
	if f.Kind != controlplanev1.CommandKind_COMMAND_KIND_UNSPECIFIED {
		add("kind =", int32(f.Kind))
	}
	if !f.DeadlineBefore.IsZero() {
		add("deadline <", f.DeadlineBefore.UnixNano())
	}
	if f.BeforeSeq > 0 {
		add("seq <", f.BeforeSeq)
	}
	if len(f.States) > 0 {
		args = append(args, states(f.States))
		where = append(where, "state = ANY($"+strconv.Itoa(len(args))+")")
	}
	q := `SELECT ` + sqlrow.CommandColumns + ` FROM commands`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if f.Oldest {
		q += " ORDER BY seq ASC"
	} else {
		q += " ORDER BY seq DESC"
	}
	if f.Limit > 0 {
		q += " LIMIT " + strconv.Itoa(f.Limit)
	}
	return queryAll(ctx, s.pool, sqlrow.ScanCommand, q, args...)
}

func (s *Store) UpdateCommands(ctx context.Context, updates []store.CommandUpdate) ([]store.UpdatedCommand, error) {
	var out []store.UpdatedCommand
	err := s.tx(ctx, func(tx pgx.Tx) error {
		out = make([]store.UpdatedCommand, len(updates))
		for i, u := range updates {
			var err error
			if out[i], err = updateCommand(ctx, tx, u); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// updateCommand reads the command FOR UPDATE, so a replica updating it at
// the same time waits and then reads this one's write, as SQLite's single
// writer guarantees.
func updateCommand(ctx context.Context, tx pgx.Tx, u store.CommandUpdate) (store.UpdatedCommand, error) {
	c, err := sqlrow.ScanCommand(tx.QueryRow(ctx, `SELECT `+sqlrow.CommandColumns+` FROM commands WHERE id = $1 FOR UPDATE`, u.ID))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.UpdatedCommand{}, nil
	}
	if err != nil {
		return store.UpdatedCommand{}, err
	}
	if !u.Fn(c) {
		return store.UpdatedCommand{Command: c}, nil
	}
	result, err := sqlrow.MarshalOrNil(c.Result)
	if err != nil {
		return store.UpdatedCommand{}, err
	}
	if _, err := tx.Exec(ctx, `UPDATE commands SET state = $1, updated_at = $2, error = $3, result = $4 WHERE id = $5`,
		int32(c.State), c.UpdatedAt.UnixNano(), c.Error, result, u.ID); err != nil {
		return store.UpdatedCommand{}, err
	}
	if u.Event != nil {
		if e := u.Event(c); e != nil {
			if err := insertEvent(ctx, tx, *e); err != nil {
				return store.UpdatedCommand{}, err
			}
		}
	}
	return store.UpdatedCommand{Command: c, Changed: true}, nil
}

func (s *Store) AdvanceCommands(ctx context.Context, ids []string, from []controlplanev1.CommandState, to controlplanev1.CommandState, at time.Time, message string) ([]*store.Command, error) {
	var changed []*store.Command
	err := s.tx(ctx, func(tx pgx.Tx) error {
		changed = nil
		for _, id := range ids {
			// RETURNING hands back the row as updated: no second read per
			// command for the watchers.
			c, err := sqlrow.ScanCommand(tx.QueryRow(ctx, `UPDATE commands SET state = $1, updated_at = $2 WHERE id = $3 AND state = ANY($4) RETURNING `+sqlrow.CommandColumns,
				int32(to), at.UnixNano(), id, states(from)))
			if errors.Is(err, pgx.ErrNoRows) {
				continue
			}
			if err != nil {
				return err
			}
			if err := insertEvent(ctx, tx, store.Event{CommandID: id, At: at, State: to, Message: message}); err != nil {
				return err
			}
			changed = append(changed, c)
		}
		return nil
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
