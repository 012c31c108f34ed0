package auth

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// closeConnsAfter is how long a revoked connection lives after its calls
// were ended: long enough for their PermissionDenied status to reach the
// peer, short enough to be "at once".
const closeConnsAfter = 250 * time.Millisecond

// ErrRevoked ends the calls and connections of a denied tenant or
// certificate.
var ErrRevoked = errors.New("revoked")

// open tracks every call in flight and every connection open on either
// listener, with the tenant and certificate serial that made it, so a
// denial can end them all at once: checking the deny list when a call
// starts is not enough for a stream that stays open for days.
type open struct {
	mu    sync.Mutex
	calls map[*trackedCall]struct{}
	conns map[*trackedConn]struct{}
}

type peerKey struct{ tenant, serial string }

type trackedCall struct {
	peerKey
	cancel context.CancelCauseFunc
}

type trackedConn struct {
	net.Conn
	peerKey
	owner *open
	once  sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.owner.forgetConn(c) })
	return c.Conn.Close()
}

func (o *open) trackCall(ctx context.Context, tenant, serial string) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	c := &trackedCall{peerKey: peerKey{tenant, serial}, cancel: cancel}
	o.mu.Lock()
	o.calls[c] = struct{}{}
	o.mu.Unlock()
	return ctx, func() {
		o.mu.Lock()
		delete(o.calls, c)
		o.mu.Unlock()
		cancel(nil)
	}
}

func (o *open) trackConn(conn net.Conn, tenant, serial string) net.Conn {
	c := &trackedConn{Conn: conn, peerKey: peerKey{tenant, serial}, owner: o}
	o.mu.Lock()
	o.conns[c] = struct{}{}
	o.mu.Unlock()
	return c
}

func (o *open) forgetConn(c *trackedConn) {
	o.mu.Lock()
	delete(o.conns, c)
	o.mu.Unlock()
}

// revoke ends the calls match selects with cause now, and closes the
// matching connections shortly after. It returns how many calls it ended.
func (o *open) revoke(match func(peerKey) bool, cause error) int {
	o.mu.Lock()
	var calls []*trackedCall
	for c := range o.calls {
		if match(c.peerKey) {
			calls = append(calls, c)
		}
	}
	var conns []*trackedConn
	for c := range o.conns {
		if match(c.peerKey) {
			conns = append(conns, c)
		}
	}
	o.mu.Unlock()
	for _, c := range calls {
		c.cancel(cause)
	}
	if len(conns) > 0 {
		time.AfterFunc(closeConnsAfter, func() {
			for _, c := range conns {
				c.Close()
			}
		})
	}
	return len(calls)
}

func (o *open) counts() (calls, conns int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.calls), len(o.conns)
}
