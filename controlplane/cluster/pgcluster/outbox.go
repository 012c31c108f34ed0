package pgcluster

import (
	"container/heap"
	"context"
	"sync"
	"time"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

const (
	// batchDelay is how long changed IDs are collected before they are
	// sent: a fan-out of thousands becomes a few notifications.
	batchDelay = 5 * time.Millisecond
	// progressEvery is the most often one command's progress is sent.
	progressEvery = 250 * time.Millisecond
	// sendTimeout bounds one round of notifications.
	sendTimeout = 5 * time.Second
)

// outbox collects what this replica tells the others and sends it from
// one goroutine, so the callers (request handlers, a fan-out) never wait
// on the database. What cannot be sent is logged and dropped: the
// receivers' sweeps and resyncs cover.
type outbox struct {
	c    *Cluster
	kick chan struct{}

	mu        sync.Mutex
	batches   [2]idBatch // commands, agents
	state     bool
	doorbells []notice
	progress  map[string]*progressSlot
	due       dueHeap
}

// idBatch is changed IDs waiting to be broadcast.
type idBatch struct {
	kind  byte
	ids   []string
	bytes int
	since time.Time
}

// progressSlot is one command's latest report, dirty until sent.
type progressSlot struct {
	payload string
	step    step
	dirty   bool
}

// step is where a command is; within one, reports only count bytes.
type step struct {
	phase     tenantagentv1.CommandPhase
	container string
}

type notice struct{ channel, payload string }

func newOutbox(c *Cluster) *outbox {
	return &outbox{c: c, kick: make(chan struct{}, 1),
		batches:  [2]idBatch{{kind: kindCommands}, {kind: kindAgents}},
		progress: map[string]*progressSlot{}}
}

// closed reports whether the cluster is closed: nothing more is sent.
func (o *outbox) closed() bool { return o.c.ctx.Err() != nil }

func (o *outbox) wake() {
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

func (o *outbox) addIDs(kind byte, ids []string) {
	if o.closed() {
		return
	}
	b := &o.batches[0]
	if kind == kindAgents {
		b = &o.batches[1]
	}
	kick := false
	o.mu.Lock()
	for _, id := range ids {
		if !validToken(id) {
			o.c.log.Debug("ID not broadcast: it cannot travel in a payload", "id", id)
			continue
		}
		if len(b.ids) == 0 {
			b.since, kick = time.Now(), true
		}
		b.ids = append(b.ids, id)
		b.bytes += len(id) + 1
		if b.bytes >= maxPayload {
			kick = true // a full payload goes now
		}
	}
	o.mu.Unlock()
	if kick {
		o.wake()
	}
}

func (o *outbox) addState() {
	if o.closed() {
		return
	}
	o.mu.Lock()
	o.state = true
	o.mu.Unlock()
	o.wake()
}

func (o *outbox) addDoorbell(channel, payload string) {
	if o.closed() {
		return
	}
	o.mu.Lock()
	o.doorbells = append(o.doorbells, notice{channel, payload})
	o.mu.Unlock()
	o.wake()
}

// addProgress keeps p as its command's latest report. A command with no
// report sent in the last progressEvery goes at once; otherwise the slot's
// due time (last + progressEvery), already in the heap, sends the latest.
func (o *outbox) addProgress(p *tenantagentv1.CommandProgress) {
	id := p.GetCommandId()
	if !validToken(id) || o.closed() {
		return
	}
	payload, err := progressPayload(o.c.cfg.Replica, p)
	if err != nil || payload == "" {
		o.c.log.Debug("progress report not broadcast: too large for a notification", "command", id, "error", err)
		return
	}
	now := step{p.GetPhase(), p.GetContainer()}
	o.mu.Lock()
	s := o.progress[id]
	if s == nil {
		o.progress[id] = &progressSlot{payload: payload, step: now, dirty: true}
		heap.Push(&o.due, dueEntry{at: time.Now(), id: id})
		o.mu.Unlock()
		o.wake()
		return
	}
	if s.dirty && s.step != now {
		// Only byte counts are coalesced: the last report of a step goes
		// out now, so watchers elsewhere see every step.
		o.doorbells = append(o.doorbells, notice{channelAll, s.payload})
		defer o.wake()
	}
	s.payload, s.step, s.dirty = payload, now, true
	o.mu.Unlock()
}

// run sends until the cluster closes, then sends what is left.
func (o *outbox) run() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-o.c.ctx.Done():
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			notices, _ := o.take(time.Now(), true)
			o.send(ctx, notices)
			return
		case <-o.kick:
		case <-timer.C:
		}
		notices, next := o.take(time.Now(), false)
		// Not cut by Close: what is taken is sent, then the final flush.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(o.c.ctx), sendTimeout)
		o.send(ctx, notices)
		cancel()
		timer.Reset(next)
	}
}

// take returns the notifications due at now (all of them if final) and
// how long until the next one is.
func (o *outbox) take(now time.Time, final bool) ([]notice, time.Duration) {
	next := time.Hour
	soon := func(at time.Time) {
		if d := at.Sub(now); d < next {
			next = max(d, 0)
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []notice
	for i := range o.batches {
		b := &o.batches[i]
		if len(b.ids) == 0 {
			continue
		}
		if !final && now.Sub(b.since) < batchDelay && b.bytes < maxPayload {
			soon(b.since.Add(batchDelay))
			continue
		}
		for _, p := range splitIDs(b.kind, o.c.cfg.Replica, b.ids) {
			out = append(out, notice{channelAll, p})
		}
		b.ids, b.bytes = nil, 0
	}
	if o.state {
		out = append(out, notice{channelAll, string(kindState) + " " + o.c.cfg.Replica})
		o.state = false
	}
	out = append(out, o.doorbells...)
	o.doorbells = nil
	if final {
		// Closing: nothing newer will come; send every latest report.
		for _, s := range o.progress {
			if s.dirty {
				out = append(out, notice{channelAll, s.payload})
			}
		}
		o.progress, o.due = map[string]*progressSlot{}, nil
	}
	for o.due.Len() > 0 && !o.due[0].at.After(now) {
		e := heap.Pop(&o.due).(dueEntry)
		s := o.progress[e.id]
		switch {
		case s == nil:
		case s.dirty:
			out = append(out, notice{channelAll, s.payload})
			s.dirty, s.payload = false, ""
			// Reports until then only replace the payload; this entry
			// sends the latest, or retires the slot if none came.
			heap.Push(&o.due, dueEntry{at: now.Add(progressEvery), id: e.id})
		default:
			delete(o.progress, e.id)
		}
	}
	if o.due.Len() > 0 {
		soon(o.due[0].at)
	}
	return out, next
}

// send rings every notice in one statement, in order.
func (o *outbox) send(ctx context.Context, notices []notice) {
	if len(notices) == 0 {
		return
	}
	channels := make([]string, len(notices))
	payloads := make([]string, len(notices))
	for i, n := range notices {
		channels[i], payloads[i] = n.channel, n.payload
	}
	_, err := o.c.pool.Exec(ctx, `SELECT pg_notify(ch, p) FROM unnest($1::text[], $2::text[]) AS n(ch, p)`, channels, payloads)
	if err != nil {
		if ok, n := o.c.warn.allow("send"); ok {
			o.c.log.Warn("cannot notify the other replicas; they catch up at their next sweep or resync",
				"notifications", len(notices), "suppressed_since_last", n, "error", err)
		}
	}
}

// dueHeap orders progress slots by when they are next looked at.
type dueEntry struct {
	at time.Time
	id string
}

type dueHeap []dueEntry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueEntry)) }
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
