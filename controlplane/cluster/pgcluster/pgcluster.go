// Package pgcluster is the cluster of control plane replicas sharing one
// PostgreSQL database: cluster.Cluster on LISTEN/NOTIFY.
//
// The journal (the commands table) is the queue; a notification is only a
// doorbell. Every replica also sweeps the database every SweepEvery (and
// after every LISTEN, first or again), so a lost notification costs
// latency, never a command.
//
// What lives where:
//   - replicas: one row per replica, heartbeated at every sweep; a replica
//     not seen for ReplicaTTL is dead, and any replica reaps its sessions.
//   - agent_sessions: which replica holds each agent's stream, with an
//     epoch that grows with every claim of the identity. A released or
//     reaped session keeps its row, with an empty replica.
//   - ta_all: broadcasts (claims, releases, changed commands, agents and
//     state, progress); ta_r_<replica>: one replica's doorbell (deliver,
//     cancel). The store rings ta_r_<replica> itself, in the transaction
//     that journals a command (postgres.Replica), so an uncommitted
//     command never rings.
//
// The tables come from the store's migrations: open the postgres store
// (postgres.Open) before New.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/molecule-ai/tenant-agent/controlplane/cluster"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// Config configures a Cluster.
type Config struct {
	// DSN is the store's database (a postgres:// URL or keyword=value).
	DSN string
	// Replica is this replica's ID: 1-40 of [a-z0-9_] (it is part of a
	// channel name). It must be unique among running replicas; a
	// restarted replica may reuse its ID, and then drops the sessions its
	// previous life held.
	Replica string
	Logger  *slog.Logger
	// SweepEvery is how often the replica heartbeats, reloads presence
	// and delivers pending commands the doorbells missed. Default 3s.
	SweepEvery time.Duration
	// ReplicaTTL is how long a replica may go unseen before it is dead
	// and its sessions are reaped; at least 3 × SweepEvery. Default 30s.
	// Replicas compare their own clocks with each other's heartbeats:
	// keep them in sync (NTP) well within ReplicaTTL.
	ReplicaTTL time.Duration
	Now        func() time.Time
}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.DSN == "" {
		return errors.New("pgcluster: DSN is required")
	}
	if !validReplica(c.Replica) {
		return fmt.Errorf("pgcluster: replica ID %q must be 1-40 of [a-z0-9_]", c.Replica)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("component", "cluster", "replica", c.Replica)
	if c.SweepEvery <= 0 {
		c.SweepEvery = 3 * time.Second
	}
	if c.ReplicaTTL <= 0 {
		c.ReplicaTTL = 30 * time.Second
	}
	// A live replica's last heartbeat, as another replica last read it,
	// can be two sweeps old; a third is the margin.
	if c.ReplicaTTL < 3*c.SweepEvery {
		return fmt.Errorf("pgcluster: ReplicaTTL %v must be at least 3 × SweepEvery %v", c.ReplicaTTL, c.SweepEvery)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

const (
	// deliverWorkers run Handler.Deliver concurrently: a fan-out journaled
	// on another replica rings once per agent, and each delivery reads
	// and writes the store.
	deliverWorkers = 4
	// eventQueue bounds the handler calls waiting for the worker; when
	// full, the notification is dropped and a full resync follows.
	eventQueue = 4096
	// logEvery rate-limits repeated warnings (send errors, bad payloads).
	logEvery = 10 * time.Second
	// deadRetention is how long a dead replica's row is kept.
	deadRetention = time.Hour
	// releaseTimeout bounds Release, which callers make on their way out
	// (often with a context that never ends).
	releaseTimeout = 5 * time.Second
)

// Cluster is cluster.Cluster on PostgreSQL. It is safe for concurrent
// use.
type Cluster struct {
	cfg       Config
	log       *slog.Logger
	pool      *pgxpool.Pool
	listenCfg *pgx.ConnConfig
	own       string // this replica's doorbell channel
	startedAt time.Time

	// ctx ends at Close; Run and the sender stop with it.
	ctx    context.Context
	cancel context.CancelFunc
	bg     sync.WaitGroup // the sender, and Run while it runs

	mu       sync.Mutex
	closed   bool
	handler  cluster.Handler  // Run's, while it runs
	claims   map[string]int64 // identity -> epoch of this replica's claim
	inflight map[string]int   // identity -> Claims in progress
	releases map[string]int64 // releases that failed, retried by the sweep
	presence map[string]holder
	seen     map[string]time.Time // replica -> last sign of life
	gen      int64                // bumped at each sweep's read; see merge

	out        *outbox
	events     chan event
	deliveries *deliverQueue
	sweepNow   chan struct{}
	resyncNow  chan struct{}
	warn       limiter
}

// holder is who holds an agent's stream, as this replica knows it.
type holder struct {
	replica string // "" when nobody does
	epoch   int64
	gen     int64 // c.gen when a notification or claim last set it
}

var _ cluster.Cluster = (*Cluster)(nil)

// New connects to the database and registers the replica (so its claims
// count as live before its first sweep). A restarted replica's sessions
// from its previous life are released here: it holds no stream yet.
func New(ctx context.Context, cfg Config) (*Cluster, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	app := "tenant-agent-cluster-" + cfg.Replica
	pcfg, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		// Not %w: pgx's parse errors may quote the DSN, password included.
		return nil, errors.New("pgcluster: invalid DSN")
	}
	pcfg.MaxConns = 4
	pcfg.ConnConfig.RuntimeParams["application_name"] = app
	lcfg := pcfg.ConnConfig.Copy()
	lcfg.RuntimeParams["application_name"] = "tenant-agent-listen-" + cfg.Replica
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	c := &Cluster{
		cfg: cfg, log: cfg.Logger, pool: pool, listenCfg: lcfg,
		own: channelOf(cfg.Replica), startedAt: cfg.Now(),
		claims: map[string]int64{}, inflight: map[string]int{}, releases: map[string]int64{},
		presence: map[string]holder{}, seen: map[string]time.Time{},
		events: make(chan event, eventQueue), deliveries: newDeliverQueue(),
		sweepNow: make(chan struct{}, 1), resyncNow: make(chan struct{}, 1),
		warn: limiter{every: logEvery},
	}
	now := c.startedAt.UnixNano()
	if _, err := pool.Exec(ctx, `INSERT INTO replicas (id, started_at, seen_at) VALUES ($1, $2, $2)
		ON CONFLICT (id) DO UPDATE SET started_at = EXCLUDED.started_at, seen_at = EXCLUDED.seen_at`, cfg.Replica, now); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgcluster: register replica (are the store's migrations applied?): %w", err)
	}
	if _, err := pool.Exec(ctx, `UPDATE agent_sessions SET replica = '' WHERE replica = $1`, cfg.Replica); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgcluster: release a previous life's sessions: %w", err)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.out = newOutbox(c)
	c.bg.Go(c.out.run)
	return c, nil
}

// Close stops Run, sends what is still batched, and closes the
// connections. It releases no session: a replica that stops without
// releasing is seen dead after ReplicaTTL and its sessions are reaped, as
// if it had crashed.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.bg.Wait()
	c.pool.Close()
	return nil
}

