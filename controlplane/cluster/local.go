package cluster

import (
	"context"
	"sync"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// LocalReplica is the replica ID of a cluster of one. It is stable across
// restarts, so a restarted control plane takes its rollouts back at once.
const LocalReplica = "local"

// Presence tells whether an agent has a stream in this process
// (session.Registry).
type Presence interface {
	Online(agent string) bool
}

// Local is the cluster of one control plane: there is no one to tell.
type Local struct {
	presence Presence
	mu       sync.Mutex
	epochs   map[string]int64
}

var _ Cluster = (*Local)(nil)

// NewLocal returns the cluster of one, whose agents are in presence.
func NewLocal(presence Presence) *Local {
	return &Local{presence: presence, epochs: map[string]int64{}}
}

func (l *Local) Replica() string { return LocalReplica }

// Claim counts the agent's streams in this process. The session registry
// already replaces an older stream of the same agent here.
func (l *Local) Claim(_ context.Context, agent string) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.epochs[agent]++
	return l.epochs[agent], nil
}

func (l *Local) Release(_ context.Context, agent string, epoch int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.epochs[agent] == epoch {
		delete(l.epochs, agent)
	}
}

func (l *Local) Online(agent string) bool { return l.presence.Online(agent) }

func (*Local) CommandsChanged(...string)                {}
func (*Local) Progress(*tenantagentv1.CommandProgress)  {}
func (*Local) Cancel(string, string)                    {}
func (*Local) AgentsChanged(...string)                  {}
func (*Local) StateChanged()                            {}
func (*Local) Run(ctx context.Context, _ Handler) error { <-ctx.Done(); return nil }
