package admission

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// DefaultMaxHandshakes is the default bound on concurrent handshakes:
// enough to keep every core busy while most of them wait on the network
// (a handshake holds its slot for a round trip to the agent), few enough
// that a storm queues instead of sharing the cores so thinly that
// handshakes miss their deadline, their agents drop their session tickets
// and come back with full handshakes, which is how a storm collapses.
// Measured with bench/fleetsim on 2 cores (agents on the same cores):
// 5,000 agents back after a kill -9 in 4.3-4.5 s with 32, 128 or 512,
// 18.8 s unbounded; connecting afresh, 33 s with 32, 5.0 s with 128,
// 6.5 s with 512, 8.1 s unbounded. With a shorter queue (half the
// handshake timeout, counted from the accept) 10,000 agents shed half and
// more of themselves, each shed one costing a handshake and a wait;
// unbounded, a SIGTERM storm under outside load (30) collapsed: 200 s,
// 4,554 full handshakes.
func DefaultMaxHandshakes() int { return 256 * runtime.GOMAXPROCS(0) }

// maxHint bounds a retry hint: past it the queue's length says more about
// a burst than about how long it takes to drain.
const maxHint = 15 * time.Second

// Handshakes bounds concurrent TLS handshakes on the agent port, so that
// a storm queues (each handshake done at full speed, in turn) instead of
// sharing the cores so thinly that every handshake misses its deadline.
// A connection that finds every slot taken waits up to wait for one (the
// handshake's own timeout starts when it has a slot: waiting costs the
// control plane nothing); past it, it is shed: its handshake still runs (a gRPC status can only
// reach a peer over TLS, and only a verified peer is told anything), but
// its first stream is answered with ResourceExhausted and a retry hint
// (see Admit) instead of a session. That is honest about the cost: a
// shed connection costs a handshake, resumed most of the time, and saves
// the session's setup, which costs more, and the agent's climb up its
// backoff. So only a connection that would otherwise have timed out is
// shed; a timed-out one costs more, since its agent drops its session
// ticket and comes back with a full handshake. Shed handshakes have their
// own bound, as many again, with a quarter of the wait; a connection over
// both is closed (the agent backs off as for any failed dial).
//
// The hint spreads the shed agents over the time the queue, at the rate
// handshakes are completing now, takes to drain (at most maxHint), so
// they come back spread out rather than each climbing its own backoff.
type Handshakes struct {
	slots, shedSlots chan struct{}
	wait, timeout    time.Duration
	// Observe, if set, is told of every completed handshake.
	observe func(resumed bool)
	refused func()

	queued atomic.Int64
	done   rateMeter
	// closing, closed by Close, ends every wait for a slot: at shutdown,
	// a connection still queued for its handshake would hold the
	// server's stop for up to the wait.
	closing   chan struct{}
	closeOnce sync.Once
	// shed maps the remote address of each shed connection to its hint,
	// until the connection closes.
	shed sync.Map
}

// NewHandshakes allows max concurrent handshakes, a connection waiting up
// to wait for one, then timeout for its handshake. observe, if set, is
// told of every completed handshake, and refused of every connection shed
// or closed over the bounds.
func NewHandshakes(max int, wait, timeout time.Duration, observe func(resumed bool), refused func()) *Handshakes {
	return &Handshakes{slots: make(chan struct{}, max), shedSlots: make(chan struct{}, max), wait: wait, timeout: timeout,
		observe: observe, refused: refused, closing: make(chan struct{})}
}

// Close ends every wait for a slot, now and later: those connections
// are closed (the control plane is shutting down).
func (h *Handshakes) Close() { h.closeOnce.Do(func() { close(h.closing) }) }

// Credentials wraps the server's transport credentials with the bound.
func (h *Handshakes) Credentials(inner credentials.TransportCredentials) credentials.TransportCredentials {
	return &boundedCredentials{TransportCredentials: inner, h: h}
}

