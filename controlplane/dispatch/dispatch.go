// Package dispatch delivers commands to agents with at-least-once delivery
// (docs/design.md §5): every command is journaled before it is sent, waits as
// PENDING while its agent is offline, is sent again on every connect until
// acknowledged, and its progress and result are recorded as they come back.
// The agent dedupes by command ID, so the pair executes exactly once.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/molecule-ai/tenant-agent/controlplane/cluster"
	"github.com/molecule-ai/tenant-agent/controlplane/pubsub"
	"github.com/molecule-ai/tenant-agent/controlplane/session"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

// Update is one thing that happened to a command, for watchers.
type Update struct {
	// Command is set when the command's stored state changed.
	Command *store.Command
	// Progress is set for a progress report.
	Progress *tenantagentv1.CommandProgress
}

// Observer is told about finished commands (metrics).
type Observer interface {
	CommandFinished(c *store.Command)
}

// Config configures a Dispatcher.
type Config struct {
	Store    store.Store
	Sessions *session.Registry
	// Agents is where targets are chosen from (the fleet).
	Agents Agents
	// Cluster tells other replicas what changed and finds agents whose
	// stream is on another replica; the cluster of one by default.
	Cluster  cluster.Cluster
	Logger   *slog.Logger
	Observer Observer
	// CommandTTL is how long any command may wait to start before it
	// expires: the one TTL for admin refreshes, rollouts and reconcile.
	CommandTTL time.Duration
	// ExpireEvery is how often deadlines are checked.
	ExpireEvery time.Duration
	// HistoryRetention is how long finished commands and their events
	// are kept; zero keeps them forever. Pruned hourly.
	HistoryRetention time.Duration
	// RecordRetry is how long agents' acks and results are retried when
	// the store fails before their streams are ended, so that the agents
	// send them again on new streams. Defaults to 10 s.
	RecordRetry time.Duration
	Now         func() time.Time
}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Store == nil || c.Sessions == nil || c.Agents == nil {
		return errors.New("dispatch: Store, Sessions and Agents are required")
	}
	if c.Cluster == nil {
		c.Cluster = cluster.NewLocal(c.Sessions)
	}
	if c.CommandTTL <= 0 {
		c.CommandTTL = 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("component", "dispatch")
	if c.ExpireEvery <= 0 {
		c.ExpireEvery = 5 * time.Second
	}
	if c.RecordRetry <= 0 {
		c.RecordRetry = 10 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Dispatcher owns the command life cycle.
type Dispatcher struct {
	cfg     Config
	updates *pubsub.Hub[string, Update]
	// states carries stored changes only (Update.Command), for watchers
	// that need no progress (a rollout following its commands): a
	// command changes state a handful of times, so its buffer is small
	// where updates' holds a pull's progress (16 KiB a subscription).
	states  *pubsub.Hub[string, Update]
	running sync.Map // command ID -> runningCommand (HandleProgress)
	// reread is the version of each command another replica changed that
	// watchers here were last told of (Reread).
	reread sync.Map // command ID -> commandVersion
	// reports queue acks and results for Run, which records each burst in
	// one transaction, in arrival order.
	reports chan report
}

// report is an ack or a result from an agent.
type report struct {
	from   *session.Session
	ack    string
	result *tenantagentv1.CommandResult
}

// New returns a Dispatcher.
func New(cfg Config) (*Dispatcher, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	return &Dispatcher{cfg: cfg, updates: pubsub.NewHub[string, Update](1024), states: pubsub.NewHub[string, Update](statesBuffer),
		reports: make(chan report, 8192)}, nil
}

// Watch subscribes to a command's updates. Subscribe before reading the
// command from the store, so no update falls between the two.
func (d *Dispatcher) Watch(commandID string) *pubsub.Subscription[Update] {
	return d.updates.Subscribe(commandID)
}

// statesBuffer is how many stored changes of a command a WatchStates
// subscription holds: more than a command's life has (PENDING to its
// end), and a watcher that still falls behind re-attaches and re-reads.
const statesBuffer = 16

// WatchStates subscribes to a command's stored changes, without its
// progress. Subscribe before issuing or reading the command, so no
// change falls between the two.
func (d *Dispatcher) WatchStates(commandID string) *pubsub.Subscription[Update] {
	return d.states.Subscribe(commandID)
}

// watched reports whether a command has watchers here.
func (d *Dispatcher) watched(id string) bool { return d.updates.Watched(id) || d.states.Watched(id) }

// publish tells every watcher of c's command of its stored change.
func (d *Dispatcher) publish(c *store.Command) {
	d.updates.Publish(c.ID, Update{Command: c})
	d.states.Publish(c.ID, Update{Command: c})
}

// Issue journals cmds in one transaction and sends each to its agent if
// it is connected. Commands it superseded are reported to their watchers.
func (d *Dispatcher) Issue(ctx context.Context, cmds []*store.Command) error {
	now := d.cfg.Now()
	for _, c := range cmds {
		if c.ID == "" {
			c.ID = NewCommandID()
		}
		c.State = controlplanev1.CommandState_COMMAND_STATE_PENDING
		c.CreatedAt, c.UpdatedAt = now, now
	}
	superseded, err := d.cfg.Store.InsertCommands(ctx, cmds)
	if err != nil {
		return fmt.Errorf("journal commands: %w", err)
	}
	for _, id := range superseded {
		d.publishStored(ctx, id)
	}
	var sent []string
	logged := d.cfg.Logger.Enabled(ctx, slog.LevelInfo) // not building a fan-out's log lines for nothing
	for _, c := range cmds {
		if logged {
			d.cfg.Logger.Info("command journaled", "command", c.ID, "agent", c.Agent, "kind", c.Kind, "runtime", c.Runtime, "digest", c.Digest, "requested_by", c.RequestedBy)
		}
		d.changed(c)
		if s := d.cfg.Sessions.Get(c.Agent); s != nil {
			if ok, err := s.SendCommand(c.ID, ControlMessage(c)); err != nil {
				d.cfg.Logger.Warn("command not sent; it stays pending", "command", c.ID, "agent", c.Agent, "error", err)
				continue
			} else if ok {
				sent = append(sent, c.ID)
			}
		}
	}
	// One transaction records the whole fan-out as sent.
	d.markSent(ctx, sent, "sent on the agent's stream")
	return nil
}

// markSent records commands as SENT (those still PENDING: an ack may have
// won the race) and tells watchers.
func (d *Dispatcher) markSent(ctx context.Context, ids []string, msg string) {
	if len(ids) == 0 {
		return
	}
	pending := []controlplanev1.CommandState{controlplanev1.CommandState_COMMAND_STATE_PENDING}
	changed, err := d.cfg.Store.AdvanceCommands(ctx, ids, pending, controlplanev1.CommandState_COMMAND_STATE_SENT, d.cfg.Now(), msg)
	if err != nil {
		d.cfg.Logger.Error("cannot record commands as sent", "commands", len(ids), "error", err)
		return
	}
	for _, c := range changed {
		d.changed(c)
	}
}

// ControlMessage is the message that carries c to its agent.
func ControlMessage(c *store.Command) *tenantagentv1.ControlMessage {
	deadline := timestamppb.New(c.Deadline)
	if c.Kind == controlplanev1.CommandKind_COMMAND_KIND_PREFETCH {
		return &tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Prefetch{Prefetch: &tenantagentv1.PrefetchRuntimeImage{
			CommandId: c.ID, Runtime: c.Runtime, ImageRepository: c.Repository, ImageDigest: c.Digest, Deadline: deadline,
		}}}
	}
	return &tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Refresh{Refresh: &tenantagentv1.RefreshRuntimeImage{
		CommandId: c.ID, Runtime: c.Runtime, ImageRepository: c.Repository, ImageDigest: c.Digest, Options: c.Options, Deadline: deadline,
	}}}
}

