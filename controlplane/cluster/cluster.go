// Package cluster ties the control plane replicas that share one store
// together. The store is the truth: commands, agents, pins and rollouts
// live there. What replicas tell each other are doorbells: "look at the
// store again, here is what changed". A lost doorbell costs latency, never
// a command, because each replica also sweeps the store on a timer.
//
// Local is the cluster of one (the embedded SQLite store); pgcluster rings
// doorbells with PostgreSQL's LISTEN/NOTIFY.
package cluster

import (
	"context"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// Cluster is what a replica tells the others and knows of them.
type Cluster interface {
	// Replica is this replica's ID.
	Replica() string

	// Claim records that this replica holds agent's stream, and returns
	// the stream's epoch: a later claim of the same agent, on any
	// replica, has a higher one, and the replica holding an older stream
	// is told (Handler.Replaced) to close it.
	Claim(ctx context.Context, agent string) (epoch int64, err error)
	// Release forgets agent's stream if the claim with epoch is still
	// the agent's latest.
	Release(ctx context.Context, agent string, epoch int64)
	// Online reports whether agent has a stream on any live replica.
	Online(agent string) bool

	// CommandsChanged tells the others that commands changed in the store
	// (watchers on other replicas re-read them).
	CommandsChanged(ids ...string)
	// Progress passes a command's progress report to watchers on other
	// replicas (coalesced: a few a second per command).
	Progress(p *tenantagentv1.CommandProgress)
	// Cancel asks the replica holding agent's stream to send it a
	// CancelCommand for the command; it checks the store first.
	Cancel(agent, commandID string)
	// AgentsChanged tells the others that agent records were stored.
	AgentsChanged(ids ...string)
	// StateChanged tells the others that pins, holds or denials changed.
	StateChanged()

	// Run delivers what the others say to h until ctx ends.
	Run(ctx context.Context, h Handler) error
}

// Handler is what a replica does when it is told something. Each call
// re-reads the store: a doorbell's words are a hint, never the truth.
type Handler interface {
	// Deliver sends the pending commands of those agents whose stream is
	// here (a fan-out rings for many agents at once: one read for all).
	Deliver(ctx context.Context, agents []string)
	// Cancel sends a CancelCommand for commandID to agent, if its stream
	// is here and the store says the command is agent's and unfinished
	// for the agent.
	Cancel(ctx context.Context, agent, commandID string)
	// CommandsChanged re-reads the commands for local watchers; nil ids
	// means every watched command (after a reconnect to the doorbells).
	CommandsChanged(ctx context.Context, ids []string)
	// Progress passes a progress report to local watchers.
	Progress(p *tenantagentv1.CommandProgress)
	// AgentsChanged re-reads agent records; all means every record
	// (after a reconnect to the doorbells, when some may have been lost).
	AgentsChanged(ctx context.Context, ids []string, all bool)
	// StateChanged re-reads pins, holds and denials.
	StateChanged(ctx context.Context)
	// Replaced closes agent's stream here if its epoch is below epoch.
	Replaced(agent string, epoch int64)
}
