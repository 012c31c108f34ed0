package docker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
)

// Step is a step of a container's recreate. Each is journaled before it is
// taken, so a restarted agent knows how far an interrupted recreate got.
type Step string

const (
	StepCreate         Step = "create"
	StepConnect        Step = "connect"
	StepDisableRestart Step = "disable-restart"
	StepStop           Step = "stop"
	StepRenameOld      Step = "rename-old"
	StepRenameNew      Step = "rename-new"
	StepStart          Step = "start"
	StepHealthGate     Step = "health-gate"
	StepRemoveOld      Step = "remove-old"
	StepDone           Step = "done"
	// StepRollBack is reported (Report) when a failure is being rolled
	// back; it is never journaled.
	StepRollBack Step = "roll-back"
)

// Steps are the journaled steps of a recreate, in order.
var Steps = []Step{StepCreate, StepConnect, StepDisableRestart, StepStop, StepRenameOld, StepRenameNew, StepStart, StepHealthGate, StepRemoveOld, StepDone}

// RecreateState is what the journal keeps of one container's recreate.
type RecreateState struct {
	Name string `json:"name"`
	// CommandID is on the replacement's CommandLabel; rollback and Recover
	// act on a container found by name only if it carries it.
	CommandID  string `json:"command_id,omitempty"`
	OldID      string `json:"old_id"`
	NewID      string `json:"new_id,omitempty"`
	TempName   string `json:"temp_name"`
	AsideName  string `json:"aside_name"`
	WasRunning bool   `json:"was_running"`
	// RestartPolicy is old's policy, restored on rollback.
	RestartPolicy container.RestartPolicy `json:"restart_policy"`
	// AutoRemove is old's: the Engine removes it when it stops.
	AutoRemove bool   `json:"auto_remove,omitempty"`
	OldDigest  string `json:"old_digest"`
	NewDigest  string `json:"new_digest"`
	Step       Step   `json:"step"`
}

// ErrCrash, returned by a journal function, makes Recreate return it at
// once without cleaning up, exactly as if the agent process had died there.
// The agent's failpoint for tests uses it; recovery must then finish the job.
var ErrCrash = errors.New("simulated crash")

// Target is the image containers move to.
type Target struct {
	Repository string
	Digest     string
	// ImageID is the pulled image's local ID.
	ImageID string
}

// Ref is repository@digest.
func (t Target) Ref() string { return t.Repository + "@" + t.Digest }

// RecreateOptions tune one recreate.
type RecreateOptions struct {
	// HealthGateTimeout bounds the wait for the new container to prove
	// healthy.
	HealthGateTimeout time.Duration
	// StabilityWindow is how long a container without a healthcheck must
	// run without restarting.
	StabilityWindow time.Duration
	// Suffix makes the temporary names unique to the command.
	Suffix string
	// Selector is the tenant's label selector: the old container must
	// carry it, the replacement is created with it, and no container
	// without it is touched.
	Selector Selector
	// CommandID goes on the replacement (CommandLabel), so a container
	// found under the temporary name is removed only if this command made it.
	CommandID string
	// Settling, if set, is called once when the replacement runs and all
	// that is left of its health gate is the stability window (it has no
	// healthcheck): its downtime is over, so the caller may start the
	// next recreate while this one's window runs.
	Settling func()
	// Turn, if set, is called before the old container is touched (its
	// restart policy, its stop): it blocks until this recreate may take
	// its swap (stop, renames, start) and returns what ends the turn,
	// called as soon as the replacement's start returned (or the recreate
	// ended before). The old container serves while its recreate waits
	// here, so a caller can keep the swaps of parallel recreates from
	// competing for the daemon without adding to anyone's downtime. If it
	// returns false (the caller halted meanwhile), the replacement is
	// removed and the old container left untouched (NotAttempted).
	Turn func() (end func(), ok bool)
}