// advance moves a command forward to state (never backward, never out of
// a final state) and tells watchers.
func (d *Dispatcher) advance(ctx context.Context, id string, state controlplanev1.CommandState, msg string) {
	now := d.cfg.Now()
	c, changed, err := d.update(ctx, id, func(c *store.Command) bool {
		if store.StateOrder(state) <= store.StateOrder(c.State) {
			return false
		}
		c.State, c.UpdatedAt = state, now
		return true
	}, func(c *store.Command) *store.Event {
		return &store.Event{CommandID: id, At: now, State: state, Message: msg}
	})
	if err != nil {
		d.cfg.Logger.Error("cannot record command state", "command", id, "state", state, "error", err)
		return
	}
	if changed {
		d.changed(c)
	}
}

// changed tells watchers here and on other replicas that c changed in
// the store.
func (d *Dispatcher) changed(c *store.Command) {
	d.publish(c)
	d.cfg.Cluster.CommandsChanged(c.ID)
}

// update is UpdateCommands for one command: ErrNotFound if there is none.
func (d *Dispatcher) update(ctx context.Context, id string, fn func(*store.Command) bool, ev func(*store.Command) *store.Event) (*store.Command, bool, error) {
	out, err := d.cfg.Store.UpdateCommands(ctx, []store.CommandUpdate{{ID: id, Fn: fn, Event: ev}})
	if err != nil {
		return nil, false, err
	}
	if out[0].Command == nil {
		return nil, false, fmt.Errorf("command %q: %w", id, store.ErrNotFound)
	}
	return out[0].Command, out[0].Changed, nil
}

