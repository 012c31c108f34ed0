package pgcluster

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

// sweepLoop sweeps every SweepEvery and whenever asked (after a LISTEN),
// until ctx ends.
func (c *Cluster) sweepLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.sweepNow:
		}
		// Bounded: a connection that hangs must not stop the heartbeat
		// for good.
		sctx, cancel := context.WithTimeout(ctx, max(10*time.Second, c.cfg.SweepEvery))
		err := c.sweep(sctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			if ok, n := c.warn.allow("sweep"); ok {
				c.log.Warn("sweep failed; retrying at the next one", "error", err, "suppressed_since_last", n)
			}
		}
	}
}

// row is one agent_sessions row as the sweep read it.
type row struct {
	replica string
	epoch   int64
}

// sweep is the safety net under the doorbells. It heartbeats this
// replica, reaps dead replicas' sessions, reloads presence, tells the
// handler of claims here that a newer one replaced, re-asserts claims
// here that were reaped while this replica's heartbeat was late, and
// queues a delivery for every agent held here with a PENDING command.
// Every step is idempotent, so any replica may run it at any time.
func (c *Cluster) sweep(ctx context.Context) error {
	now := c.cfg.Now()
	me := c.cfg.Replica
	if _, err := c.pool.Exec(ctx, `INSERT INTO replicas (id, started_at, seen_at) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at`, me, c.startedAt.UnixNano(), now.UnixNano()); err != nil {
		return err
	}
	c.retryReleases(ctx)
	cutoff := now.Add(-c.cfg.ReplicaTTL).UnixNano()
	if _, err := c.pool.Exec(ctx, `UPDATE agent_sessions s SET replica = ''
		WHERE s.replica <> '' AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = s.replica AND r.seen_at >= $1)`, cutoff); err != nil {
		return err
	}
	if _, err := c.pool.Exec(ctx, `DELETE FROM replicas WHERE seen_at < $1`, now.Add(-deadRetention).UnixNano()); err != nil {
		return err
	}

	// Read presence. Whatever a notification or a claim changes from
	// here on (gen >= start) is newer than this read.
	c.mu.Lock()
	c.gen++
	start := c.gen
	mine := make([]string, 0, len(c.claims))
	for id := range c.claims {
		mine = append(mine, id)
	}
	c.mu.Unlock()
	seen, err := c.readReplicas(ctx)
	if err != nil {
		return err
	}
	rows, err := c.readSessions(ctx, mine)
	if err != nil {
		return err
	}
	reassert := c.merge(now, start, seen, rows)
	for id, epoch := range reassert {
		c.reassert(ctx, id, epoch)
	}

	agents, err := queryStrings(ctx, c.pool, `SELECT DISTINCT c.agent FROM commands c JOIN agent_sessions s ON s.identity = c.agent
		WHERE s.replica = $1 AND c.state = $2`, me, int32(controlplanev1.CommandState_COMMAND_STATE_PENDING))
	if err != nil {
		return err
	}
	for _, a := range agents {
		c.deliveries.push(a)
	}
	return nil
}

func (c *Cluster) readReplicas(ctx context.Context) (map[string]time.Time, error) {
	rows, err := c.pool.Query(ctx, `SELECT id, seen_at FROM replicas`)
	if err != nil {
		return nil, err
	}
	seen := map[string]time.Time{}
	var id string
	var at int64
	_, err = pgx.ForEachRow(rows, []any{&id, &at}, func() error {
		seen[id] = time.Unix(0, at)
		return nil
	})
	return seen, err
}

// readSessions reads the held sessions and this replica's claims, held
// or not (a claim's row with an empty replica was reaped or released).
func (c *Cluster) readSessions(ctx context.Context, mine []string) (map[string]row, error) {
	rows, err := c.pool.Query(ctx, `SELECT identity, replica, epoch FROM agent_sessions WHERE replica <> '' OR identity = ANY($1)`, mine)
	if err != nil {
		return nil, err
	}
	out := map[string]row{}
	var id string
	var r row
	_, err = pgx.ForEachRow(rows, []any{&id, &r.replica, &r.epoch}, func() error {
		out[id] = r
		return nil
	})
	return out, err
}

