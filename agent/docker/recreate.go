package docker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"google.golang.org/protobuf/types/known/durationpb"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
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
)

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
	OldDigest     string                  `json:"old_digest"`
	NewDigest     string                  `json:"new_digest"`
	Step          Step                    `json:"step"`
}

// ErrCrash, returned by a journal function, makes Recreate return at once
// without cleaning up, exactly as if the agent process had died there. The
// agent's crash point for tests uses it; recovery must then finish the job.
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
}

// Recreate replaces c with a container on target (DESIGN.md §6): create the
// new one under a temporary name, stop the old one, swap names, start, pass
// the health gate, remove the old one (never its volumes). Any failure
// after the stop is rolled back: the old container is back under its name,
// with its restart policy, running if it was. journal is called before
// every step; report describes steps for progress.
func (e *Engine) Recreate(ctx context.Context, c Container, target Target, opts RecreateOptions, journal func(RecreateState) error, report func(tenantagentv1.CommandPhase, string)) *tenantagentv1.ContainerResult {
	st := RecreateState{
		Name: c.Name(), CommandID: opts.CommandID, OldID: c.Inspect.ID, TempName: c.Name() + "-ta-new-" + opts.Suffix, AsideName: c.Name() + "-ta-old-" + opts.Suffix,
		WasRunning: c.Inspect.State != nil && c.Inspect.State.Running, RestartPolicy: c.Inspect.HostConfig.RestartPolicy,
		OldDigest: c.DigestFor(c.Repository), NewDigest: target.Digest,
	}
	res := &tenantagentv1.ContainerResult{Name: st.Name, OldContainerId: st.OldID, NewContainerId: st.OldID, OldDigest: st.OldDigest, NewDigest: st.OldDigest, WasRunning: st.WasRunning}
	step := func(s Step) error {
		st.Step = s
		return journal(st)
	}
	fail := func(phase tenantagentv1.CommandPhase, outcome tenantagentv1.ContainerOutcome, err error) *tenantagentv1.ContainerResult {
		res.Outcome, res.FailedPhase, res.Error = outcome, phase, err.Error()
		return res
	}
	// Steps that must not be half-done when a cancel arrives run on a
	// context that only a deadline ends.
	work := context.WithoutCancel(ctx)
	o := owner{sel: opts.Selector, commandID: opts.CommandID}
	notAttempted := func(err error) *tenantagentv1.ContainerResult {
		return fail(tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING, tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_NOT_ATTEMPTED, fmt.Errorf("%w; nothing was changed", err))
	}

	// 1. Create the replacement, not started, under a temporary name that
	// nobody else holds (a leftover of this very command is removed).
	if err := e.checkOwnership(work, o, c, st.TempName); err != nil {
		return notAttempted(err)
	}
	report(tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING, "creating "+st.TempName+" on "+target.Ref())
	spec := Rebuild(c.Inspect, c.ImageConfig, nil, target.Ref(), target.ImageID)
	o.label(spec.Config)
	if err := step(StepCreate); err != nil {
		return crashed(err, res)
	}
	created, err := e.cli.ContainerCreate(work, spec.Config, spec.HostConfig, spec.Network, nil, st.TempName)
	if err != nil {
		return fail(tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING, tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_NOT_ATTEMPTED, fmt.Errorf("create replacement (old container untouched): %w", err))
	}
	st.NewID = created.ID
	if err := step(StepConnect); err != nil {
		return crashed(err, res)
	}
	for name, ep := range spec.Connect {
		if err := e.cli.NetworkConnect(work, name, created.ID, ep); err != nil {
			e.discard(work, o, created.ID)
			return fail(tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING, tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_NOT_ATTEMPTED, fmt.Errorf("connect replacement to network %s (old container untouched): %w", name, err))
		}
	}
	// Both IDs are re-read before the first destructive step.
	if err := e.checkCreated(work, o, st.NewID); err != nil {
		e.discard(work, o, created.ID)
		return notAttempted(fmt.Errorf("replacement: %w", err))
	}
	if _, err := e.checkTenant(work, o, st.OldID); err != nil {
		e.discard(work, o, created.ID)
		return notAttempted(fmt.Errorf("old container: %w", err))
	}

	// 2. Stop the old one and swap names. From here on, failure rolls back.
	rollback := func(phase tenantagentv1.CommandPhase, cause error) *tenantagentv1.ContainerResult {
		report(tenantagentv1.CommandPhase_COMMAND_PHASE_ROLLING_BACK, "rolling back "+st.Name+": "+cause.Error())
		if err := e.rollback(work, st, o.sel); err != nil {
			return fail(phase, tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_FAILED, fmt.Errorf("%v; rollback incomplete: %w", cause, err))
		}
		return fail(phase, tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ROLLED_BACK, cause)
	}
	if err := step(StepDisableRestart); err != nil {
		return crashed(err, res)
	}
	if err := e.setRestartPolicy(work, st.OldID, container.RestartPolicy{Name: container.RestartPolicyDisabled}); err != nil {
		return rollback(tenantagentv1.CommandPhase_COMMAND_PHASE_STOPPING, fmt.Errorf("disable old restart policy: %w", err))
	}
	stoppedAt := time.Now()
	if st.WasRunning {
		report(tenantagentv1.CommandPhase_COMMAND_PHASE_STOPPING, "stopping "+st.Name)
		if err := step(StepStop); err != nil {
			return crashed(err, res)
		}
		// Empty options: the container's own stop signal and timeout.
		if err := e.cli.ContainerStop(work, st.OldID, container.StopOptions{}); err != nil {
			return rollback(tenantagentv1.CommandPhase_COMMAND_PHASE_STOPPING, fmt.Errorf("stop old container: %w", err))
		}
		stoppedAt = time.Now()
	}
	report(tenantagentv1.CommandPhase_COMMAND_PHASE_SWAPPING, "renaming "+st.Name+" to "+st.AsideName)
	if err := step(StepRenameOld); err != nil {
		return crashed(err, res)
	}
	if err := e.cli.ContainerRename(work, st.OldID, st.AsideName); err != nil {
		return rollback(tenantagentv1.CommandPhase_COMMAND_PHASE_SWAPPING, fmt.Errorf("rename old container aside: %w", err))
	}
	if err := step(StepRenameNew); err != nil {
		return crashed(err, res)
	}
	if err := e.cli.ContainerRename(work, st.NewID, st.Name); err != nil {
		return rollback(tenantagentv1.CommandPhase_COMMAND_PHASE_SWAPPING, fmt.Errorf("rename replacement: %w", err))
	}

	// 3. Start and gate (a stopped container is left stopped).
	if st.WasRunning {
		report(tenantagentv1.CommandPhase_COMMAND_PHASE_STARTING, "starting "+st.Name+" on "+target.Digest)
		if err := step(StepStart); err != nil {
			return crashed(err, res)
		}
		if err := e.cli.ContainerStart(work, st.NewID, container.StartOptions{}); err != nil {
			return rollback(tenantagentv1.CommandPhase_COMMAND_PHASE_STARTING, fmt.Errorf("start replacement: %w", err))
		}
		res.Downtime = durationpb.New(time.Since(stoppedAt))
		report(tenantagentv1.CommandPhase_COMMAND_PHASE_HEALTH_GATE, "waiting for "+st.Name+" to prove healthy")
		if err := step(StepHealthGate); err != nil {
			return crashed(err, res)
		}
		gateStart := time.Now()
		if err := e.healthGate(work, st.NewID, opts); err != nil {
			return rollback(tenantagentv1.CommandPhase_COMMAND_PHASE_HEALTH_GATE, err)
		}
		res.HealthGate = durationpb.New(time.Since(gateStart))
	}

	// 4. Remove the old container, never its volumes.
	report(tenantagentv1.CommandPhase_COMMAND_PHASE_REMOVING_OLD, "removing the old container "+shortID(st.OldID))
	if err := step(StepRemoveOld); err != nil {
		return crashed(err, res)
	}
	e.removeOld(work, o, st)
	if err := step(StepDone); err != nil {
		return crashed(err, res)
	}
	res.Outcome, res.NewContainerId, res.NewDigest = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED, st.NewID, target.Digest
	report(tenantagentv1.CommandPhase_COMMAND_PHASE_CONTAINER_DONE, st.Name+" runs "+target.Digest)
	return res
}

