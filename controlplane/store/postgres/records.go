package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/controlplane/store/sqlrow"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// --- agents

func (s *Store) PutAgents(ctx context.Context, agents []store.Agent) error {
	return s.tx(ctx, func(tx pgx.Tx) error {
		for _, a := range agents {
			runtimes, err := proto.Marshal(&tenantagentv1.HealthReport{Runtimes: a.Runtimes})
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO agents (`+sqlrow.AgentColumns+`)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
				ON CONFLICT (identity) DO UPDATE SET tenant = excluded.tenant, name = excluded.name, connected_at = excluded.connected_at,
					last_seen = excluded.last_seen, hostname = excluded.hostname, agent_version = excluded.agent_version,
					docker_version = excluded.docker_version, docker_reachable = excluded.docker_reachable, runtimes = excluded.runtimes`,
				a.Identity, a.Tenant, a.Name, a.ConnectedAt.UnixNano(), a.LastSeen.UnixNano(), a.Hostname, a.AgentVersion, a.DockerVersion, a.DockerReachable, runtimes); err != nil {
				return err
			}
		}
		return nil
	})
}

// TouchAgents is one statement on two arrays, identities and times.
func (s *Store) TouchAgents(ctx context.Context, seen []store.AgentSeen) error {
	if len(seen) == 0 {
		return nil
	}
	ids, at := make([]string, len(seen)), make([]int64, len(seen))
	for i, a := range seen {
		ids[i], at[i] = a.Identity, a.At.UnixNano()
	}
	_, err := s.pool.Exec(ctx, `UPDATE agents SET last_seen = GREATEST(agents.last_seen, s.at)
		FROM unnest($1::text[], $2::bigint[]) AS s(identity, at) WHERE agents.identity = s.identity`, ids, at)
	return err
}

func (s *Store) ListAgents(ctx context.Context) ([]store.Agent, error) {
	return queryAll(ctx, s.pool, sqlrow.ScanAgent, `SELECT `+sqlrow.AgentColumns+` FROM agents ORDER BY tenant, identity`)
}

func (s *Store) GetAgents(ctx context.Context, ids []string) ([]store.Agent, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	return queryAll(ctx, s.pool, sqlrow.ScanAgent, `SELECT `+sqlrow.AgentColumns+` FROM agents WHERE identity = ANY($1) ORDER BY tenant, identity`, ids)
}

// --- holds and denials

func (s *Store) PutHold(ctx context.Context, h store.Hold) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO holds (tenant, reason, held_by, held_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (tenant) DO UPDATE SET reason = excluded.reason, held_by = excluded.held_by, held_at = excluded.held_at`,
		h.Tenant, h.Reason, h.HeldBy, h.HeldAt.UnixNano())
	return err
}

func (s *Store) DeleteHold(ctx context.Context, tenant string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM holds WHERE tenant = $1`, tenant)
	return tag.RowsAffected() > 0, err
}

func (s *Store) ListHolds(ctx context.Context) ([]store.Hold, error) {
	return queryAll(ctx, s.pool, func(r sqlrow.Scanner) (store.Hold, error) {
		var h store.Hold
		var at int64
		err := r.Scan(&h.Tenant, &h.Reason, &h.HeldBy, &at)
		h.HeldAt = time.Unix(0, at)
		return h, err
	}, `SELECT tenant, reason, held_by, held_at FROM holds ORDER BY tenant`)
}

func (s *Store) PutDenial(ctx context.Context, d store.Denial) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO denials (kind, value, reason, denied_by, denied_at) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (kind, value) DO UPDATE SET reason = excluded.reason, denied_by = excluded.denied_by, denied_at = excluded.denied_at`,
		string(d.Kind), d.Value, d.Reason, d.DeniedBy, d.DeniedAt.UnixNano())
	return err
}

func (s *Store) DeleteDenial(ctx context.Context, kind store.DenialKind, value string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM denials WHERE kind = $1 AND value = $2`, string(kind), value)
	return tag.RowsAffected() > 0, err
}

func (s *Store) ListDenials(ctx context.Context) ([]store.Denial, error) {
	return queryAll(ctx, s.pool, func(r sqlrow.Scanner) (store.Denial, error) {
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
	_, err = s.pool.Exec(ctx, `INSERT INTO rollouts (`+sqlrow.RolloutColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
		ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, message = excluded.message,
			owner = excluded.owner, epoch = excluded.epoch, lease_until = excluded.lease_until, resumed_at = excluded.resumed_at`,
		r.ID, r.Runtime, r.Repository, r.Digest, options, string(r.State), r.RequestedBy, r.CreatedAt.UnixNano(), r.UpdatedAt.UnixNano(), r.Message,
		r.Owner, r.Epoch, sqlrow.LeaseNanos(r.LeaseUntil), sqlrow.LeaseNanos(r.ResumedAt))
	return err
}

func (s *Store) GetRollout(ctx context.Context, id string) (store.Rollout, error) {
	r, err := sqlrow.ScanRollout(s.pool.QueryRow(ctx, `SELECT `+sqlrow.RolloutColumns+` FROM rollouts WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("rollout %q: %w", id, store.ErrNotFound)
	}
	return r, err
}

func (s *Store) ListRollouts(ctx context.Context, runtime string, state store.RolloutState) ([]store.Rollout, error) {
	q := `SELECT ` + sqlrow.RolloutColumns + ` FROM rollouts WHERE ($1 = '' OR runtime = $1) AND ($2 = '' OR state = $2) ORDER BY seq DESC`
	return queryAll(ctx, s.pool, sqlrow.ScanRollout, q, runtime, string(state))
}

func (s *Store) ClaimRollouts(ctx context.Context, owner string, now, until time.Time, except []string) ([]store.Rollout, error) {
	// One statement under READ COMMITTED: a replica claiming the same row
	// at once waits for its lock, then re-checks the WHERE on the row as
	// the winner left it (lease renewed, another owner) and skips it.
	if except == nil {
		except = []string{} // NULL would make NOT (id = ANY(NULL)) NULL, and skip every own row
	}
	rs, err := queryAll(ctx, s.pool, sqlrow.ScanRollout, `UPDATE rollouts SET owner = $1, epoch = epoch + 1, lease_until = $2
		WHERE state = $3 AND (lease_until < $4 OR (owner = $1 AND NOT (id = ANY($5))))
		RETURNING `+sqlrow.RolloutColumns,
		owner, until.UnixNano(), string(store.RolloutRunning), now.UnixNano(), except)
	sqlrow.SortRollouts(rs)
	return rs, err
}

func (s *Store) UpdateRollout(ctx context.Context, r store.Rollout) error {
	tag, err := s.pool.Exec(ctx, `UPDATE rollouts SET state = $1, message = $2, updated_at = $3, lease_until = $4 WHERE id = $5 AND owner = $6 AND epoch = $7`,
		string(r.State), r.Message, r.UpdatedAt.UnixNano(), sqlrow.LeaseNanos(r.LeaseUntil), r.ID, r.Owner, r.Epoch)
	if err != nil || tag.RowsAffected() > 0 {
		return err
	}
	return fmt.Errorf("rollout %s (owner %s, epoch %d): %w", r.ID, r.Owner, r.Epoch, store.ErrLeaseLost)
}

func (s *Store) SetRolloutState(ctx context.Context, r store.Rollout, from []store.RolloutState) (store.Rollout, error) {
	states := make([]string, len(from))
	for i, st := range from {
		states[i] = string(st)
	}
	rs, err := queryAll(ctx, s.pool, sqlrow.ScanRollout, `UPDATE rollouts SET state = $1, message = $2, updated_at = $3, owner = $4, lease_until = $5, resumed_at = $6, epoch = epoch + 1
		WHERE id = $7 AND state = ANY($8)
		RETURNING `+sqlrow.RolloutColumns,
		string(r.State), r.Message, r.UpdatedAt.UnixNano(), r.Owner, sqlrow.LeaseNanos(r.LeaseUntil), sqlrow.LeaseNanos(r.ResumedAt), r.ID, states)
	return sqlrow.OneRollout(ctx, s, r.ID, from, rs, err)
}

// --- TLS session ticket keys

func (s *Store) RotateTicketKeys(ctx context.Context, fresh store.TicketKey, due, expired time.Time) (keys []store.TicketKey, err error) {
	err = s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM tls_ticket_keys WHERE created_at < $1`, expired.UnixNano()); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO tls_ticket_keys (created_at, secret) SELECT $1, $2
			WHERE NOT EXISTS (SELECT 1 FROM tls_ticket_keys WHERE created_at >= $3)`, fresh.CreatedAt.UnixNano(), fresh.Secret[:], due.UnixNano()); err != nil {
			return err
		}
		keys, err = queryAll(ctx, tx, sqlrow.ScanTicketKey, `SELECT created_at, secret FROM tls_ticket_keys ORDER BY created_at DESC`)
		return err
	})
	return keys, err
}