// merge folds what the sweep read into presence, queues Replaced for
// claims here a newer claim replaced, and returns the claims to
// re-assert. An entry set at or after the read (gen >= start) stays unless
// the read holds a newer epoch; one not in the read is no longer held.
func (c *Cluster) merge(now time.Time, start int64, seen map[string]time.Time, rows map[string]row) map[string]int64 {
	var replaced []event
	reassert := map[string]int64{}
	c.mu.Lock()
	for r, at := range c.seen {
		if at.After(seen[r]) && now.Sub(at) < c.cfg.ReplicaTTL {
			seen[r] = at // a notification since: a later sign of life
		}
	}
	c.seen = seen
	for id, p := range c.presence {
		r, ok := rows[id]
		switch {
		case p.gen >= start:
			if ok && r.epoch > p.epoch {
				c.presence[id] = holder{replica: r.replica, epoch: r.epoch, gen: p.gen}
			}
		case ok:
			c.presence[id] = holder{replica: r.replica, epoch: r.epoch, gen: p.gen}
		case p.replica != "":
			c.presence[id] = holder{epoch: p.epoch, gen: p.gen}
		}
	}
	for id, r := range rows {
		if _, ok := c.presence[id]; !ok {
			c.presence[id] = holder{replica: r.replica, epoch: r.epoch, gen: start - 1}
		}
	}
	for id, epoch := range c.claims {
		r, ok := rows[id]
		if !ok || c.inflight[id] > 0 {
			// Not in the read (claimed after it), or a claim of it is in
			// progress: Claim decides when it returns.
			continue
		}
		switch {
		case r.epoch > epoch:
			replaced = append(replaced, event{kind: kindReplaced, agent: id, epoch: r.epoch})
			delete(c.claims, id)
		case r.epoch == epoch && r.replica == "":
			reassert[id] = epoch
		}
	}
	c.mu.Unlock()
	for _, ev := range replaced {
		c.enqueue(ev)
	}
	return reassert
}

// reassert takes back a claim of this replica that a sweep reaped while
// its heartbeat was late, if no newer claim came since, and broadcasts
// it again.
func (c *Cluster) reassert(ctx context.Context, agent string, epoch int64) {
	me := c.cfg.Replica
	tag, err := c.pool.Exec(ctx, `WITH back AS (
			UPDATE agent_sessions SET replica = $2 WHERE identity = $1 AND epoch = $3 AND replica = '' RETURNING identity)
		SELECT pg_notify($4, $5) FROM back`,
		agent, me, epoch, channelAll, sessionPayload(kindClaimed, me, agent, epoch))
	if err != nil {
		c.log.Warn("cannot re-assert a reaped session; retrying at the next sweep", "agent", agent, "epoch", epoch, "error", err)
		return
	}
	if tag.RowsAffected() == 0 {
		return // a newer claim came: the next sweep sees it
	}
	c.log.Warn("session reaped while this replica's heartbeat was late; re-asserted", "agent", agent, "epoch", epoch)
	c.mu.Lock()
	if p := c.presence[agent]; p.epoch <= epoch {
		c.presence[agent] = holder{replica: me, epoch: epoch, gen: c.gen}
	}
	c.mu.Unlock()
}

// retryReleases retries the releases that failed.
func (c *Cluster) retryReleases(ctx context.Context) {
	c.mu.Lock()
	pending := make(map[string]int64, len(c.releases))
	for id, e := range c.releases {
		pending[id] = e
	}
	c.mu.Unlock()
	for id, e := range pending {
		if err := c.release(ctx, id, e); err != nil {
			return // the database is still away: next sweep
		}
		c.mu.Lock()
		if c.releases[id] == e {
			delete(c.releases, id)
		}
		c.mu.Unlock()
	}
}

func queryStrings(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, sql string, args ...any) ([]string, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