// Recreate replaces c with a container on target (docs/design.md §6): create the
// new one under a temporary name, stop the old one, swap names, start, pass
// the health gate, remove the old one (never its volumes). Any failure
// after the stop is rolled back: the old container is back under its name,
// with its restart policy, running if it was. journal is called before
// every step; report describes steps for progress. The error is non-nil
// only when journal returned ErrCrash: the recreate was abandoned midway,
// as by a dead process, and its Outcome is not to be reported.
//
// A container with AutoRemove (docker run --rm) removes itself when it
// stops, and the Engine cannot turn that off on an existing container, so
// it is renamed aside before the stop, and a rollback after the stop
// creates it again from its own inspect output on its own image (same
// config and volumes, a new ID).
func (e *Engine) Recreate(ctx context.Context, c Container, target Target, opts RecreateOptions, journal func(RecreateState) error, report Report) (Outcome, error) {
	r := &recreation{e: e, c: c, target: target, opts: opts, journal: journal, report: report,
		// Steps that must not be half-done when a cancel arrives run on a
		// context that only a deadline ends.
		work: context.WithoutCancel(ctx), o: owner{sel: opts.Selector, commandID: opts.CommandID}}
	r.st = RecreateState{
		Name: c.Name(), CommandID: opts.CommandID, OldID: c.Inspect.ID, TempName: c.Name() + "-ta-new-" + opts.Suffix, AsideName: c.Name() + "-ta-old-" + opts.Suffix,
		WasRunning: c.Inspect.State != nil && c.Inspect.State.Running, RestartPolicy: c.Inspect.HostConfig.RestartPolicy, AutoRemove: c.Inspect.HostConfig.AutoRemove,
		OldDigest: c.DigestFor(c.Repository), NewDigest: target.Digest,
	}
	r.res = Outcome{Name: r.st.Name, OldID: r.st.OldID, NewID: r.st.OldID, OldDigest: r.st.OldDigest, NewDigest: r.st.OldDigest, WasRunning: r.st.WasRunning}
	defer r.endTurn()
	for _, step := range []func() bool{r.createReplacement, r.takeOver, r.startAndGate, r.removeOld} {
		if !step() {
			return r.res, r.crash
		}
	}
	r.res.Result, r.res.NewID, r.res.NewDigest = ResultRecreated, r.st.NewID, target.Digest
	report(StepDone, r.st.Name+" runs "+target.Digest)
	return r.res, nil
}

// recreation is one container's recreate under way. Each step returns
// false when the recreate ends there, its result in res.
type recreation struct {
	e      *Engine
	c      Container
	target Target
	opts   RecreateOptions
	work   context.Context
	o      owner
	st     RecreateState
	res    Outcome
	// crash is the journal's ErrCrash once a simulated crash stopped it.
	crash error
	// stoppedAt is when old stopped, for the downtime.
	stoppedAt time.Time
	// turnEnd ends the turn opts.Turn gave, if one is held.
	turnEnd func()
	journal func(RecreateState) error
	report  Report
}

// step journals s before it is taken.
func (r *recreation) step(s Step) bool {
	r.st.Step = s
	err := r.journal(r.st)
	switch {
	case err == nil:
		return true
	case errors.Is(err, ErrCrash):
		r.crash = err
		return false
	}
	err = fmt.Errorf("cannot write the journal: %w", err)
	if s == StepDone {
		// The old container is removed already: the recreate is done.
		r.e.logger.Warn("recreate done, not journaled", "container", r.st.Name, "error", err)
		return true
	}
	if s == StepCreate || s == StepConnect {
		// A replacement already created is left for rollback or the
		// next attempt (same temporary name) to remove.
		r.e.discardIfCreated(r.work, r.o, r.st.NewID)
		return r.untouched(err)
	}
	return r.rollback(s, err)
}

// fail ends the recreate with result, failed at step.
func (r *recreation) fail(step Step, result Result, err error) bool {
	r.res.Result, r.res.FailedStep, r.res.Err = result, step, err
	return false
}

// untouched ends a recreate that changed nothing: the container's own
// failure, at the create.
func (r *recreation) untouched(err error) bool {
	return r.fail(StepCreate, ResultNotAttempted, fmt.Errorf("%w; nothing was changed", err))
}

