// Package runner accepts commands from the channel, journals them before
// acknowledging, and runs them independently of the stream: one command
// per runtime at a time, a newer refresh superseding an older one not yet
// started. Results wait in the journal's outbox until the control plane
// confirms them, so they survive a dropped stream and a restart.
package runner

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/executor"
	"github.com/molecule-ai/tenant-agent/agent/failpoint"
	"github.com/molecule-ai/tenant-agent/agent/journal"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// Executor runs commands; *executor.Executor is the real one.
type Executor interface {
	Refresh(ctx context.Context, cmd *tenantagentv1.RefreshRuntimeImage, hooks executor.Hooks) (*tenantagentv1.CommandResult, error)
	Prefetch(ctx context.Context, cmd *tenantagentv1.PrefetchRuntimeImage, hooks executor.Hooks) *tenantagentv1.CommandResult
	Recover(ctx context.Context, id, ref string, states []docker.RecreateState) *tenantagentv1.CommandResult
}

var _ Executor = (*executor.Executor)(nil)

// Config configures a Runner.
type Config struct {
	Journal  *journal.Journal
	Executor Executor
	Logger   *slog.Logger
}

// Runner runs commands.
type Runner struct {
	cfg Config
	ctx context.Context

	mu      sync.Mutex
	queues  map[string][]string // runtime -> queued command IDs
	busy    map[string]bool     // runtime -> a worker runs
	cancels map[string]context.CancelCauseFunc
	send    func(*tenantagentv1.AgentMessage) bool
	wg      sync.WaitGroup

	// seqMu orders a command's progress numbers (its containers report
	// in parallel); the last one is journaled (nextSeq).
	seqMu sync.Mutex
	seq   map[string]uint64
}

// New returns a Runner; Start begins running commands.
func New(cfg Config) *Runner {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Logger = cfg.Logger.With("component", "runner")
	return &Runner{cfg: cfg, queues: map[string][]string{}, busy: map[string]bool{}, cancels: map[string]context.CancelCauseFunc{}, seq: map[string]uint64{}}
}

// Start recovers what a previous process left and starts the workers; they
// run until ctx ends. A recreate found half done is finished or rolled
// back; a command interrupted before any container was touched runs again.
func (r *Runner) Start(ctx context.Context) {
	r.ctx = ctx
	for _, rec := range r.cfg.Journal.List() {
		if rec.State == journal.Finished {
			continue
		}
		msg, err := rec.Message()
		if err != nil {
			r.finish(rec.ID, &tenantagentv1.CommandResult{CommandId: rec.ID, Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED, Error: "unreadable journal record: " + err.Error()})
			continue
		}
		if len(rec.Recreates) > 0 {
			var states []docker.RecreateState
			for _, st := range rec.Recreates {
				states = append(states, st)
			}
			ref := msg.GetRefresh().GetImageRepository() + "@" + msg.GetRefresh().GetImageDigest()
			r.cfg.Logger.Warn("finishing a command interrupted during a recreate", "command", rec.ID)
			r.finish(rec.ID, r.cfg.Executor.Recover(ctx, rec.ID, ref, states))
			continue
		}
		r.cfg.Logger.Info("resuming a command interrupted before it touched a container", "command", rec.ID)
		r.enqueue(runtimeOf(msg), rec.ID)
	}
}

// Wait waits for running commands after the context ended.
func (r *Runner) Wait() { r.wg.Wait() }

// SetSender connects the runner to a stream (nil when there is none). The
// function must not block; it reports whether the message was queued.
func (r *Runner) SetSender(send func(*tenantagentv1.AgentMessage) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.send = send
}

func (r *Runner) emit(m *tenantagentv1.AgentMessage) {
	r.mu.Lock()
	send := r.send
	r.mu.Unlock()
	if send != nil {
		send(m)
	}
}

// Held lists the commands the agent holds: accepted but unfinished, and
// finished with a result not yet confirmed. Hello carries both.
func (r *Runner) Held() (running, results []string) {
	for _, rec := range r.cfg.Journal.List() {
		switch {
		case rec.State != journal.Finished:
			running = append(running, rec.ID)
		case !rec.Confirmed:
			results = append(results, rec.ID)
		}
	}
	return running, results
}

