// Package store is the control plane's durable state: pins with history,
// the command journal and its events, agents, rollouts, holds and denials.
// Store is the one interface callers use; sqlite implements it (the
// default, embedded) and postgres for several control plane replicas
// sharing one database. storetest is the contract both pass.
package store

import (
	"context"
	"errors"
	"time"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// ErrNotFound is returned when a record does not exist.
var ErrNotFound = errors.New("not found")

// ErrLeaseLost is returned by a fenced rollout write when the rollout's
// (owner, epoch) is no longer the writer's: another replica claimed it,
// and the writer must stop running it.
var ErrLeaseLost = errors.New("rollout lease is held by another replica")

// ErrConflict is returned when a write collides with a concurrent one on
// a unique rule (e.g. a rollout's second command of a kind for an agent,
// journaled by another replica meanwhile): the caller re-reads what won
// instead of retrying blindly.
var ErrConflict = errors.New("conflict with a concurrent write")

// Pin is the image a runtime must run (one row of runtime_image_pins).
type Pin struct {
	Runtime      string
	TemplateName string
	Repository   string
	Digest       string
	GitSHA       string
	PromotedAt   time.Time
	PromotedBy   string
	Notes        string
}

// Ref is the pin's image reference, repository@digest.
func (p Pin) Ref() string { return p.Repository + "@" + p.Digest }

// Command is one journaled command, addressed to one agent.
type Command struct {
	ID string
	// Seq orders commands by creation; it is assigned by the store.
	Seq int64
	// Agent is the SPIFFE ID of the agent the command is for.
	Agent       string
	Tenant      string
	Kind        controlplanev1.CommandKind
	Runtime     string
	Repository  string
	Digest      string
	Options     *tenantagentv1.RefreshOptions
	State       controlplanev1.CommandState
	RequestedBy string
	RolloutID   string
	CreatedAt   time.Time
	UpdatedAt   time.Time
	Deadline    time.Time
	Error       string
	Result      *tenantagentv1.CommandResult
}

// Terminal reports whether the state is final.
func Terminal(s controlplanev1.CommandState) bool {
	switch s {
	case controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED,
		controlplanev1.CommandState_COMMAND_STATE_FAILED,
		controlplanev1.CommandState_COMMAND_STATE_ROLLED_BACK,
		controlplanev1.CommandState_COMMAND_STATE_PARTIAL,
		controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED,
		controlplanev1.CommandState_COMMAND_STATE_CANCELED,
		controlplanev1.CommandState_COMMAND_STATE_EXPIRED:
		return true
	}
	return false
}

// StateOrder is where a state comes in a command's life; a command's state
// only ever moves to a higher one.
func StateOrder(s controlplanev1.CommandState) int {
	switch s {
	case controlplanev1.CommandState_COMMAND_STATE_PENDING:
		return 0
	case controlplanev1.CommandState_COMMAND_STATE_SENT:
		return 1
	case controlplanev1.CommandState_COMMAND_STATE_ACKED:
		return 2
	case controlplanev1.CommandState_COMMAND_STATE_RUNNING:
		return 3
	}
	return 4
}

// ActiveStates are the states of a command not yet ended.
var ActiveStates = []controlplanev1.CommandState{
	controlplanev1.CommandState_COMMAND_STATE_PENDING,
	controlplanev1.CommandState_COMMAND_STATE_SENT,
	controlplanev1.CommandState_COMMAND_STATE_ACKED,
	controlplanev1.CommandState_COMMAND_STATE_RUNNING,
}

// CommandUpdate is one read-modify-write of UpdateCommands.
type CommandUpdate struct {
	ID string
	// Fn changes the command and reports whether it did.
	Fn func(*Command) bool
	// Event, if set, builds the event stored with a change.
	Event func(*Command) *Event
}

// UpdatedCommand is the outcome of one CommandUpdate: Command is nil if
// there is no such command, else it is the command as stored after.
type UpdatedCommand struct {
	Command *Command
	Changed bool
}

// CommandFilter selects commands; zero fields match everything.
type CommandFilter struct {
	Agent string
	// Agents selects commands for any of these agents (with Agent, both
	// apply).
	Agents []string
	// IDs selects these commands.
	IDs       []string
	Tenant    string
	Runtime   string
	RolloutID string
	Kind      controlplanev1.CommandKind
	States    []controlplanev1.CommandState
	// DeadlineBefore selects commands whose deadline is before it.
	DeadlineBefore time.Time
	// BeforeSeq pages: only commands with Seq below it.
	BeforeSeq int64
	// Limit caps the result; 0 means no cap.
	Limit int
	// Oldest orders oldest first instead of newest first.
	Oldest bool
}

// Event is one stored step of a command: a state change or a new phase.
type Event struct {
	CommandID string
	At        time.Time
	State     controlplanev1.CommandState
	// Progress is set for progress events.
	Progress *tenantagentv1.CommandProgress
	Message  string
}

// Agent is what the control plane remembers of an agent.
type Agent struct {
	Identity        string
	Tenant          string
	Name            string
	ConnectedAt     time.Time
	LastSeen        time.Time
	Hostname        string
	AgentVersion    string
	DockerVersion   string
	DockerReachable bool
	Runtimes        []*tenantagentv1.RuntimeStatus
}

// AgentSeen is when an agent was last seen (TouchAgents).
type AgentSeen struct {
	Identity string
	At       time.Time
}

// Hold stops automatic refreshes for a tenant.
type Hold struct {
	Tenant string
	Reason string
	HeldBy string
	HeldAt time.Time
}

// DenialKind is what a denial names.
type DenialKind string

const (
	DenyTenant DenialKind = "tenant"
	DenySerial DenialKind = "serial"
)

// Denial revokes a tenant or a certificate serial.
type Denial struct {
	Kind     DenialKind
	Value    string
	Reason   string
	DeniedBy string
	DeniedAt time.Time
}

// RolloutState is where a rollout is.
type RolloutState string

const (
	RolloutRunning   RolloutState = "running"
	RolloutCompleted RolloutState = "completed"
	RolloutHalted    RolloutState = "halted"
	RolloutAborted   RolloutState = "aborted"
)

// RolloutOptions say how a rollout goes (controlplane.v1.RolloutOptions,
// which is how the store encodes them).
type RolloutOptions struct {
	// Prefetch pulls the image on every target before any refresh.
	Prefetch bool
	// CanaryTenants are refreshed first, one at a time, in this order.
	CanaryTenants []string
	// MaxParallelTenants bounds the rest; zero takes the default.
	MaxParallelTenants uint32
	// HaltAfterFailures stops starting tenants after this many failed;
	// zero never halts.
	HaltAfterFailures uint32
	// MaxParallelContainers caps each agent's parallel recreates after its
	// canary container; zero leaves it to the agent.
	MaxParallelContainers uint32
}

// Rollout is one promote's roll to the fleet.
type Rollout struct {
	ID          string
	Runtime     string
	Repository  string
	Digest      string
	Options     RolloutOptions
	State       RolloutState
	RequestedBy string
	CreatedAt   time.Time
	UpdatedAt   time.Time
	Message     string
	// Owner is the replica running the rollout, and Epoch counts its
	// claims: every write while it runs is fenced by both, so a replica
	// that lost the rollout can write nothing. The owner holds it until
	// LeaseUntil, and renews the lease while it runs.
	Owner      string
	Epoch      int64
	LeaseUntil time.Time
	// ResumedAt is when an operator last resumed it after a halt; zero
	// if never. Failures before it do not count towards a halt.
	ResumedAt time.Time
}

// TicketKey is a TLS session ticket key. Its String hides the secret.
type TicketKey struct {
	Secret    [32]byte
	CreatedAt time.Time
}

func (k TicketKey) String() string { return "ticket key of " + k.CreatedAt.UTC().Format(time.RFC3339) }

// Store is the control plane's persistence. Implementations are safe for
// concurrent use.
type Store interface {
	// RecordPin appends a pin to the runtime's history, making it current.
	RecordPin(ctx context.Context, p Pin) error
	// CurrentPin returns the runtime's latest pin or ErrNotFound.
	CurrentPin(ctx context.Context, runtime string) (Pin, error)
	// ListPins returns every runtime's current pin, ordered by runtime.
	ListPins(ctx context.Context) ([]Pin, error)
	// PinHistory returns a runtime's pins, newest first.
	PinHistory(ctx context.Context, runtime string, limit int) ([]Pin, error)

	// InsertCommands journals commands in one transaction. A new refresh
	// first supersedes PENDING refreshes for the same agent and runtime;
	// their IDs are returned.
	InsertCommands(ctx context.Context, cmds []*Command) (superseded []string, err error)
	// GetCommand returns a command or ErrNotFound.
	GetCommand(ctx context.Context, id string) (*Command, error)
	// ListCommands returns matching commands, newest first unless
	// f.Oldest.
	ListCommands(ctx context.Context, f CommandFilter) ([]*Command, error)
	// UpdateCommands is the one read-modify-write of commands: for each
	// update in order, in one transaction, it reads the command, lets Fn
	// change it and writes it back with Event's event, if any (one
	// command, or a burst of acks and results from a fan-out).
	UpdateCommands(ctx context.Context, updates []CommandUpdate) ([]UpdatedCommand, error)
	// AdvanceCommands is the blind fast path of a fan-out: it moves the
	// commands whose state is in from to state to, with an event each, in
	// one transaction and without reading them first. It returns the
	// commands it changed, as stored.
	AdvanceCommands(ctx context.Context, ids []string, from []controlplanev1.CommandState, to controlplanev1.CommandState, at time.Time, message string) ([]*Command, error)
	// PruneHistory deletes commands that ended before cutoff, with their
	// events, and returns how many it deleted. Unfinished commands stay.
	PruneHistory(ctx context.Context, cutoff time.Time) (int, error)
	// AppendEvent stores one event of a command.
	AppendEvent(ctx context.Context, ev Event) error
	// ListEvents returns a command's events, oldest first.
	ListEvents(ctx context.Context, commandID string) ([]Event, error)

	// PutAgents creates or replaces agent records, in one transaction.
	PutAgents(ctx context.Context, agents []Agent) error
	// ListAgents returns every agent, ordered by tenant and identity.
	ListAgents(ctx context.Context) ([]Agent, error)
	// GetAgents returns the records of those identities that exist,
	// ordered by tenant and identity.
	GetAgents(ctx context.Context, ids []string) ([]Agent, error)
	// TouchAgents moves the last-seen times of existing records, in one
	// transaction, each only forward, and writes nothing else: most
	// heartbeats change nothing but the time, and a whole record is too
	// much to rewrite for that. Identities with no record are ignored.
	TouchAgents(ctx context.Context, seen []AgentSeen) error

	// PutHold, DeleteHold and ListHolds manage tenant holds.
	PutHold(ctx context.Context, h Hold) error
	DeleteHold(ctx context.Context, tenant string) (bool, error)
	ListHolds(ctx context.Context) ([]Hold, error)

	// PutDenial, DeleteDenial and ListDenials manage the deny list.
	PutDenial(ctx context.Context, d Denial) error
	DeleteDenial(ctx context.Context, kind DenialKind, value string) (bool, error)
	ListDenials(ctx context.Context) ([]Denial, error)

	// PutRollout creates a rollout, or replaces its state, message, times
	// and lease. It is not fenced: a running rollout is written with
	// UpdateRollout.
	PutRollout(ctx context.Context, r Rollout) error
	// GetRollout returns a rollout or ErrNotFound.
	GetRollout(ctx context.Context, id string) (Rollout, error)
	// ClaimRollouts makes owner the owner of every RUNNING rollout whose
	// lease ended before now, or that owner already owns and is not in
	// except (the ones it runs: a restarted replica takes its own back at
	// once), with epoch+1 and a lease until until. It returns them as
	// stored, oldest first. Each row is claimed in one conditional write,
	// so of replicas claiming at once exactly one gets a rollout.
	ClaimRollouts(ctx context.Context, owner string, now, until time.Time, except []string) ([]Rollout, error)
	// UpdateRollout writes r's State, Message, UpdatedAt and LeaseUntil
	// if r.Owner at r.Epoch still owns it, else returns ErrLeaseLost.
	// Renewing the lease is an UpdateRollout with a later LeaseUntil.
	UpdateRollout(ctx context.Context, r Rollout) error
	// SetRolloutState is an operator's abort or resume: if the rollout's
	// state is one of from, it writes r's State, Message, UpdatedAt,
	// Owner, LeaseUntil and ResumedAt with a new epoch (so the previous
	// owner's writes fail with ErrLeaseLost) and returns it as stored.
	// Otherwise ErrNotFound, or ErrConflict naming the state it is in.
	SetRolloutState(ctx context.Context, r Rollout, from []RolloutState) (Rollout, error)
	// ListRollouts returns rollouts, newest first; a non-empty state
	// filters.
	ListRollouts(ctx context.Context, runtime string, state RolloutState) ([]Rollout, error)

	// RotateTicketKeys, in one transaction, deletes the TLS session ticket
	// keys created before expired, adds fresh unless a key was created at
	// or after due, and returns the keys, newest first. Replicas rotating
	// at once may each add one; that only adds a key.
	RotateTicketKeys(ctx context.Context, fresh TicketKey, due, expired time.Time) ([]TicketKey, error)

	Close() error
}