func (d *Dispatcher) publishStored(ctx context.Context, id string) {
	c, err := d.cfg.Store.GetCommand(ctx, id)
	if err != nil {
		d.cfg.Logger.Error("cannot read command", "command", id, "error", err)
		return
	}
	d.changed(c)
	if store.Terminal(c.State) && d.cfg.Observer != nil {
		d.cfg.Observer.CommandFinished(c)
	}
}

// Deliver runs when an agent's Hello arrives: it sends every command the
// agent should hold but does not say it holds, and fails RUNNING commands
// the agent no longer knows (its state was lost).
func (d *Dispatcher) Deliver(ctx context.Context, s *session.Session, hello *tenantagentv1.Hello) error {
	active, err := d.cfg.Store.ListCommands(ctx, store.CommandFilter{Agent: s.Identity.ID, States: store.ActiveStates, Oldest: true})
	if err != nil {
		return err
	}
	held := func(id string) bool {
		return slices.Contains(hello.GetRunningCommandIds(), id) || slices.Contains(hello.GetResultCommandIds(), id)
	}
	var sent []string
	for _, c := range active {
		switch {
		case held(c.ID):
			// Its progress or result follows on this stream.
		case c.State == controlplanev1.CommandState_COMMAND_STATE_RUNNING:
			d.finish(ctx, c.ID, controlplanev1.CommandState_COMMAND_STATE_FAILED, nil,
				"the agent reconnected without this command: its journal was lost while the command ran")
		default:
			if ok, err := s.SendCommand(c.ID, ControlMessage(c)); err != nil {
				d.cfg.Logger.Warn("command not sent; it stays pending", "command", c.ID, "agent", c.Agent, "error", err)
				break
			} else if ok {
				sent = append(sent, c.ID)
			}
		}
	}
	d.markSent(ctx, sent, "sent to "+s.Identity.ID+" on connect")
	return nil
}

// HandleAck records that the agent journaled a command.
func (d *Dispatcher) HandleAck(ctx context.Context, from *session.Session, ack *tenantagentv1.CommandAck) {
	d.enqueue(ctx, report{from: from, ack: ack.GetCommandId()})
}