// Outbox returns the results the control plane has not confirmed.
func (r *Runner) Outbox() []*tenantagentv1.CommandResult {
	var out []*tenantagentv1.CommandResult
	for _, rec := range r.cfg.Journal.List() {
		if rec.State == journal.Finished && !rec.Confirmed {
			if res, err := rec.ResultMessage(); err == nil && res != nil {
				boundResult(res) // journaled by an agent that did not bound it
				out = append(out, res)
			}
		}
	}
	return out
}

// Handle takes one message from the control plane. A message whose
// command ID is out of bounds is dropped (it cannot be journaled, nor
// answered in a way the control plane would store).
func (r *Runner) Handle(m *tenantagentv1.ControlMessage) {
	if m.GetRefresh() == nil && m.GetPrefetch() == nil && m.GetCancel() == nil && m.GetResultReceived() == nil {
		return // not a command: nothing for the runner
	}
	id := commandID(m)
	if err := checkCommandID(id); err != nil {
		r.cfg.Logger.Warn("message from the control plane ignored", "error", err)
		return
	}
	switch {
	case m.GetRefresh() != nil:
		c := m.GetRefresh()
		r.accept(m, id, c.GetRuntime(), c.GetDeadline(), checkTarget(c.GetRuntime(), c.GetImageRepository(), c.GetImageDigest()))
	case m.GetPrefetch() != nil:
		c := m.GetPrefetch()
		r.accept(m, id, c.GetRuntime(), c.GetDeadline(), checkTarget(c.GetRuntime(), c.GetImageRepository(), c.GetImageDigest()))
	case m.GetCancel() != nil:
		r.cancel(id, limits.Truncate(m.GetCancel().GetReason(), limits.Message))
	case m.GetResultReceived() != nil:
		if _, err := r.cfg.Journal.Update(id, func(rec *journal.Record) { rec.Confirmed = true }); err != nil {
			r.cfg.Logger.Warn("confirmation for a command not in the journal", "command", id)
		}
	}
}

func commandID(m *tenantagentv1.ControlMessage) string {
	switch {
	case m.GetRefresh() != nil:
		return m.GetRefresh().GetCommandId()
	case m.GetPrefetch() != nil:
		return m.GetPrefetch().GetCommandId()
	case m.GetCancel() != nil:
		return m.GetCancel().GetCommandId()
	}
	return m.GetResultReceived().GetCommandId()
}

// stripped is m with only its command ID: what the journal keeps of a
// command refused for its size, so the refusal is still deduplicated.
func stripped(m *tenantagentv1.ControlMessage, id string) *tenantagentv1.ControlMessage {
	if m.GetRefresh() != nil {
		return &tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Refresh{Refresh: &tenantagentv1.RefreshRuntimeImage{CommandId: id}}}
	}
	return &tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Prefetch{Prefetch: &tenantagentv1.PrefetchRuntimeImage{CommandId: id}}}
}

func ack(id string, duplicate bool) *tenantagentv1.AgentMessage {
	return &tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Ack{Ack: &tenantagentv1.CommandAck{CommandId: id, Duplicate: duplicate}}}
}

func resultMessage(res *tenantagentv1.CommandResult) *tenantagentv1.AgentMessage {
	return &tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Result{Result: res}}
}

// accept journals a command and then acknowledges it; a command it already
// holds is acknowledged again (and its result resent), never run twice.
// A command refused (non-nil refusal) is journaled without its oversized
// fields and finished at once with the refusal.
func (r *Runner) accept(m *tenantagentv1.ControlMessage, id, runtime string, deadline *timestamppb.Timestamp, refusal error) {
	stored := m
	if refusal != nil {
		stored = stripped(m, id)
	}
	err := r.cfg.Journal.Add(&journal.Record{ID: id, AcceptedAt: time.Now(), State: journal.Queued, Command: journal.Encode(stored)})
	if errors.Is(err, journal.ErrExists) {
		r.emit(ack(id, true))
		if rec, ok := r.cfg.Journal.Get(id); ok && rec.State == journal.Finished {
			if res, err := rec.ResultMessage(); err == nil && res != nil {
				r.emit(resultMessage(res))
			}
		}
		return
	}
	if err != nil {
		// Not journaled, so not acknowledged: the control plane resends it.
		r.cfg.Logger.Error("cannot journal command; not acknowledged", "command", id, "error", err)
		return
	}
	r.emit(ack(id, false))
	if refusal != nil {
		r.finish(id, &tenantagentv1.CommandResult{CommandId: id, Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED, Error: refusal.Error()})
		return
	}
	r.cfg.Logger.Info("command accepted", "command", id, "runtime", runtime)
	if deadline != nil && deadline.IsValid() && time.Now().After(deadline.AsTime()) {
		r.finish(id, &tenantagentv1.CommandResult{CommandId: id, Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED, Error: "deadline passed before the command started"})
		return
	}
	if m.GetRefresh() != nil {
		r.supersede(runtime, id)
	}
	r.enqueue(runtime, id)
}