// createReplacement creates the replacement, not started, under a
// temporary name that nobody else holds (a leftover of this very command is
// removed), connected to all of old's networks. Both containers are
// re-read before the first destructive step.
func (r *recreation) createReplacement() bool {
	e, work, st := r.e, r.work, &r.st
	if err := e.checkOwnership(work, r.o, r.c, st.TempName); err != nil {
		return r.untouched(err)
	}
	r.report(StepCreate, "creating "+st.TempName+" on "+r.target.Ref())
	newImage := e.imageConfig(work, r.target.ImageID)
	spec := Rebuild(r.c.Inspect, r.c.ImageConfig, newImage, r.target.Ref(), r.target.ImageID)
	r.o.label(spec.Config)
	if !r.step(StepCreate) {
		return false
	}
	id, err := e.createFromSpec(work, spec, st.TempName)
	if err != nil {
		return r.untouched(fmt.Errorf("create replacement (old container untouched): %w", err))
	}
	st.NewID = id
	if !r.step(StepConnect) {
		return false
	}
	if err := e.connectAll(work, spec, id); err != nil {
		e.discard(work, r.o, id)
		return r.untouched(fmt.Errorf("replacement (old container untouched): %w", err))
	}
	if err := e.checkCreated(work, r.o, st.NewID); err != nil {
		e.discard(work, r.o, id)
		return r.untouched(fmt.Errorf("replacement: %w", err))
	}
	if _, err := e.checkTenant(work, r.o, st.OldID); err != nil {
		e.discard(work, r.o, id)
		return r.untouched(fmt.Errorf("old container: %w", err))
	}
	return true
}

// rollback restores old after a failure from the stop on.
func (r *recreation) rollback(step Step, cause error) bool {
	r.report(StepRollBack, "rolling back "+r.st.Name+": "+cause.Error())
	restored, err := r.e.rollback(r.work, r.st, r.o.sel, &r.c)
	if restored != "" {
		r.res.NewID = restored
	}
	if err != nil {
		return r.fail(step, ResultFailed, fmt.Errorf("%v; rollback incomplete: %w", cause, err))
	}
	return r.fail(step, ResultRolledBack, cause)
}

// takeOver stops old and gives its name to the replacement: from here on,
// failure rolls back. An AutoRemove container is renamed aside before the
// stop, because the stop removes it.
func (r *recreation) takeOver() bool {
	st := &r.st
	if r.opts.Turn != nil {
		end, ok := r.opts.Turn()
		if !ok {
			r.e.discard(r.work, r.o, st.NewID)
			return r.fail(StepCreate, ResultNotAttempted, errors.New("the refresh halted while this container waited for its turn; its replacement was removed, nothing was changed"))
		}
		r.turnEnd = end
	}
	if !r.step(StepDisableRestart) {
		return false
	}
	if err := r.e.setRestartPolicy(r.work, st.OldID, container.RestartPolicy{Name: container.RestartPolicyDisabled}); err != nil {
		return r.rollback(StepDisableRestart, fmt.Errorf("disable old restart policy: %w", err))
	}
	if st.AutoRemove {
		return r.renameOldAside() && r.stopOld() && r.renameReplacement()
	}
	return r.stopOld() && r.renameOldAside() && r.renameReplacement()
}

func (r *recreation) stopOld() bool {
	st := &r.st
	r.stoppedAt = time.Now()
	if !st.WasRunning {
		return true
	}
	r.report(StepStop, "stopping "+st.Name)
	if !r.step(StepStop) {
		return false
	}
	// Empty options: the container's own stop signal and timeout.
	if err := r.e.cli.ContainerStop(r.work, st.OldID, container.StopOptions{}); err != nil && !(st.AutoRemove && cerrdefs.IsNotFound(err)) {
		return r.rollback(StepStop, fmt.Errorf("stop old container: %w", err))
	}
	r.stoppedAt = time.Now()
	return true
}

func (r *recreation) renameOldAside() bool {
	st := &r.st
	r.report(StepRenameOld, "renaming "+st.Name+" to "+st.AsideName)
	if !r.step(StepRenameOld) {
		return false
	}
	if err := r.e.cli.ContainerRename(r.work, st.OldID, st.AsideName); err != nil {
		return r.rollback(StepRenameOld, fmt.Errorf("rename old container aside: %w", err))
	}
	return true
}