// crashed turns a journal failure into the result. A simulated crash
// returns nil: as if the process died, nobody reports anything.
func crashed(err error, res *tenantagentv1.ContainerResult) *tenantagentv1.ContainerResult {
	if errors.Is(err, ErrCrash) {
		return nil
	}
	res.Outcome, res.Error = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_NOT_ATTEMPTED, "cannot write the journal: "+err.Error()
	return res
}

// Recover completes a recreate a previous agent process left at st.Step:
// past the health gate it finishes (removes the old container); before
// that it rolls back, so the container runs on old or new, never missing.
// It acts only on containers that carry the tenant's labels (sel) and, for
// one found by its temporary name, st.CommandID.
func (e *Engine) Recover(ctx context.Context, st RecreateState, sel Selector) *tenantagentv1.ContainerResult {
	res := &tenantagentv1.ContainerResult{Name: st.Name, OldContainerId: st.OldID, WasRunning: st.WasRunning, OldDigest: st.OldDigest}
	if st.Step == StepRemoveOld || st.Step == StepDone {
		e.removeOld(ctx, owner{sel: sel, commandID: st.CommandID}, st)
		res.Outcome, res.NewContainerId, res.NewDigest = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED, st.NewID, st.NewDigest
		return res
	}
	res.NewContainerId, res.NewDigest, res.FailedPhase = st.OldID, st.OldDigest, phaseOf(st.Step)
	cause := fmt.Sprintf("the agent stopped during step %q", st.Step)
	if err := e.rollback(ctx, st, sel); err != nil {
		res.Outcome, res.Error = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_FAILED, cause+"; rollback incomplete: "+err.Error()
		return res
	}
	res.Outcome, res.Error = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ROLLED_BACK, cause+"; rolled back"
	return res
}