// HandleResult stores a command's result once and confirms it to the
// agent with ResultReceived. A repeated result is confirmed again but not
// stored; a result for another agent's command is refused.
func (d *Dispatcher) HandleResult(ctx context.Context, from *session.Session, r *tenantagentv1.CommandResult) {
	if stateOf(r.GetOutcome()) == controlplanev1.CommandState_COMMAND_STATE_UNSPECIFIED {
		d.cfg.Logger.Warn("result with no outcome refused", "command", r.GetCommandId(), "agent", from.Identity.ID)
		return
	}
	d.enqueue(ctx, report{from: from, result: r})
}

// enqueue hands a report to Run. Acks and results come in bursts (a
// fan-out to thousands of agents); Run records each burst in one
// transaction. Without Run, or with its queue full, the report is
// recorded at once.
func (d *Dispatcher) enqueue(ctx context.Context, r report) {
	select {
	case d.reports <- r:
	default:
		d.apply(ctx, []report{r})
	}
}

// apply records a burst of reports, in order, in one transaction, then
// tells watchers and confirms results to their agents.
func (d *Dispatcher) apply(ctx context.Context, reports []report) {
	now := d.cfg.Now()
	updates := make([]store.CommandUpdate, len(reports))
	for i, r := range reports {
		agent := r.from.Identity.ID
		if r.result == nil {
			updates[i] = store.CommandUpdate{ID: r.ack,
				Fn: func(c *store.Command) bool {
					if c.Agent != agent || store.StateOrder(c.State) >= store.StateOrder(controlplanev1.CommandState_COMMAND_STATE_ACKED) {
						return false
					}
					c.State, c.UpdatedAt = controlplanev1.CommandState_COMMAND_STATE_ACKED, now
					return true
				},
				Event: func(c *store.Command) *store.Event {
					return &store.Event{CommandID: c.ID, At: now, State: c.State, Message: "acknowledged by the agent"}
				}}
			continue
		}
		res := r.result
		updates[i] = store.CommandUpdate{ID: res.GetCommandId(),
			// A result may land on a command the control plane had
			// already expired or canceled: the agent's word is what
			// happened.
			Fn: func(c *store.Command) bool {
				if c.Agent != agent || c.Result != nil {
					return false
				}
				c.State, c.Result, c.Error, c.UpdatedAt = stateOf(res.GetOutcome()), res, res.GetError(), now
				return true
			},
			Event: func(c *store.Command) *store.Event {
				return &store.Event{CommandID: c.ID, At: now, State: c.State, Message: finishMessage(c.State, c.Error)}
			}}
	}
	out, err := d.record(ctx, updates)
	if err != nil {
		// Unconfirmed, an agent keeps its results and sends them again
		// on its next stream: end these streams so that comes soon.
		d.cfg.Logger.Error("cannot record agent reports; their streams are ended so the agents send them again", "reports", len(reports), "error", err)
		for _, r := range reports {
			r.from.Close(ErrNotRecorded)
		}
		return
	}
	for i, r := range reports {
		c, id := out[i].Command, updates[i].ID
		what := "ack"
		if r.result != nil {
			what = "result"
		}
		if c != nil && c.Agent == r.from.Identity.ID {
			r.from.Forget(id) // recorded past SENT: no delivery sends it again
		}
		switch {
		case c == nil:
			d.cfg.Logger.Warn("agent "+what+" for an unknown command ignored", "command", id, "agent", r.from.Identity.ID)
			if r.result != nil {
				// Confirm it anyway, so an agent holding a result for a
				// command this control plane never issued stops resending.
				d.confirm(r.from, id)
			}
		case c.Agent != r.from.Identity.ID:
			d.cfg.Logger.Warn("agent "+what+" for another agent's command refused", "command", id, "agent", r.from.Identity.ID, "owner", c.Agent)
		case out[i].Changed:
			d.changed(c)
			if r.result != nil {
				d.running.Delete(id)
				d.cfg.Logger.Info("command finished", "command", id, "agent", c.Agent, "state", c.State, "error", c.Error)
				if d.cfg.Observer != nil {
					d.cfg.Observer.CommandFinished(c)
				}
				d.confirm(r.from, id)
			}
		case r.result != nil:
			d.cfg.Logger.Info("duplicate result ignored", "command", id, "agent", r.from.Identity.ID)
			d.confirm(r.from, id)
		}
	}
}