// supersede cancels queued refreshes of runtime that a newer one replaces.
func (r *Runner) supersede(runtime, newer string) {
	r.mu.Lock()
	var keep, dropped []string
	for _, id := range r.queues[runtime] {
		if isRefresh(r.cfg.Journal, id) {
			dropped = append(dropped, id)
		} else {
			keep = append(keep, id)
		}
	}
	r.queues[runtime] = keep
	r.mu.Unlock()
	for _, id := range dropped {
		r.finish(id, &tenantagentv1.CommandResult{CommandId: id, Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED, Error: "superseded by " + newer + " before it started"})
	}
}

func (r *Runner) enqueue(runtime, id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queues[runtime] = append(r.queues[runtime], id)
	if r.busy[runtime] {
		return
	}
	r.busy[runtime] = true
	r.wg.Add(1)
	go r.work(runtime)
}

// work runs a runtime's commands one at a time.
func (r *Runner) work(runtime string) {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		if len(r.queues[runtime]) == 0 || r.ctx.Err() != nil {
			r.busy[runtime] = false
			r.mu.Unlock()
			return
		}
		id := r.queues[runtime][0]
		r.queues[runtime] = r.queues[runtime][1:]
		ctx, cancel := context.WithCancelCause(r.ctx)
		r.cancels[id] = cancel
		r.mu.Unlock()

		crashed := r.run(ctx, id)
		cancel(nil)
		r.mu.Lock()
		delete(r.cancels, id)
		r.mu.Unlock()
		if crashed {
			return // as a dead process would: nothing more runs
		}
	}
}

// run runs one command to its result. It reports crashed when a
// simulated crash (docker.ErrCrash) stopped it: then nothing is finished,
// as a dead process would leave it.
func (r *Runner) run(ctx context.Context, id string) (crashed bool) {
	msg, ok := r.start(id)
	if !ok {
		return false
	}
	hooks, steps := r.hooks(id, msg)
	res, err := r.execute(ctx, msg, hooks)
	if errors.Is(err, docker.ErrCrash) {
		return true
	}
	if err != nil {
		res = &tenantagentv1.CommandResult{Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED, Error: err.Error()}
	}
	steps.done(res)
	if cause := context.Cause(ctx); cause != nil && res.GetOutcome() == tenantagentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED {
		res.Error = cause.Error()
	}
	r.finish(id, res)
	return false
}

// start marks the command running and decodes it; a command that cannot
// be decoded is finished as failed.
func (r *Runner) start(id string) (*tenantagentv1.ControlMessage, bool) {
	rec, err := r.cfg.Journal.Update(id, func(rec *journal.Record) { rec.State = journal.Running })
	if err != nil {
		r.cfg.Logger.Error("cannot start command", "command", id, "error", err)
		return nil, false
	}
	msg, err := rec.Message()
	if err != nil {
		r.finish(id, &tenantagentv1.CommandResult{CommandId: id, Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED, Error: err.Error()})
		return nil, false
	}
	return msg, true
}

// execute hands the command to the executor.
func (r *Runner) execute(ctx context.Context, msg *tenantagentv1.ControlMessage, hooks executor.Hooks) (*tenantagentv1.CommandResult, error) {
	if msg.GetRefresh() != nil {
		return r.cfg.Executor.Refresh(ctx, msg.GetRefresh(), hooks)
	}
	return r.cfg.Executor.Prefetch(ctx, msg.GetPrefetch(), hooks), nil
}