// rollback restores the old container: the replacement removed, the old
// one under its name with its restart policy, running if it was. Every
// action checks the current state first, so it can run again after a crash.
// Only containers with the tenant's labels are touched, and a replacement
// only if it carries st.CommandID: a crash before the create was journaled
// leaves no ID, and whatever then holds the temporary name may be anyone's.
func (e *Engine) rollback(ctx context.Context, st RecreateState, sel Selector) error {
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
	if newID != "" && newID != st.OldID {
		if err := e.removeCreated(ctx, o, newID); err != nil {
			// Not ours after all (say, a journal edited by hand): left
			// alone, and the old container is still restored.
			errs = append(errs, fmt.Errorf("replacement left alone: %w", err))
		}
	}
	old, err := e.checkTenant(ctx, o, st.OldID)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("old container: %w", err))...)
	}
	if err := e.restoreOld(ctx, st, old); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
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

// healthGate waits for a started container to prove itself: healthy if it
// has a healthcheck, else running without a restart for the stability
// window. It fails at once if the container exits or restarts.
func (e *Engine) healthGate(ctx context.Context, id string, opts RecreateOptions) error {
	in, err := e.cli.ContainerInspect(ctx, id)
	if err != nil {
		return err
	}
	startedAt, restarts := in.State.StartedAt, in.RestartCount
	start := time.Now()
	for {
		in, err := e.cli.ContainerInspect(ctx, id)
		if err != nil {
			return fmt.Errorf("health gate: %w", err)
		}
		s := in.State
		switch {
		case !s.Running:
			return fmt.Errorf("health gate: the new container exited with code %d", s.ExitCode)
		case in.RestartCount != restarts || s.StartedAt != startedAt:
			return errors.New("health gate: the new container restarted")
		case s.Health != nil && s.Health.Status == container.Healthy:
			return nil
		case s.Health != nil && s.Health.Status == container.Unhealthy:
			return fmt.Errorf("health gate: the new container is unhealthy (%d failing checks)", s.Health.FailingStreak)
		case s.Health == nil && time.Since(start) >= opts.StabilityWindow:
			return nil
		case time.Since(start) > opts.HealthGateTimeout:
			return fmt.Errorf("health gate: not healthy within %s", opts.HealthGateTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func phaseOf(s Step) tenantagentv1.CommandPhase {
	switch s {
	case StepCreate, StepConnect:
		return tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING
	case StepDisableRestart, StepStop:
		return tenantagentv1.CommandPhase_COMMAND_PHASE_STOPPING
	case StepRenameOld, StepRenameNew:
		return tenantagentv1.CommandPhase_COMMAND_PHASE_SWAPPING
	case StepStart:
		return tenantagentv1.CommandPhase_COMMAND_PHASE_STARTING
	case StepHealthGate:
		return tenantagentv1.CommandPhase_COMMAND_PHASE_HEALTH_GATE
	}
	return tenantagentv1.CommandPhase_COMMAND_PHASE_REMOVING_OLD
}
