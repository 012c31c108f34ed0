package pgcluster

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/molecule-ai/tenant-agent/controlplane/cluster"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
	// connectTimeout bounds one attempt to open the LISTEN connection.
	connectTimeout = 10 * time.Second
	// pingEvery is the longest the listener waits without a sign of life
	// before it checks the connection (a dead peer sends no error).
	pingEvery = 10 * time.Second
	// pingTimeout bounds that check.
	pingTimeout = 5 * time.Second
)

// event is one handler call waiting for the worker.
type event struct {
	kind     byte
	agent    string
	id       string
	ids      []string
	epoch    int64
	progress *tenantagentv1.CommandProgress
}

// Run listens for what the other replicas say and sweeps the database,
// calling h, until ctx ends or the cluster is closed.
//
// Who calls h: one worker goroutine makes every call in the order the
// notifications came (Cancel, CommandsChanged, Progress, AgentsChanged,
// StateChanged, Replaced), so the receiving goroutine never waits on the
// handler; Deliver is run by a pool of four, deduplicated per agent,
// because a fan-out journaled elsewhere rings once per agent and each
// delivery reads and writes the store (order does not matter: each
// re-reads). h must therefore be safe for concurrent use. If the worker
// falls eventQueue calls behind, notifications are dropped and a full
// resync follows (lost doorbells cost latency, never a command).
//
// After every LISTEN (the first, and again after a lost connection,
// reconnecting with backoff from 100 ms to 5 s) Run sweeps at once and
// resyncs: AgentsChanged(nil, all), StateChanged, CommandsChanged(nil):
// whatever was said while nobody listened is re-read.
func (c *Cluster) Run(ctx context.Context, h cluster.Handler) error {
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return errors.New("pgcluster: closed")
	case c.handler != nil:
		c.mu.Unlock()
		return errors.New("pgcluster: Run is already running")
	}
	c.handler = h
	c.bg.Add(1) // under mu, with closed false: Close's Wait sees it
	c.mu.Unlock()
	defer c.bg.Done()
	defer func() {
		c.mu.Lock()
		c.handler = nil
		c.mu.Unlock()
	}()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.ctx, cancel)()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // before the Wait: stop the helpers first
	wg.Go(func() { c.work(ctx, h) })
	for range deliverWorkers {
		wg.Go(func() { c.deliver(ctx, h) })
	}
	wg.Go(func() { c.sweepLoop(ctx) })
	c.listen(ctx)
	return nil
}

// listen holds the LISTEN connection until ctx ends, reconnecting with
// backoff. The loss and the recovery are logged once each.
func (c *Cluster) listen(ctx context.Context) {
	backoff := backoffMin
	lost, first := false, true
	for {
		conn, err := c.connectListener(ctx)
		if err == nil {
			switch {
			case first:
				c.log.Info("listening for the other replicas", "channels", []string{channelAll, c.own})
			case lost:
				c.log.Info("doorbells back: listening again; resyncing")
			}
			first = false
			lost, backoff = false, backoffMin
			c.resync()
			err = c.receive(ctx, conn)
			closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
			conn.Close(closeCtx)
			cancel()
		}
		if ctx.Err() != nil {
			return
		}
		if !lost {
			c.log.Warn("doorbells lost: the LISTEN connection failed; reconnecting (the sweep still runs)", "error", err)
			lost = true
		} else {
			c.log.Debug("LISTEN reconnect failed", "error", err, "retry_in", backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, backoffMax)
	}
}

func (c *Cluster) connectListener(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, c.listenCfg)
	if err != nil {
		return nil, err
	}
	// No arguments: one simple query holding both statements.
	sql := "LISTEN " + pgx.Identifier{channelAll}.Sanitize() + "; LISTEN " + pgx.Identifier{c.own}.Sanitize()
	if _, err := conn.Exec(cctx, sql); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	return conn, nil
}

// resync asks for a sweep now and, from the worker, a re-read of
// everything the handler watches.
func (c *Cluster) resync() {
	c.requestSweep()
	select {
	case c.resyncNow <- struct{}{}:
	default:
	}
}

func (c *Cluster) requestSweep() {
	select {
	case c.sweepNow <- struct{}{}:
	default:
	}
}

// receive hands each notification to handle until the connection fails
// or ctx ends. When nothing comes for pingEvery, it pings: a peer that
// vanished without a word would otherwise leave it waiting forever.
func (c *Cluster) receive(ctx context.Context, conn *pgx.Conn) error {
	every := min(c.cfg.SweepEvery, pingEvery)
	for {
		wctx, cancel := context.WithTimeout(ctx, every)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			c.handle(n)
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case !errors.Is(err, context.DeadlineExceeded):
			return err
		}
		// A timeout leaves the connection usable; notifications that
		// arrive during the ping are buffered for the next wait.
		pctx, cancel := context.WithTimeout(ctx, pingTimeout)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			return err
		}
	}
}

