package rollout

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// watchEvery is how often Watch re-reads a rollout and its commands: it
// follows from the store, so it works on any replica.
const watchEvery = 500 * time.Millisecond

// Get returns a rollout and the tally of its tenants.
func (r *Rollouts) Get(ctx context.Context, id string) (store.Rollout, Counts, error) {
	ro, err := r.cfg.Store.GetRollout(ctx, id)
	if err != nil {
		return store.Rollout{}, Counts{}, notFound(id, err)
	}
	counts, err := r.tally(ctx, id)
	return ro, counts, err
}

// List returns rollouts, newest first, each with its tally; a non-empty
// runtime or state filters.
func (r *Rollouts) List(ctx context.Context, runtime string, state store.RolloutState) ([]store.Rollout, error) {
	return r.cfg.Store.ListRollouts(ctx, runtime, state)
}

// Abort stops a running or halted rollout: the run stops (here at once,
// on another replica when its next renewal finds the lease gone), its
// commands not yet sent are canceled, and reconcile takes the runtime
// back. It returns the rollout and how many commands it canceled.
func (r *Rollouts) Abort(ctx context.Context, id, reason string, by identity.Identity) (store.Rollout, int, error) {
	cur, err := r.cfg.Store.GetRollout(ctx, id)
	if err != nil {
		return store.Rollout{}, 0, notFound(id, err)
	}
	msg := "aborted by " + by.ID
	if reason != "" {
		msg += ": " + reason
	}
	ro, err := r.cfg.Store.SetRolloutState(ctx, store.Rollout{ID: id, State: store.RolloutAborted, Message: msg, UpdatedAt: r.cfg.Now(), ResumedAt: cur.ResumedAt},
		[]store.RolloutState{store.RolloutRunning, store.RolloutHalted})
	if err != nil {
		return store.Rollout{}, 0, r.transitionError(ctx, id, "aborted", "a running or halted", err)
	}
	if x, ok := r.stops.Load(id); ok {
		x.(*run).cancel()
	}
	pending, err := r.cfg.Store.ListCommands(ctx, store.CommandFilter{RolloutID: id,
		States: []controlplanev1.CommandState{controlplanev1.CommandState_COMMAND_STATE_PENDING}})
	if err != nil {
		return ro, 0, fmt.Errorf("rollout %s is aborted, but its pending commands could not be read: %w", id, err)
	}
	canceled := 0
	for _, c := range pending {
		if err := r.cfg.Dispatcher.Cancel(ctx, c.ID, "rollout "+id+" aborted"); err == nil {
			canceled++
		}
	}
	r.cfg.Logger.Warn("rollout aborted", "rollout", id, "runtime", ro.Runtime, "by", by.ID, "reason", reason, "canceled", canceled)
	r.publish(ro, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_ABORTED, msg)
	return ro, canceled, nil
}

// ResumeHalted goes on with a halted rollout on this replica: tenants not
// yet refreshed are started; failures before now no longer count towards
// its halt.
func (r *Rollouts) ResumeHalted(ctx context.Context, id string, by identity.Identity) (store.Rollout, error) {
	r.claiming.Lock()
	defer r.claiming.Unlock()
	now := r.cfg.Now()
	ro, err := r.cfg.Store.SetRolloutState(ctx, store.Rollout{ID: id, State: store.RolloutRunning, Message: "resumed by " + by.ID,
		UpdatedAt: now, Owner: r.cfg.Replica, LeaseUntil: now.Add(r.cfg.Lease), ResumedAt: now}, []store.RolloutState{store.RolloutHalted})
	if err != nil {
		return store.Rollout{}, r.transitionError(ctx, id, "resumed", "a halted", err)
	}
	r.running[ro.ID] = true
	r.cfg.Logger.Info("rollout resumed", "rollout", id, "runtime", ro.Runtime, "by", by.ID, "epoch", ro.Epoch)
	r.publish(ro, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_RESUMED, ro.Message)
	r.start(ro, nil)
	return ro, nil
}

// publish tells this replica's watchers of the rollout (promote streams)
// what an operator did.
func (r *Rollouts) publish(ro store.Rollout, kind controlplanev1.RolloutEventKind, msg string) {
	r.events.Publish(ro.ID, Event{Time: r.cfg.Now(), RolloutID: ro.ID, Kind: kind, Message: msg})
}