func (r *recreation) renameReplacement() bool {
	st := &r.st
	if !r.step(StepRenameNew) {
		return false
	}
	if err := r.e.cli.ContainerRename(r.work, st.NewID, st.Name); err != nil {
		return r.rollback(StepRenameNew, fmt.Errorf("rename replacement: %w", err))
	}
	return true
}

// endTurn ends the swap's turn, if one is held.
func (r *recreation) endTurn() {
	if r.turnEnd != nil {
		r.turnEnd()
		r.turnEnd = nil
	}
}

// startAndGate starts the replacement and waits for it to prove itself; a
// stopped container's replacement is left stopped.
func (r *recreation) startAndGate() bool {
	st := &r.st
	if !st.WasRunning {
		r.endTurn()
		return true
	}
	r.report(StepStart, "starting "+st.Name+" on "+r.target.Digest)
	if !r.step(StepStart) {
		return false
	}
	err := r.e.cli.ContainerStart(r.work, st.NewID, container.StartOptions{})
	r.endTurn()
	if err != nil {
		return r.rollback(StepStart, fmt.Errorf("start replacement: %w", err))
	}
	r.res.Downtime = time.Since(r.stoppedAt)
	r.report(StepHealthGate, "waiting for "+st.Name+" to prove healthy")
	if !r.step(StepHealthGate) {
		return false
	}
	gateStart := time.Now()
	if err := r.e.healthGate(r.work, st.NewID, r.opts); err != nil {
		return r.rollback(StepHealthGate, err)
	}
	r.res.HealthGate = time.Since(gateStart)
	return true
}

// removeOld removes the old container, never its volumes.
func (r *recreation) removeOld() bool {
	r.report(StepRemoveOld, "removing the old container "+shortID(r.st.OldID))
	if !r.step(StepRemoveOld) {
		return false
	}
	r.e.removeOld(r.work, r.o, r.st)
	return r.step(StepDone)
}

// createFromSpec creates a container from spec under name.
func (e *Engine) createFromSpec(ctx context.Context, spec Spec, name string) (string, error) {
	created, err := e.cli.ContainerCreate(ctx, spec.Config, spec.HostConfig, spec.Network, nil, name)
	return created.ID, err
}

// connectAll connects a created container to spec's other networks,
// before its first start.
func (e *Engine) connectAll(ctx context.Context, spec Spec, id string) error {
	for name, ep := range spec.Connect {
		if err := e.cli.NetworkConnect(ctx, name, id, ep); err != nil {
			return fmt.Errorf("connect to network %s: %w", name, err)
		}
	}
	return nil
}

// imageConfig is an image's config for Rebuild, or nil if it cannot be
// read (then the replacement's ExplicitLabel lists every explicit value).
// It is read once per image, not once per container.
func (e *Engine) imageConfig(ctx context.Context, id string) *container.Config {
	img, ok := e.imageOf(ctx, id)
	if !ok {
		e.logger.Warn("cannot read the new image's config", "image", id)
		return nil
	}
	return img.config
}

// Recover completes a recreate a previous agent process left at st.Step:
// past the health gate it finishes (removes the old container); before
// that it rolls back, so the container runs on old or new, never missing.
// It acts only on containers that carry the tenant's labels (sel) and, for
// one found by its temporary name, st.CommandID.
func (e *Engine) Recover(ctx context.Context, st RecreateState, sel Selector) Outcome {
	res := Outcome{Name: st.Name, OldID: st.OldID, WasRunning: st.WasRunning, OldDigest: st.OldDigest}
	if st.Step == StepRemoveOld || st.Step == StepDone {
		e.removeOld(ctx, owner{sel: sel, commandID: st.CommandID}, st)
		res.Result, res.NewID, res.NewDigest = ResultRecreated, st.NewID, st.NewDigest
		return res
	}
	res.NewID, res.NewDigest, res.FailedStep = st.OldID, st.OldDigest, st.Step
	cause := fmt.Sprintf("the agent stopped during step %q", st.Step)
	restored, err := e.rollback(ctx, st, sel, nil)
	if restored != "" {
		res.NewID = restored
	}
	if err != nil {
		if errors.Is(err, errKeptReplacement) {
			res.NewDigest = st.NewDigest
		}
		res.Result, res.Err = ResultFailed, fmt.Errorf("%s; rollback incomplete: %w", cause, err)
		return res
	}
	res.Result, res.Err = ResultRolledBack, errors.New(cause+"; rolled back")
	return res
}