// record stores a burst of reports, trying again for up to RecordRetry:
// a database restart or failover takes a second or a few, and ending
// every reporting agent's stream over it would turn a short outage into
// a reconnect storm. Meanwhile the reports queue up behind this burst.
func (d *Dispatcher) record(ctx context.Context, updates []store.CommandUpdate) ([]store.UpdatedCommand, error) {
	const firstPause = 100 * time.Millisecond
	giveUp := time.Now().Add(d.cfg.RecordRetry)
	pause := firstPause
	for {
		out, err := d.cfg.Store.UpdateCommands(ctx, updates)
		if err == nil || ctx.Err() != nil || time.Now().Add(pause).After(giveUp) {
			return out, err
		}
		// One warning a burst; its retries only at debug, since during an
		// outage every reporting stream may be retrying at once.
		level := slog.LevelDebug
		if pause == firstPause {
			level = slog.LevelWarn
		}
		d.cfg.Logger.Log(ctx, level, "cannot record agent reports; trying again", "reports", len(updates), "retry_in", pause, "error", err)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(pause):
		}
		pause = min(2*pause, 2*time.Second)
	}
}

// ackFirst records the ack of a command its agent already reports on: the
// agent acks before it runs a command, but the ack may still sit in Run's
// queue, and the history should read in order.
func (d *Dispatcher) ackFirst(ctx context.Context, from *session.Session, c *store.Command) {
	if c.State == controlplanev1.CommandState_COMMAND_STATE_PENDING || c.State == controlplanev1.CommandState_COMMAND_STATE_SENT {
		d.apply(ctx, []report{{from: from, ack: c.ID}})
	}
}

// Run records agent reports in bursts and expires overdue commands, until
// ctx ends.
func (d *Dispatcher) Run(ctx context.Context) {
	expire := time.NewTicker(d.cfg.ExpireEvery)
	defer expire.Stop()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	d.pruneHistory(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-expire.C:
			d.ExpireNow(ctx)
			d.forgetQuietCommands()
		case <-prune.C:
			d.pruneHistory(ctx)
		case first := <-d.reports:
			batch := []report{first}
		drain:
			for len(batch) < 4096 {
				select {
				case r := <-d.reports:
					batch = append(batch, r)
				default:
					break drain
				}
			}
			d.apply(ctx, batch)
		}
	}
}

// HandleProgress records a command as RUNNING, stores a new phase as an
// event, and passes every report to watchers. The store is read for the
// first report of a command, for each new phase, and then at most every
// progressRecheck: a pull reports every 250 ms, and reading the command
// for each report made a promote to N pulling agents 4N reads a second.
// A command ended meanwhile elsewhere (another replica failed it when
// the agent reconnected there) has its byte counts passed on for at most
// that long; no event is stored after its end.
func (d *Dispatcher) HandleProgress(ctx context.Context, from *session.Session, p *tenantagentv1.CommandProgress) {
	id, now := p.GetCommandId(), d.cfg.Now()
	step := phase{p.GetPhase(), p.GetContainer()}
	known, ok := d.running.Load(id)
	rc, _ := known.(runningCommand)
	newStep := !ok || rc.step != step
	if newStep || rc.agent != from.Identity.ID || now.Sub(rc.checked) >= progressRecheck {
		c, err := d.owned(ctx, from.Identity, id, "progress")
		if err != nil {
			return
		}
		if store.Terminal(c.State) {
			d.running.Delete(id)
			return
		}
		if c.State != controlplanev1.CommandState_COMMAND_STATE_RUNNING {
			d.ackFirst(ctx, from, c)
			d.advance(ctx, c.ID, controlplanev1.CommandState_COMMAND_STATE_RUNNING, "running")
		}
		rc = runningCommand{agent: c.Agent, checked: now}
	}
	rc.step = step
	d.running.Store(id, rc)
	if newStep {
		if err := d.cfg.Store.AppendEvent(ctx, store.Event{CommandID: id, At: now, State: controlplanev1.CommandState_COMMAND_STATE_RUNNING, Progress: p, Message: p.GetMessage()}); err != nil {
			d.cfg.Logger.Error("cannot store progress", "command", id, "error", err)
		}
	}
	d.updates.Publish(id, Update{Progress: p})
	d.cfg.Cluster.Progress(p)
}