// Watch follows a rollout from the store until it ends (completed, halted
// or aborted) or ctx does, on any replica: send gets the rollout first
// (with no event), then an event for each command issued or changed, and
// the end with the rollout as stored.
func (r *Rollouts) Watch(ctx context.Context, id string, send func(*Event, *store.Rollout) error) error {
	ro, err := r.cfg.Store.GetRollout(ctx, id)
	if err != nil {
		return notFound(id, err)
	}
	if err := send(nil, &ro); err != nil {
		return err
	}
	told := map[string]controlplanev1.CommandState{}
	for first := true; ; first = false {
		cmds, err := r.cfg.Store.ListCommands(ctx, store.CommandFilter{RolloutID: id, Oldest: true})
		if err != nil {
			return err
		}
		counts := Tally(cmds)
		for _, c := range cmds {
			last, known := told[c.ID]
			if known && last == c.State {
				continue
			}
			told[c.ID] = c.State
			kind := controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_UPDATED
			if !known && !first {
				kind = controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_ISSUED
			}
			ev := Event{Time: c.UpdatedAt, RolloutID: id, Kind: kind, Tenant: c.Tenant, CommandID: c.ID, State: c.State, Message: describe(c), Counts: &counts}
			if err := send(&ev, nil); err != nil {
				return err
			}
		}
		if ro, err = r.cfg.Store.GetRollout(ctx, id); err != nil {
			return err
		}
		if kind, ended := endKind(ro.State); ended {
			ev := Event{Time: ro.UpdatedAt, RolloutID: id, Kind: kind, Message: ro.Message, Counts: &counts}
			return send(&ev, &ro)
		}
		select {
		case <-ctx.Done():
			return ctx.Err() // the watcher left; the rollout goes on
		case <-time.After(watchEvery):
		}
	}
}

func endKind(s store.RolloutState) (controlplanev1.RolloutEventKind, bool) {
	switch s {
	case store.RolloutCompleted:
		return controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED, true
	case store.RolloutHalted:
		return controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED, true
	case store.RolloutAborted:
		return controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_ABORTED, true
	}
	return 0, false
}

func (r *Rollouts) tally(ctx context.Context, id string) (Counts, error) {
	cmds, err := r.cfg.Store.ListCommands(ctx, store.CommandFilter{RolloutID: id})
	if err != nil {
		return Counts{}, err
	}
	return Tally(cmds), nil
}

// Tally counts a rollout's tenants by the outcome of their refreshes: a
// tenant failed if any of its agents' refreshes failed, was skipped if
// one was superseded or canceled, succeeded if all succeeded; the rest
// are under way or wait for their agent. Tenants with no refresh yet
// (held, not reached) are not counted.
func Tally(cmds []*store.Command) Counts {
	worst := map[string]outcome{}
	for _, c := range cmds {
		if c.Kind != controlplanev1.CommandKind_COMMAND_KIND_REFRESH {
			continue
		}
		o := pending
		if store.Terminal(c.State) {
			o = classify(c.State)
		}
		if prev, ok := worst[c.Tenant]; !ok || rankOutcome(o) > rankOutcome(prev) {
			worst[c.Tenant] = o
		}
	}
	n := Counts{Tenants: uint32(len(worst))}
	for _, o := range worst {
		switch o {
		case succeeded:
			n.Succeeded++
		case failedOutcome:
			n.Failed++
		case skipped:
			n.Skipped++
		}
	}
	return n
}

// rankOutcome orders a tenant's outcomes: its worst command decides.
func rankOutcome(o outcome) int {
	switch o {
	case succeeded:
		return 0
	case skipped:
		return 1
	case pending:
		return 2
	}
	return 3
}

func notFound(id string, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return cperr.NotFound("rollout %s not found", limits.Quoted(id))
	}
	return err
}

// transitionError says why an abort or resume changed nothing.
func (r *Rollouts) transitionError(ctx context.Context, id, done, want string, err error) error {
	if !errors.Is(err, store.ErrConflict) {
		return notFound(id, err)
	}
	cur, gerr := r.cfg.Store.GetRollout(ctx, id)
	if gerr != nil {
		return notFound(id, gerr)
	}
	return cperr.Precondition("rollout %s is %s: only %s rollout can be %s", limits.Quoted(id), cur.State, want, done)
}