func (c *Cluster) Replica() string { return c.cfg.Replica }

// Claim records that this replica holds agent's stream, with the next
// epoch, and broadcasts it in the same transaction. Other replicas count
// the claim as live while this one heartbeats (Run's sweep).
//
// A newer claim elsewhere may commit before this one returns, and its
// broadcast may arrive first. Then Claim still returns its (older) epoch,
// and Run's handler is told Replaced with the newer one at once. The
// caller may not have recorded the epoch on its stream yet, so the claim
// is kept until a sweep reads a newer epoch in its row, which repeats
// Replaced: such a stream closes within a sweep (one is asked for at
// once). Replaced may come more than once for one claim; it is
// idempotent.
func (c *Cluster) Claim(ctx context.Context, agent string) (int64, error) {
	if !validToken(agent) {
		return 0, fmt.Errorf("pgcluster: invalid agent identity")
	}
	c.mu.Lock()
	c.inflight[agent]++ // the sweep leaves a claim in progress alone
	c.mu.Unlock()
	me := c.cfg.Replica
	var epoch int64
	err := c.pool.QueryRow(ctx, `WITH claimed AS (
			INSERT INTO agent_sessions AS s (identity, replica, epoch, connected_at) VALUES ($1, $2, 1, $3)
			ON CONFLICT (identity) DO UPDATE SET replica = EXCLUDED.replica, epoch = s.epoch + 1, connected_at = EXCLUDED.connected_at
			RETURNING s.epoch)
		SELECT epoch, pg_notify($4, $5 || epoch) FROM claimed`,
		agent, me, c.cfg.Now().UnixNano(), channelAll, string(kindClaimed)+" "+me+" "+agent+" ").Scan(&epoch, nil)

	c.mu.Lock()
	if c.inflight[agent]--; c.inflight[agent] <= 0 {
		delete(c.inflight, agent)
	}
	if err != nil {
		c.mu.Unlock()
		return 0, fmt.Errorf("pgcluster: claim %s: %w", agent, err)
	}
	if epoch > c.claims[agent] {
		c.claims[agent] = epoch
	}
	// A newer claim of our own (the agent reconnected here meanwhile)
	// is not a replacement to report: the session registry already
	// replaced the older stream here.
	var newer int64
	if p := c.presence[agent]; p.epoch > epoch && p.replica != me {
		newer = p.epoch
	} else if p.epoch <= epoch {
		c.presence[agent] = holder{replica: me, epoch: epoch, gen: c.gen}
	}
	h := c.handler
	c.mu.Unlock()
	if newer > 0 && h != nil {
		c.enqueue(event{kind: kindReplaced, agent: agent, epoch: newer})
		// The caller records the epoch on its stream only after Claim
		// returns, and a stream with none may be left alone
		// (session.Registry.CloseOlder): a sweep a few ms from now
		// repeats Replaced once it has one.
		c.requestSweep()
	}
	return epoch, nil
}