// errKeptReplacement: an AutoRemove container removed itself and no copy
// of its config was at hand, so its replacement was kept in its place.
var errKeptReplacement = errors.New("the old container removed itself when stopped (AutoRemove); its replacement on the new image runs in its place, without a health gate")

// rollback restores the old container: the replacement removed, the old
// one under its name with its restart policy, running if it was. Every
// action checks the current state first, so it can run again after a crash.
// Only containers with the tenant's labels are touched, and a replacement
// only if it carries st.CommandID: a crash before the create was journaled
// leaves no ID, and whatever then holds the temporary name may be anyone's.
// It returns the ID of the container now under the name if that is not
// st.OldID (an AutoRemove container created again, or kept replacement).
func (e *Engine) rollback(ctx context.Context, st RecreateState, sel Selector, old *Container) (string, error) {
	o := owner{sel: sel, commandID: st.CommandID}
	var errs []error
	newID := st.NewID
	if newID == "" {
		id, err := e.ownedTemp(ctx, o, st.TempName)
		if err != nil {
			e.logger.Warn("temporary name not ours; left alone", "name", st.TempName, "error", err)
		}
		newID = id
	}
	if st.AutoRemove && newID != "" && e.removedItself(ctx, st) {
		return e.replaceRemoved(ctx, o, st, newID, old)
	}
	if newID != "" && newID != st.OldID {
		if err := e.removeCreated(ctx, o, newID); err != nil {
			// Not ours after all (say, a journal edited by hand): left
			// alone, and the old container is still restored.
			errs = append(errs, fmt.Errorf("replacement left alone: %w", err))
		}
	}
	in, err := e.checkTenant(ctx, o, st.OldID)
	if err != nil {
		return "", errors.Join(append(errs, fmt.Errorf("old container: %w", err))...)
	}
	if err := e.restoreOld(ctx, st, in); err != nil {
		errs = append(errs, err)
	}
	return "", errors.Join(errs...)
}