// progressRecheck is how long HandleProgress trusts what it last read of
// a running command (see there).
const progressRecheck = 5 * time.Second

// runningCommand is what HandleProgress last read of a command it
// recorded RUNNING: whose it is and when it was read, and the last step
// stored. It goes with the command's result, or when no report came for
// forgetRunningAfter.
type runningCommand struct {
	agent   string
	step    phase
	checked time.Time
}

// forgetRunningAfter drops what HandleProgress knows of a command whose
// reports stopped without a result here (its agent moved to another
// replica, or it was canceled): one read brings it back.
const forgetRunningAfter = 10 * time.Minute

// forgetQuietCommands drops running commands no report rechecked within
// forgetRunningAfter.
func (d *Dispatcher) forgetQuietCommands() {
	cutoff := d.cfg.Now().Add(-forgetRunningAfter)
	d.running.Range(func(id, v any) bool {
		if v.(runningCommand).checked.Before(cutoff) {
			d.running.CompareAndDelete(id, v)
		}
		return true
	})
}

// phase is a step of a command; a new one is stored as an event, while
// byte counts within a step only go to watchers.
type phase struct {
	phase     tenantagentv1.CommandPhase
	container string
}

func (d *Dispatcher) confirm(s *session.Session, id string) {
	_ = s.Send(&tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_ResultReceived{ResultReceived: &tenantagentv1.ResultReceived{CommandId: id}}})
}

// finish records a final state (and result), reporting whether it was
// stored. A result may still land on a command the control plane had
// already expired or canceled: the agent's word is what happened.
func (d *Dispatcher) finish(ctx context.Context, id string, state controlplanev1.CommandState, r *tenantagentv1.CommandResult, msg string) bool {
	now := d.cfg.Now()
	c, changed, err := d.update(ctx, id, func(c *store.Command) bool {
		if c.Result != nil || (store.Terminal(c.State) && r == nil) {
			return false
		}
		c.State, c.Result, c.Error, c.UpdatedAt = state, r, msg, now
		return true
	}, func(c *store.Command) *store.Event {
		return &store.Event{CommandID: id, At: now, State: state, Message: finishMessage(state, msg)}
	})
	if err != nil {
		d.cfg.Logger.Error("cannot record command result", "command", id, "error", err)
		return false
	}
	if changed {
		d.running.Delete(id)
		d.cfg.Logger.Info("command finished", "command", id, "agent", c.Agent, "state", state, "error", msg)
		d.changed(c)
		if d.cfg.Observer != nil {
			d.cfg.Observer.CommandFinished(c)
		}
	}
	return changed
}

func finishMessage(state controlplanev1.CommandState, msg string) string {
	s := strings.ToLower(strings.TrimPrefix(state.String(), "COMMAND_STATE_"))
	if msg == "" {
		return s
	}
	return s + ": " + msg
}

func stateOf(o tenantagentv1.CommandOutcome) controlplanev1.CommandState {
	switch o {
	case tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED:
		return controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED
	case tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED:
		return controlplanev1.CommandState_COMMAND_STATE_FAILED
	case tenantagentv1.CommandOutcome_COMMAND_OUTCOME_ROLLED_BACK:
		return controlplanev1.CommandState_COMMAND_STATE_ROLLED_BACK
	case tenantagentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED:
		return controlplanev1.CommandState_COMMAND_STATE_CANCELED
	case tenantagentv1.CommandOutcome_COMMAND_OUTCOME_PARTIAL:
		return controlplanev1.CommandState_COMMAND_STATE_PARTIAL
	}
	return controlplanev1.CommandState_COMMAND_STATE_UNSPECIFIED
}