// Admit refuses a stream on a shed connection with ResourceExhausted and
// the connection's retry hint.
func (h *Handshakes) Admit(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return nil
	}
	hint, ok := h.shed.Load(p.Addr.String())
	if !ok {
		return nil
	}
	d := hint.(time.Duration)
	return retryLater(fmt.Sprintf("the control plane is at its bound of %d concurrent handshakes; retry in %s", cap(h.slots), d.Round(time.Millisecond)), d)
}

// errShed is the handshake error of a connection over both bounds.
var errShed = errors.New("admission: too many concurrent handshakes")

type boundedCredentials struct {
	credentials.TransportCredentials
	h *Handshakes
}

func (c *boundedCredentials) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	h := c.h
	if h.acquire(h.slots, h.wait) {
		defer func() { <-h.slots }()
		return h.handshake(c.TransportCredentials, raw)
	}
	if h.refused != nil {
		h.refused()
	}
	if !h.acquire(h.shedSlots, h.wait/4) {
		raw.Close()
		return nil, nil, errShed
	}
	defer func() { <-h.shedSlots }()
	conn, info, err := h.handshake(c.TransportCredentials, raw)
	if err != nil {
		return conn, info, err
	}
	key := conn.RemoteAddr().String()
	h.shed.Store(key, h.hint())
	return &shedConn{Conn: conn, forget: func() { h.shed.Delete(key) }}, info, nil
}

func (c *boundedCredentials) Clone() credentials.TransportCredentials {
	return &boundedCredentials{TransportCredentials: c.TransportCredentials.Clone(), h: c.h}
}

// acquire takes a slot, waiting up to wait.
func (h *Handshakes) acquire(slots chan struct{}, wait time.Duration) bool {
	select {
	case slots <- struct{}{}:
		return true
	default:
	}
	h.queued.Add(1)
	defer h.queued.Add(-1)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	case <-h.closing:
		return false
	}
}

// handshake runs one, under its own timeout (gRPC's, set when the
// connection was accepted, also ran while it queued; gRPC clears it after).
func (h *Handshakes) handshake(inner credentials.TransportCredentials, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	raw.SetDeadline(time.Now().Add(h.timeout))
	conn, info, err := inner.ServerHandshake(raw)
	if err != nil {
		return conn, info, err
	}
	h.done.add(time.Now())
	if h.observe != nil {
		state, _ := mtls.ConnectionState(info)
		h.observe(state.DidResume)
	}
	return conn, info, nil
}

// hint is a random wait between one second and one second more than the
// time the connections waiting now take to go through at the recent rate
// of handshakes (at most maxHint), so that they come back spread over it.
// Too short a hint costs a shed agent another handshake; too long one
// leaves the control plane idle while agents wait, so the rate is read
// generously (see rateMeter).
func (h *Handshakes) hint() time.Duration {
	drain := maxHint
	if rate := h.done.perSecond(time.Now()); rate > 0 {
		drain = time.Duration(float64(h.queued.Load()) / rate * float64(time.Second))
	}
	drain = min(max(drain, time.Second), maxHint)
	return time.Second + rand.N(drain)
}

// shedConn forgets its hint when gRPC closes it.
type shedConn struct {
	net.Conn
	once   sync.Once
	forget func()
}

func (c *shedConn) Close() error {
	c.once.Do(c.forget)
	return c.Conn.Close()
}

// rateMeter counts events per second: the greater of the last full
// second's count and the current second's so far, extrapolated (a storm's
// first second has a quiet one before it).
type rateMeter struct {
	mu         sync.Mutex
	second     int64
	count, ago int
}

func (m *rateMeter) add(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.roll(now.Unix())
	m.count++
}

func (m *rateMeter) perSecond(now time.Time) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.roll(now.Unix())
	elapsed := float64(now.Nanosecond())/1e9 + 0.1 // no wild guesses at the start of a second
	return max(float64(m.ago), float64(m.count)/elapsed)
}

func (m *rateMeter) roll(sec int64) {
	switch {
	case sec == m.second:
	case sec == m.second+1:
		m.second, m.ago, m.count = sec, m.count, 0
	default:
		m.second, m.ago, m.count = sec, 0, 0
	}
}