// removedItself reports whether an AutoRemove old container is gone or
// going: once it was running and is not any more, its stop removes it,
// shortly after the stop returns.
func (e *Engine) removedItself(ctx context.Context, st RecreateState) bool {
	deadline := time.Now().Add(10 * time.Second)
	for {
		in, err := e.cli.ContainerInspect(ctx, st.OldID)
		switch {
		case cerrdefs.IsNotFound(err):
			return true
		case err != nil || !st.WasRunning || in.State == nil || in.State.Running || time.Now().After(deadline):
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// replaceRemoved stands in for an AutoRemove container that removed
// itself on its stop. With old's inspect output (in process) it is created
// again on its own image from its own config, with its volumes, and the
// replacement is removed; without (recovery after a crash), the
// replacement is kept under the name, running if old was, and
// errKeptReplacement says so. The volumes survive either way: the
// replacement held them when old was removed.
func (e *Engine) replaceRemoved(ctx context.Context, o owner, st RecreateState, newID string, old *Container) (string, error) {
	if old == nil {
		return newID, errors.Join(e.keepReplacement(ctx, o, st, newID), errKeptReplacement)
	}
	spec := Rebuild(old.Inspect, old.ImageConfig, old.ImageConfig, old.Inspect.Config.Image, old.Inspect.Image)
	o.label(spec.Config)
	if err := e.removeCreated(ctx, o, newID); err != nil {
		return "", fmt.Errorf("replacement: %w", err)
	}
	id, err := e.createFromSpec(ctx, spec, st.Name)
	if err != nil {
		return "", fmt.Errorf("create the AutoRemove container again: %w", err)
	}
	if err := e.connectAll(ctx, spec, id); err != nil {
		return id, err
	}
	if st.WasRunning {
		if err := e.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
			return id, fmt.Errorf("start the AutoRemove container created again: %w", err)
		}
	}
	return id, nil
}

// keepReplacement puts the replacement under the name, started if old was
// running.
func (e *Engine) keepReplacement(ctx context.Context, o owner, st RecreateState, id string) error {
	if err := e.checkCreated(ctx, o, id); err != nil {
		return fmt.Errorf("replacement: %w", err)
	}
	in, err := e.cli.ContainerInspect(ctx, id)
	if err != nil {
		return fmt.Errorf("replacement: %w", err)
	}
	if strings.TrimPrefix(in.Name, "/") != st.Name {
		if err := e.cli.ContainerRename(ctx, id, st.Name); err != nil {
			return fmt.Errorf("rename replacement: %w", err)
		}
	}
	if st.WasRunning && (in.State == nil || !in.State.Running) {
		if err := e.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
			return fmt.Errorf("start replacement: %w", err)
		}
	}
	return nil
}

// restoreOld puts the old container back under its name with its restart
// policy, started if it was running.
func (e *Engine) restoreOld(ctx context.Context, st RecreateState, old container.InspectResponse) error {
	if strings.TrimPrefix(old.Name, "/") != st.Name {
		if err := e.cli.ContainerRename(ctx, st.OldID, st.Name); err != nil {
			return fmt.Errorf("rename old container back: %w", err)
		}
	}
	if err := e.setRestartPolicy(ctx, st.OldID, st.RestartPolicy); err != nil {
		return fmt.Errorf("restore restart policy: %w", err)
	}
	if st.WasRunning && (old.State == nil || !old.State.Running) {
		if err := e.cli.ContainerStart(ctx, st.OldID, container.StartOptions{}); err != nil {
			return fmt.Errorf("start old container: %w", err)
		}
	}
	return nil
}

func (e *Engine) setRestartPolicy(ctx context.Context, id string, p container.RestartPolicy) error {
	if p.Name == "" {
		p.Name = container.RestartPolicyDisabled
	}
	_, err := e.cli.ContainerUpdate(ctx, id, container.UpdateConfig{RestartPolicy: p})
	return err
}

// checkOwnership runs before anything is created: the old container must
// be the tenant's (an empty selector or command ID fails here), and the
// temporary name must be free or held by this command's own leftover,
// which is removed.
func (e *Engine) checkOwnership(ctx context.Context, o owner, c Container, tempName string) error {
	if len(o.sel) == 0 || o.commandID == "" {
		return errors.New("recreate needs the tenant selector and the command ID")
	}
	if !o.tenants(c.Inspect) {
		return fmt.Errorf("container %s does not carry this tenant's labels", shortID(c.Inspect.ID))
	}
	leftover, err := e.ownedTemp(ctx, o, tempName)
	if err != nil || leftover == "" {
		return err
	}
	return e.removeCreated(ctx, o, leftover)
}

// discardIfCreated discards the replacement if there is one.
func (e *Engine) discardIfCreated(ctx context.Context, o owner, id string) {
	if id != "" {
		e.discard(ctx, o, id)
	}
}

// discard removes a replacement that never served, logging a failure.
func (e *Engine) discard(ctx context.Context, o owner, id string) {
	if err := e.removeCreated(ctx, o, id); err != nil {
		e.logger.Warn("cannot remove the unused replacement", "container", shortID(id), "error", err)
	}
}

// removeOld removes the old container once the replacement has passed,
// never its volumes. A failure leaves only a stopped container behind: it
// is logged, not undone.
func (e *Engine) removeOld(ctx context.Context, o owner, st RecreateState) {
	_, err := e.checkTenant(ctx, o, st.OldID)
	if err == nil {
		err = e.cli.ContainerRemove(ctx, st.OldID, container.RemoveOptions{RemoveVolumes: false})
	}
	if err != nil && !cerrdefs.IsNotFound(err) {
		e.logger.Warn("old container not removed", "container", st.AsideName, "error", err)
	}
}