var errNotOwner = errors.New("the command belongs to another agent")

// ErrNotRecorded ends a stream whose acks or results the store did not
// take (the database is unreachable): the agent reconnects and sends
// them again.
var ErrNotRecorded = errors.New("the control plane could not record this agent's reports; reconnect and send them again")

// owned returns the command if it exists and belongs to the agent; it logs
// and refuses anything else.
func (d *Dispatcher) owned(ctx context.Context, from identity.Identity, id, what string) (*store.Command, error) {
	c, err := d.cfg.Store.GetCommand(ctx, id)
	if err != nil {
		d.cfg.Logger.Warn("agent message for an unknown command ignored", "what", what, "command", id, "agent", from.ID, "error", err)
		return nil, err
	}
	if c.Agent != from.ID {
		d.cfg.Logger.Warn("agent message for another agent's command refused", "what", what, "command", id, "agent", from.ID, "owner", c.Agent)
		return nil, errNotOwner
	}
	return c, nil
}

// Cancel asks to stop a command: one not yet sent is canceled at once; one
// the agent holds is canceled on the agent, which reports the outcome.
func (d *Dispatcher) Cancel(ctx context.Context, id, reason string) error {
	c, err := d.cfg.Store.GetCommand(ctx, id)
	if err != nil {
		return err
	}
	if c.State == controlplanev1.CommandState_COMMAND_STATE_PENDING {
		d.finish(ctx, id, controlplanev1.CommandState_COMMAND_STATE_CANCELED, nil, reason)
		return nil
	}
	if store.Terminal(c.State) {
		return nil
	}
	if s := d.cfg.Sessions.Get(c.Agent); s != nil {
		return s.Send(cancelMessage(id, reason))
	}
	d.cfg.Cluster.Cancel(c.Agent, id)
	return nil
}

func (d *Dispatcher) pruneHistory(ctx context.Context) {
	if d.cfg.HistoryRetention <= 0 {
		return
	}
	n, err := d.cfg.Store.PruneHistory(ctx, d.cfg.Now().Add(-d.cfg.HistoryRetention))
	if err != nil {
		d.cfg.Logger.Error("cannot prune command history", "error", err)
		return
	}
	if n > 0 {
		d.cfg.Logger.Info("command history pruned", "commands", n, "older_than", d.cfg.HistoryRetention)
	}
}

// ExpireNow runs one expiry pass.
func (d *Dispatcher) ExpireNow(ctx context.Context) {
	notStarted := []controlplanev1.CommandState{
		controlplanev1.CommandState_COMMAND_STATE_PENDING,
		controlplanev1.CommandState_COMMAND_STATE_SENT,
		controlplanev1.CommandState_COMMAND_STATE_ACKED,
	}
	expired, err := d.cfg.Store.ListCommands(ctx, store.CommandFilter{States: notStarted, DeadlineBefore: d.cfg.Now()})
	if err != nil {
		d.cfg.Logger.Error("cannot list expired commands", "error", err)
		return
	}
	for _, c := range expired {
		msg := "deadline " + c.Deadline.UTC().Format(time.RFC3339) + " passed before the command started"
		if d.finish(ctx, c.ID, controlplanev1.CommandState_COMMAND_STATE_EXPIRED, nil, msg) {
			if c.State == controlplanev1.CommandState_COMMAND_STATE_PENDING {
				continue // never sent: the agent does not hold it
			}
			if s := d.cfg.Sessions.Get(c.Agent); s != nil {
				_ = s.Send(cancelMessage(c.ID, "expired"))
			} else {
				d.cfg.Cluster.Cancel(c.Agent, c.ID)
			}
		}
	}
}