// hooks connect a command's execution to the journal, the failpoint seam
// and the stream; the step log turns its progress into log lines.
func (r *Runner) hooks(id string, msg *tenantagentv1.ControlMessage) (executor.Hooks, *stepLog) {
	steps := newStepLog(r.cfg.Logger.With("command", id, "runtime", runtimeOf(msg)))
	return executor.Hooks{
		Step: func(st docker.RecreateState) error { return r.journalStep(id, st) },
		Progress: func(p *tenantagentv1.CommandProgress) {
			p.CommandId, p.Sequence, p.Time = id, r.nextSeq(id), timestamppb.Now()
			boundProgress(p)
			steps.progress(p)
			r.emit(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Progress{Progress: p}})
		},
	}, steps
}

// journalStep journals a container's recreate step before it is taken;
// at a crash point (agent/failpoint, tests only) it fails with
// docker.ErrCrash.
func (r *Runner) journalStep(id string, st docker.RecreateState) error {
	if _, err := r.cfg.Journal.Update(id, func(rec *journal.Record) {
		if rec.Recreates == nil {
			rec.Recreates = map[string]docker.RecreateState{}
		}
		rec.Recreates[st.Name] = st
	}); err != nil {
		return err
	}
	if crash, ok := failpoint.Crash(st.Step); ok {
		r.cfg.Logger.Warn("crash point reached", "command", id, "container", st.Name, "step", st.Step)
		crash()
		return docker.ErrCrash
	}
	return nil
}

// nextSeq is the command's next progress sequence number. The last one is
// journaled, so the sequence continues after a restart; if the journal
// cannot be written the number is used all the same (progress is best
// effort).
func (r *Runner) nextSeq(id string) uint64 {
	r.seqMu.Lock()
	defer r.seqMu.Unlock()
	seq := r.seq[id] + 1
	if rec, err := r.cfg.Journal.Update(id, func(rec *journal.Record) { rec.ProgressSeq = max(rec.ProgressSeq+1, seq) }); err == nil {
		seq = rec.ProgressSeq
	}
	r.seq[id] = seq
	return seq
}

// finish stores a result in the outbox and sends it.
func (r *Runner) finish(id string, res *tenantagentv1.CommandResult) {
	res.CommandId = id
	boundResult(res)
	if res.FinishedAt == nil {
		res.FinishedAt = timestamppb.Now()
	}
	if _, err := r.cfg.Journal.Update(id, func(rec *journal.Record) {
		rec.State, rec.Result = journal.Finished, journal.Encode(res)
	}); err != nil {
		r.cfg.Logger.Error("cannot store result", "command", id, "error", err)
		return
	}
	r.seqMu.Lock()
	delete(r.seq, id)
	r.seqMu.Unlock()
	args := []any{"command", id, "outcome", res.GetOutcome()}
	if res.GetError() != "" {
		args = append(args, "error", res.GetError())
	}
	if res.GetStartedAt() != nil {
		args = append(args, "in", res.GetFinishedAt().AsTime().Sub(res.GetStartedAt().AsTime()))
	}
	if s := res.GetSignature(); s != nil {
		args = append(args, "signature_verified", s.GetVerified(), "signature_cached", s.GetCached(), "signature_rule", s.GetRule())
	}
	r.cfg.Logger.Info("command done", args...)
	r.emit(resultMessage(res))
}

// cancel cancels a queued command at once, or a running one through its
// context: a pull stops, a recreate in progress finishes or rolls back its
// container and no further container is touched.
func (r *Runner) cancel(id, reason string) {
	if reason == "" {
		reason = "canceled by the control plane"
	}
	r.mu.Lock()
	if c, ok := r.cancels[id]; ok {
		r.mu.Unlock()
		c(errors.New(reason))
		return
	}
	queued := false
	for rt, q := range r.queues {
		for i, qid := range q {
			if qid == id {
				r.queues[rt] = append(q[:i:i], q[i+1:]...)
				queued = true
			}
		}
	}
	r.mu.Unlock()
	if queued {
		r.finish(id, &tenantagentv1.CommandResult{CommandId: id, Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED, Error: reason})
	}
}

func runtimeOf(m *tenantagentv1.ControlMessage) string {
	if m.GetRefresh() != nil {
		return m.GetRefresh().GetRuntime()
	}
	return m.GetPrefetch().GetRuntime()
}

func isRefresh(j *journal.Journal, id string) bool {
	rec, ok := j.Get(id)
	if !ok {
		return false
	}
	msg, err := rec.Message()
	return err == nil && msg.GetRefresh() != nil
}
