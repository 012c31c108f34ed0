package channel

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/resolver"

	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// MaxAddrs is the most control plane addresses an agent takes.
const MaxAddrs = 16

// resolveTimeout bounds one DNS lookup of a control plane host.
const resolveTimeout = 5 * time.Second

// resolverScheme names the per-attempt resolver that hands gRPC the
// addresses this attempt resolved (see dialAttempt).
const resolverScheme = "tenant-agent-cp"

// ParseAddrs splits a list of control plane addresses: host:port entries
// separated by commas (spaces around an entry are ignored), at most
// MaxAddrs of them, each with a host and a numeric port. An error names
// the bad entry, quoting at most limits.Quote bytes of it.
func ParseAddrs(list string) ([]string, error) {
	parts := strings.Split(list, ",")
	if len(parts) > MaxAddrs {
		return nil, fmt.Errorf("%d addresses, at most %d (the %dth is %s)", len(parts), MaxAddrs, MaxAddrs+1, limits.Quoted(strings.TrimSpace(parts[MaxAddrs])))
	}
	out := make([]string, 0, len(parts))
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			if len(parts) == 1 {
				return nil, errors.New("empty: want host:port, or several separated by commas")
			}
			return nil, fmt.Errorf("entry %d of %d is empty in %s: want host:port", i+1, len(parts), limits.Quoted(list))
		}
		host, port, err := net.SplitHostPort(p)
		switch {
		case err != nil:
			return nil, fmt.Errorf("entry %s: want host:port", limits.Quoted(p))
		case host == "":
			return nil, fmt.Errorf("entry %s: no host: want host:port", limits.Quoted(p))
		case port == "":
			return nil, fmt.Errorf("entry %s: no port: want host:port", limits.Quoted(p))
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("entry %s: the port must be a number from 1 to 65535", limits.Quoted(p))
		}
		out = append(out, p)
	}
	return out, nil
}

// Lookup resolves a host name to IP addresses (net.Resolver.LookupHost).
type Lookup func(ctx context.Context, host string) ([]string, error)

// picker chooses the control plane address of each attempt: the entries
// in a shuffled order, one per attempt, shuffled again when all were
// tried, so a fleet spreads over the replicas and a dead address costs
// one attempt a round. After a stream that was welcomed (one that lasted,
// or a Reconnect), a new round starts without the address just left, so
// an agent told to reconnect goes to another replica when there is one.
type picker struct {
	entries []string
	lookup  Lookup
	// round is what this round has not tried yet.
	round []string
	// last is the entry of the latest attempt; peer the IP:port of the
	// latest stream welcomed (tried last among a host's addresses).
	last, peer string
}

func newPicker(entries []string, lookup Lookup) *picker {
	if lookup == nil {
		lookup = net.DefaultResolver.LookupHost
	}
	return &picker{entries: entries, lookup: lookup}
}

// next is the entry of the next attempt.
func (p *picker) next() string {
	if len(p.round) == 0 {
		p.round = append([]string(nil), p.entries...)
		rand.Shuffle(len(p.round), func(i, j int) { p.round[i], p.round[j] = p.round[j], p.round[i] })
		if len(p.round) > 1 && p.round[0] == p.last {
			i := 1 + rand.IntN(len(p.round)-1)
			p.round[0], p.round[i] = p.round[i], p.round[0]
		}
	}
	p.last, p.round = p.round[0], p.round[1:]
	return p.last
}

// left records that a welcomed stream to peer (IP:port) ended: the next
// attempt starts a new round without the entry just left.
func (p *picker) left(peer string) {
	p.round, p.peer = nil, peer
}

// resolveError is a control plane host that did not resolve.
type resolveError struct {
	addr string
	err  error
}

func (e *resolveError) Error() string {
	return fmt.Sprintf("cannot resolve %s: %v", e.addr, e.err)
}

func (e *resolveError) Unwrap() error { return e.err }

// resolve looks the entry's host up now (so DNS changes count at the
// next attempt), within resolveTimeout, and returns its addresses in a
// random order, the one of the stream just left last. Each carries the
// host as written as its TLS server name, never the IP.
func (p *picker) resolve(ctx context.Context, entry string) ([]resolver.Address, error) {
	return resolveEntry(ctx, p.lookup, entry, p.peer)
}

func resolveEntry(ctx context.Context, lookup Lookup, entry, avoid string) ([]resolver.Address, error) {
	host, port, err := net.SplitHostPort(entry)
	if err != nil {
		return nil, err // ParseAddrs refused it already
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	ips, err := lookup(ctx, host)
	if err == nil && len(ips) == 0 {
		err = errors.New("no addresses")
	}
	if err != nil {
		return nil, &resolveError{addr: entry, err: err}
	}
	rand.Shuffle(len(ips), func(i, j int) { ips[i], ips[j] = ips[j], ips[i] })
	addrs := make([]resolver.Address, 0, len(ips))
	var tail []resolver.Address
	for _, ip := range ips {
		a := resolver.Address{Addr: net.JoinHostPort(ip, port), ServerName: host}
		if a.Addr == avoid && len(ips) > 1 {
			tail = append(tail, a)
			continue
		}
		addrs = append(addrs, a)
	}
	return append(addrs, tail...), nil
}

// addrList is the addresses for a log line.
func addrList(addrs []resolver.Address) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.Addr
	}
	return strings.Join(s, ",")
}