// Release forgets agent's stream if epoch is still its latest claim, and
// broadcasts that in the same statement. A failed release is retried by
// the sweep.
func (c *Cluster) Release(ctx context.Context, agent string, epoch int64) {
	c.mu.Lock()
	// Forget the claim first: a sweep between here and the update would
	// otherwise take our own release for a reap and re-assert the claim.
	if c.claims[agent] == epoch {
		delete(c.claims, agent)
	}
	if p := c.presence[agent]; p.replica == c.cfg.Replica && p.epoch == epoch {
		c.presence[agent] = holder{epoch: epoch, gen: c.gen}
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	if err := c.release(ctx, agent, epoch); err != nil {
		c.mu.Lock()
		c.releases[agent] = epoch
		c.mu.Unlock()
		c.log.Warn("cannot release an agent's session; the sweep retries", "agent", agent, "epoch", epoch, "error", err)
		return
	}
	// Once more now that the release is committed: a sweep that began
	// after the first mark may have read the row before the commit and
	// put the claim back; marked at this generation, no sweep that read
	// before the commit overrides it.
	c.mu.Lock()
	if p := c.presence[agent]; p.epoch == epoch && (p.replica == c.cfg.Replica || p.replica == "") {
		c.presence[agent] = holder{epoch: epoch, gen: c.gen}
	}
	c.mu.Unlock()
}

func (c *Cluster) release(ctx context.Context, agent string, epoch int64) error {
	me := c.cfg.Replica
	_, err := c.pool.Exec(ctx, `WITH released AS (
			UPDATE agent_sessions SET replica = '' WHERE identity = $1 AND replica = $2 AND epoch = $3 RETURNING identity)
		SELECT pg_notify($4, $5) FROM released`,
		agent, me, epoch, channelAll, sessionPayload(kindReleased, me, agent, epoch))
	return err
}

// Online reports whether agent's latest known claim is on a live replica
// (this one included).
func (c *Cluster) Online(agent string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.presence[agent]
	switch p.replica {
	case "":
		return false
	case c.cfg.Replica:
		return true
	}
	return c.liveLocked(p.replica, c.cfg.Now())
}

func (c *Cluster) liveLocked(replica string, now time.Time) bool {
	seen, ok := c.seen[replica]
	return ok && now.Sub(seen) < c.cfg.ReplicaTTL
}

// CommandsChanged broadcasts ids, batched with others a few ms apart.
func (c *Cluster) CommandsChanged(ids ...string) { c.out.addIDs(kindCommands, ids) }

// AgentsChanged broadcasts ids, batched with others a few ms apart.
func (c *Cluster) AgentsChanged(ids ...string) { c.out.addIDs(kindAgents, ids) }

// StateChanged broadcasts that pins, holds or denials changed.
func (c *Cluster) StateChanged() { c.out.addState() }

// Progress broadcasts p, at most one report every 250 ms per command:
// the latest one, and the last one always goes out.
func (c *Cluster) Progress(p *tenantagentv1.CommandProgress) { c.out.addProgress(p) }

// Cancel rings the doorbell of the replica holding agent's stream, or
// hands the cancel to this replica's handler if the stream is here. An
// agent with no live holder is not told; the command's end is in the
// store for whoever asks.
func (c *Cluster) Cancel(agent, commandID string) {
	if !validToken(agent) || !validToken(commandID) {
		return
	}
	c.mu.Lock()
	p := c.presence[agent]
	live := p.replica != "" && (p.replica == c.cfg.Replica || c.liveLocked(p.replica, c.cfg.Now()))
	c.mu.Unlock()
	switch {
	case !live:
		c.log.Debug("cancel for an agent with no stream", "agent", agent, "command", commandID)
	case p.replica == c.cfg.Replica:
		c.enqueue(event{kind: kindCancel, agent: agent, id: commandID})
	default:
		c.out.addDoorbell(channelOf(p.replica), string(kindCancel)+" "+agent+" "+commandID)
	}
}