// handle applies one notification: presence at once (so Online is
// current), everything else as an event for the worker or a delivery.
func (c *Cluster) handle(n *pgconn.Notification) {
	if n.Channel == c.own {
		m, err := parseDoorbell(n.Payload)
		if err != nil {
			c.malformed(n)
			return
		}
		if m.kind == kindDeliver {
			c.deliveries.push(m.identity)
			return
		}
		c.enqueue(event{kind: kindCancel, agent: m.identity, id: m.id})
		return
	}
	if n.Channel != channelAll {
		return
	}
	m, err := parseBroadcast(n.Payload)
	if err != nil {
		c.malformed(n)
		return
	}
	if m.origin == c.cfg.Replica {
		return // our own broadcast
	}
	now := c.cfg.Now()
	c.mu.Lock()
	if now.After(c.seen[m.origin]) {
		c.seen[m.origin] = now // a word from a replica is a sign of life
	}
	var replaced int64
	switch m.kind {
	case kindClaimed:
		if p := c.presence[m.identity]; m.epoch >= p.epoch {
			c.presence[m.identity] = holder{replica: m.origin, epoch: m.epoch, gen: c.gen}
		}
		// A claim in progress here decides for itself when it returns
		// (Claim): its own epoch may well be the newer one.
		if mine, ok := c.claims[m.identity]; ok && mine < m.epoch && c.inflight[m.identity] == 0 {
			replaced = m.epoch
		}
	case kindReleased:
		if p := c.presence[m.identity]; m.epoch > p.epoch || m.epoch == p.epoch && p.replica == m.origin {
			c.presence[m.identity] = holder{epoch: m.epoch, gen: c.gen}
		}
	}
	c.mu.Unlock()
	switch m.kind {
	case kindClaimed:
		if replaced > 0 {
			// The claim is kept: the sweep repeats Replaced once the row
			// confirms it, for a stream registered only after this.
			c.enqueue(event{kind: kindReplaced, agent: m.identity, epoch: replaced})
		}
	case kindCommands, kindAgents:
		c.enqueue(event{kind: m.kind, ids: m.ids})
	case kindProgress:
		c.enqueue(event{kind: kindProgress, progress: m.progress})
	case kindState:
		c.enqueue(event{kind: kindState})
	}
}

func (c *Cluster) malformed(n *pgconn.Notification) {
	if ok, dropped := c.warn.allow("payload"); ok {
		c.log.Warn("malformed notification ignored", "channel", n.Channel, "bytes", len(n.Payload),
			"from_pid", n.PID, "suppressed_since_last", dropped)
	}
}

// enqueue hands ev to the worker without waiting. When the worker is too
// far behind, ev is dropped and a full resync follows instead.
func (c *Cluster) enqueue(ev event) {
	select {
	case c.events <- ev:
	default:
		if ok, n := c.warn.allow("overflow"); ok {
			c.log.Warn("cluster handler behind; notifications dropped, resyncing", "suppressed_since_last", n)
		}
		c.resync()
	}
}

// work makes the handler's calls, in order, until ctx ends.
func (c *Cluster) work(ctx context.Context, h cluster.Handler) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.resyncNow:
			h.AgentsChanged(ctx, nil, true)
			h.StateChanged(ctx)
			h.CommandsChanged(ctx, nil)
		case ev := <-c.events:
			switch ev.kind {
			case kindCancel:
				h.Cancel(ctx, ev.agent, ev.id)
			case kindCommands:
				h.CommandsChanged(ctx, ev.ids)
			case kindAgents:
				h.AgentsChanged(ctx, ev.ids, false)
			case kindState:
				h.StateChanged(ctx)
			case kindProgress:
				h.Progress(ev.progress)
			case kindReplaced:
				h.Replaced(ev.agent, ev.epoch)
			}
		}
	}
}

// deliverBatch bounds the agents one Handler.Deliver call takes: a
// fan-out's doorbells for hundreds of agents become a few reads, not one
// each.
const deliverBatch = 512

// deliver runs Handler.Deliver for queued agents until ctx ends.
func (c *Cluster) deliver(ctx context.Context, h cluster.Handler) {
	for {
		agents, ok := c.deliveries.pop(ctx, deliverBatch)
		if !ok {
			return
		}
		h.Deliver(ctx, agents)
	}
}

// deliverQueue is the agents waiting for a Deliver, each at most once: a
// doorbell for an agent already waiting adds nothing, and one arriving
// while its delivery runs queues it again (that delivery may have read
// the store too early).
type deliverQueue struct {
	mu     sync.Mutex
	queued map[string]bool
	order  []string
	wake   chan struct{}
}

func newDeliverQueue() *deliverQueue {
	return &deliverQueue{queued: map[string]bool{}, wake: make(chan struct{}, 1)}
}

func (q *deliverQueue) push(agent string) {
	q.mu.Lock()
	if !q.queued[agent] {
		q.queued[agent] = true
		q.order = append(q.order, agent)
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// pop takes up to most queued agents, waiting for one if there is none.
func (q *deliverQueue) pop(ctx context.Context, most int) ([]string, bool) {
	for {
		q.mu.Lock()
		if len(q.order) > 0 {
			n := min(most, len(q.order))
			agents := slices.Clone(q.order[:n])
			q.order = q.order[n:]
			if len(q.order) == 0 {
				q.order = nil // let the backing array go
			} else {
				select { // another worker takes the next ones
				case q.wake <- struct{}{}:
				default:
				}
			}
			for _, a := range agents {
				delete(q.queued, a)
			}
			q.mu.Unlock()
			return agents, true
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, false
		case <-q.wake:
		}
	}
}

// limiter lets one warning of a kind through every so often and counts
// the ones it held back.
type limiter struct {
	every time.Duration
	mu    sync.Mutex
	last  map[string]time.Time
	held  map[string]int
}

func (l *limiter) allow(key string) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last, l.held = map[string]time.Time{}, map[string]int{}
	}
	now := time.Now()
	if t, ok := l.last[key]; ok && now.Sub(t) < l.every {
		l.held[key]++
		return false, 0
	}
	n := l.held[key]
	l.last[key], l.held[key] = now, 0
	return true, n
}
