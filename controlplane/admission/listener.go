// Package admission bounds what the agent listener lets in before any
// command logic runs: how many connections are open at once, and how often
// one agent identity may open a new stream.
package admission

import (
	"net"
	"sync"
	"sync/atomic"
)

// Listener accepts at most max open connections; one over the cap is
// closed as soon as it is accepted (the peer sees a reset and backs off)
// rather than left waiting in the kernel's backlog.
type Listener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused func()
}

// LimitListener wraps l. refused, if set, is called for each connection
// closed for being over the cap.
func LimitListener(l net.Listener, max int, refused func()) *Listener {
	return &Listener{Listener: l, max: int64(max), refused: refused}
}

// Accept returns the next connection under the cap.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			c.Close()
			if l.refused != nil {
				l.refused()
			}
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

// Open is the number of connections open now.
func (l *Listener) Open() int { return int(l.open.Load()) }

type countedConn struct {
	net.Conn
	l    *Listener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}
