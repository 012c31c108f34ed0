package mtls

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// RefusalLogInterval is how often one peer address may be logged for
// refused handshakes with the same reason; the refusals in between are
// counted into the next line. A misconfigured fleet redials every second
// or so: one line per connection would drown the log, while a new reason
// from the same address is news.
const RefusalLogInterval = 10 * time.Second

// maxRefusalPeers bounds the addresses remembered, so a flood from many
// addresses cannot grow memory; past it, lines are not rate-limited per
// address until old entries expire.
const maxRefusalPeers = 10000

// refusalLog logs failed server handshakes, at most one line per peer IP
// and reason per interval.
type refusalLog struct {
	logger   *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu    sync.Mutex
	peers map[refusalKey]*refusalPeer
}

type refusalKey struct{ ip, reason string }

type refusalPeer struct {
	logged     time.Time
	suppressed int
}

func newRefusalLog(logger *slog.Logger, interval time.Duration) *refusalLog {
	return &refusalLog{logger: logger, interval: interval, now: time.Now, peers: map[refusalKey]*refusalPeer{}}
}

// refused logs, or counts, a handshake from addr that failed with err.
func (r *refusalLog) refused(addr net.Addr, err error) {
	ip := peerIP(addr)
	suppressed, ok := r.admit(refusalKey{ip, err.Error()})
	if !ok {
		return
	}
	level := slog.LevelWarn
	if closedEarly(err) {
		// A port probe or a client that gave up: not a refusal worth a
		// warning, but still visible when debugging.
		level = slog.LevelDebug
	}
	args := []any{"peer", ip, "reason", err}
	if suppressed > 0 {
		args = append(args, "refused_since_last_line", suppressed)
	}
	r.logger.Log(context.Background(), level, "handshake refused", args...)
}

// admit reports whether k may be logged now, and how many refusals of k
// were counted since its last line.
func (r *refusalLog) admit(k refusalKey) (suppressed int, ok bool) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.peers[k]
	if p != nil && now.Sub(p.logged) < r.interval {
		p.suppressed++
		return 0, false
	}
	if p == nil {
		if len(r.peers) >= maxRefusalPeers {
			r.forgetOld(now)
		}
		if len(r.peers) >= maxRefusalPeers {
			return 0, true
		}
		p = &refusalPeer{}
		r.peers[k] = p
	}
	suppressed, p.logged, p.suppressed = p.suppressed, now, 0
	return suppressed, true
}

func (r *refusalLog) forgetOld(now time.Time) {
	for k, p := range r.peers {
		if now.Sub(p.logged) >= r.interval {
			delete(r.peers, k)
		}
	}
}

func peerIP(addr net.Addr) string {
	if addr == nil {
		return "unknown"
	}
	if host, _, err := net.SplitHostPort(addr.String()); err == nil {
		return host
	}
	return addr.String()
}

// closedEarly reports whether the peer went away before sending anything
// that could be refused.
func closedEarly(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}
