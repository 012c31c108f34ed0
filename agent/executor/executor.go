// Package executor carries out the control plane's commands on this host:
// it checks a command against the agent's own rules (digest only, allowed
// repository, the runtime's own repository), pulls, and recreates the
// runtime's containers: a canary alone, then the rest a few at a time, in
// dependency order (schedule.go). Commands never carry container
// configuration: every container is rebuilt from its own inspect output.
package executor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/signature"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/imageref"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// Config configures an Executor.
type Config struct {
	Engine *docker.Engine
	// Selector picks this tenant's managed containers.
	Selector docker.Selector
	// RepositoryPattern names a runtime's repository, {runtime} standing
	// for a plain runtime name. With a "/" it is the whole repository
	// ("registry.example/molecule-ai/workspace-template-{runtime}"),
	// matched exactly; without, only the last path element
	// ("workspace-template-{runtime}"), and then the default allow-list
	// also needs all the runtime's containers on one repository.
	RepositoryPattern string
	// RuntimeLabel, if set, is a container label that names its runtime
	// and wins over the repository pattern.
	RuntimeLabel string
	// AllowRepositories lists the repositories (or prefixes ending in "/")
	// commands may use. Empty means: only the repository a runtime's
	// containers already run.
	AllowRepositories []string
	// Credentials returns a repository's registry credentials; it is
	// asked at every pull, so rotated tokens work without a restart.
	Credentials docker.CredentialFunc
	// Signatures, if set, checks each refresh's and prefetch's image
	// against the signature policy after the agent's own checks and
	// before anything is pulled (phase VERIFYING); nil: no verification.
	Signatures *signature.Verifier
	// MinFreeDisk is the free space a pull must leave on Docker's data
	// root; 0 still needs the image to fit (docker.Engine.CheckDisk).
	MinFreeDisk uint64
	// CleanupImages turns on removing the runtime's unused images after a
	// successful refresh, keeping KeepImages besides the adopted one
	// (cleanup.go).
	CleanupImages bool
	KeepImages    int
	// Defaults for commands that do not say.
	HealthGateTimeout time.Duration
	StabilityWindow   time.Duration
	PullTimeout       time.Duration
	// MaxParallel bounds the containers recreated at once after the
	// canary (default 4); a command may lower it, never raise it.
	MaxParallel int
	// State, if set, is the watched view of the containers that health
	// reports read (docker.Engine.Watch); while it is not current, or
	// without it, they list the Engine. Commands always list the Engine.
	State  *docker.State
	Logger *slog.Logger
}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Engine == nil {
		return errors.New("executor: Engine is required")
	}
	if len(c.Selector) == 0 {
		return errors.New("executor: a label selector is required (several tenants may share one Docker daemon)")
	}
	if c.RepositoryPattern == "" {
		c.RepositoryPattern = "workspace-template-{runtime}"
	}
	if strings.Count(c.RepositoryPattern, "{runtime}") != 1 {
		return fmt.Errorf("repository pattern %q must hold {runtime} once", c.RepositoryPattern)
	}
	if c.Credentials == nil {
		c.Credentials = docker.Anonymous
	}
	if c.HealthGateTimeout <= 0 {
		c.HealthGateTimeout = 2 * time.Minute
	}
	if c.StabilityWindow <= 0 {
		c.StabilityWindow = 10 * time.Second
	}
	if c.PullTimeout <= 0 {
		c.PullTimeout = 2 * time.Hour
	}
	if c.MaxParallel <= 0 {
		c.MaxParallel = 4
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("component", "executor")
	return nil
}

// Executor runs commands.
type Executor struct{ cfg Config }

// New returns an Executor.
func New(cfg Config) (*Executor, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	return &Executor{cfg: cfg}, nil
}

// runtimeOf names a container's runtime, or "" if it belongs to none.
func (x *Executor) runtimeOf(c docker.Container) string {
	if x.cfg.RuntimeLabel != "" {
		if r := c.Inspect.Config.Labels[x.cfg.RuntimeLabel]; ValidRuntime(r) {
			return r
		}
	}
	return x.runtimeOfRepository(c.Repository)
}

// runtimeOfRepository names the runtime whose repository repo is, or "".
// A pattern with a registry or namespace must match the whole repository,
// so a lookalike in another namespace is nobody's runtime.
func (x *Executor) runtimeOfRepository(repo string) string {
	subject := repo
	if !x.fullPattern() {
		subject = repo[strings.LastIndex(repo, "/")+1:]
	}
	prefix, suffix, _ := strings.Cut(x.cfg.RepositoryPattern, "{runtime}")
	if !strings.HasPrefix(subject, prefix) || !strings.HasSuffix(subject, suffix) || len(subject) <= len(prefix)+len(suffix) {
		return ""
	}
	if rt := subject[len(prefix) : len(subject)-len(suffix)]; ValidRuntime(rt) {
		return rt
	}
	return ""
}

// fullPattern reports whether the pattern names the whole repository.
func (x *Executor) fullPattern() bool { return strings.Contains(x.cfg.RepositoryPattern, "/") }

// ValidRuntime reports whether s is a plain runtime name: a lowercase
// letter or digit, then lowercase letters, digits, "_", "." or "-", at
// most limits.Name bytes. It can never hold a "/", so it cannot reach into
// another namespace of a repository pattern.
func ValidRuntime(s string) bool {
	if s == "" || len(s) > limits.Name || !lowerAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !lowerAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

func lowerAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

// Containers returns the managed containers by runtime, as the Engine
// lists them now.
func (x *Executor) Containers(ctx context.Context) (map[string][]docker.Container, error) {
	all, err := x.cfg.Engine.List(ctx, x.cfg.Selector)
	if err != nil {
		return nil, err
	}
	return x.byRuntime(all), nil
}

// watched returns the managed containers by runtime from the watched
// view, or from the Engine while the view is not current.
func (x *Executor) watched(ctx context.Context) (map[string][]docker.Container, error) {
	if x.cfg.State != nil {
		if all, ok := x.cfg.State.Snapshot(); ok {
			return x.byRuntime(all), nil
		}
	}
	return x.Containers(ctx)
}

func (x *Executor) byRuntime(all []docker.Container) map[string][]docker.Container {
	out := map[string][]docker.Container{}
	for _, c := range all {
		if rt := x.runtimeOf(c); rt != "" {
			out[rt] = append(out[rt], c)
		}
	}
	return out
}

// Inventory is what Hello and health reports say about containers: names,
// IDs, images, digests, state and health; never environment or inspect
// output. It reads the watched view, so an idle agent's heartbeat asks
// the Engine nothing.
func (x *Executor) Inventory(ctx context.Context) ([]*tenantagentv1.RuntimeStatus, error) {
	byRuntime, err := x.watched(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(byRuntime))
	for rt := range byRuntime {
		names = append(names, rt)
	}
	sort.Strings(names)
	var out []*tenantagentv1.RuntimeStatus
	for _, rt := range names {
		cs := byRuntime[rt]
		st := &tenantagentv1.RuntimeStatus{Runtime: rt, ImageRepository: cs[0].Repository}
		sort.Slice(cs, func(i, j int) bool { return cs[i].Name() < cs[j].Name() })
		for _, c := range cs {
			st.Containers = append(st.Containers, containerStatus(c.Status()))
		}
		out = append(out, st)
	}
	return out, nil
}

// check refuses a command the agent's rules do not allow, before anything
// on the host is touched.
func (x *Executor) check(runtime, repo, digest string, containers []docker.Container) error {
	if err := imageref.ValidateDigest(digest); err != nil {
		return fmt.Errorf("refused: %w (only digests are accepted)", err)
	}
	if err := imageref.ValidateRepository(repo); err != nil {
		return fmt.Errorf("refused: %w", err)
	}
	if got := x.runtimeOfRepository(repo); got != runtime {
		return fmt.Errorf("refused: repository %s is not runtime %q's (want a repository named %s)", repo, runtime, strings.ReplaceAll(x.cfg.RepositoryPattern, "{runtime}", runtime))
	}
	if len(x.cfg.AllowRepositories) > 0 {
		for _, allowed := range x.cfg.AllowRepositories {
			if repo == allowed || (strings.HasSuffix(allowed, "/") && strings.HasPrefix(repo, allowed)) {
				return nil
			}
		}
		return fmt.Errorf("refused: repository %s is not on this agent's allow-list", repo)
	}
	return x.checkDefaultAllow(runtime, repo, containers)
}

// checkDefaultAllow is the allow-list when none is configured: the one
// repository the runtime's containers run. With a bare pattern, a
// container in a lookalike repository ("evil-ns/workspace-template-codex")
// counts as the runtime too; if the containers disagree, nothing is
// allowed, so such a container can never widen the list.
func (x *Executor) checkDefaultAllow(runtime, repo string, containers []docker.Container) error {
	seen := map[string]bool{}
	for _, c := range containers {
		seen[c.Repository] = true
	}
	if len(seen) > 1 {
		repos := slices.Sorted(maps.Keys(seen))
		quoted := make([]string, len(repos))
		for i, r := range repos {
			quoted[i] = limits.Quoted(r)
		}
		return fmt.Errorf("refused: runtime %q's containers run %d repositories (%s); with no --allow-repos the agent needs them all on one", runtime, len(repos), strings.Join(quoted, ", "))
	}
	if !seen[repo] {
		return fmt.Errorf("refused: repository %s is not the one runtime %q's containers run, and no allow-list names it", repo, runtime)
	}
	return nil
}

// Progress is a progress report without command ID, sequence and time,
// which the caller stamps.
type Progress = tenantagentv1.CommandProgress

// Hooks connect a command's execution to the journal and the stream.
type Hooks struct {
	// Step journals a container's recreate step before it is taken.
	Step func(docker.RecreateState) error
	// Progress reports progress (best effort).
	Progress func(*Progress)
}

func failed(id, ref string, phase tenantagentv1.CommandPhase, err error) *tenantagentv1.CommandResult {
	return &tenantagentv1.CommandResult{CommandId: id, Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED, Error: err.Error(), FailedPhase: phase, ImageRef: ref}
}

// Prefetch pulls an image without touching containers.
func (x *Executor) Prefetch(ctx context.Context, cmd *tenantagentv1.PrefetchRuntimeImage, hooks Hooks) *tenantagentv1.CommandResult {
	started := timestamppb.Now()
	ref := cmd.GetImageRepository() + "@" + cmd.GetImageDigest()
	byRuntime, err := x.Containers(ctx)
	if err != nil {
		return failed(cmd.GetCommandId(), ref, tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING, err)
	}
	if err := x.check(cmd.GetRuntime(), cmd.GetImageRepository(), cmd.GetImageDigest(), byRuntime[cmd.GetRuntime()]); err != nil {
		return failed(cmd.GetCommandId(), ref, tenantagentv1.CommandPhase_COMMAND_PHASE_UNSPECIFIED, err)
	}
	sig, err := x.verify(ctx, cmd.GetImageRepository(), cmd.GetImageDigest(), hooks)
	if err != nil {
		r := failed(cmd.GetCommandId(), ref, tenantagentv1.CommandPhase_COMMAND_PHASE_VERIFYING, fmt.Errorf("%w; nothing was pulled", err))
		r.Signature = sig
		return r
	}
	pulled, err := x.pull(ctx, ref, cmd.GetImageRepository(), hooks)
	if err != nil {
		r := failed(cmd.GetCommandId(), ref, tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING, err)
		r.Signature = sig
		return r
	}
	return &tenantagentv1.CommandResult{CommandId: cmd.GetCommandId(), Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED, ImageRef: ref,
		StartedAt: started, FinishedAt: timestamppb.Now(), PullDuration: durationpb.New(pulled.Duration), PulledBytes: pulled.Bytes, Signature: sig}
}

// verify checks the image against the signature policy, if there is one,
// before anything is pulled. A refusal is returned as an error for an
// ordinary FAILED result in phase VERIFYING, so the control plane's
// reconcile backs off from it as from any failed refresh. The check is
// returned either way, for the result.
func (x *Executor) verify(ctx context.Context, repo, digest string, hooks Hooks) (*tenantagentv1.SignatureCheck, error) {
	if x.cfg.Signatures == nil {
		return nil, nil
	}
	hooks.Progress(&Progress{Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_VERIFYING, Message: "verifying the signature of " + repo + "@" + digest})
	chk, err := x.cfg.Signatures.Verify(ctx, repo, digest)
	return signatureCheck(chk), err
}

// pull resolves the registry credentials (now, so a rotated token is
// used), refuses if the image would not leave --min-free-disk free, and
// pulls.
func (x *Executor) pull(ctx context.Context, ref, repo string, hooks Hooks) (docker.PullResult, error) {
	ctx, cancel := context.WithTimeout(ctx, x.cfg.PullTimeout)
	defer cancel()
	auth, err := x.cfg.Credentials(repo)
	if err != nil {
		return docker.PullResult{}, err
	}
	if err := x.cfg.Engine.CheckDisk(ctx, ref, auth, x.cfg.MinFreeDisk); err != nil {
		return docker.PullResult{}, err
	}
	hooks.Progress(&Progress{Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING, Message: "pulling " + ref})
	res, err := x.cfg.Engine.Pull(ctx, ref, docker.PullOptions{Auth: auth}, func(p docker.PullProgress) {
		hooks.Progress(&Progress{Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING, Layers: layers(p.Layers), CurrentBytes: p.CurrentBytes, TotalBytes: p.TotalBytes,
			Message: fmt.Sprintf("pulling %s: %s of %s", ref, docker.HumanBytes(p.CurrentBytes), docker.HumanBytes(p.TotalBytes))})
	})
	if err != nil {
		return res, err
	}
	hooks.Progress(&Progress{Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_PULLED, Message: "pulled and verified " + ref})
	return res, nil
}

// Refresh pulls the image and recreates the runtime's containers on it
// (docs/design.md §6): the canary, then the rest in parallel (schedule.go).
// Containers already on the digest are left alone. Once a container rolls
// back, no further container is touched.
// A simulated crash (docker.ErrCrash from hooks.Step) stops it at once,
// as a dead process would: it returns that error and no result.
func (x *Executor) Refresh(ctx context.Context, cmd *tenantagentv1.RefreshRuntimeImage, hooks Hooks) (*tenantagentv1.CommandResult, error) {
	started := timestamppb.Now()
	id, repo, digest := cmd.GetCommandId(), cmd.GetImageRepository(), cmd.GetImageDigest()
	ref := repo + "@" + digest
	byRuntime, err := x.Containers(ctx)
	if err != nil {
		return failed(id, ref, tenantagentv1.CommandPhase_COMMAND_PHASE_UNSPECIFIED, fmt.Errorf("cannot list containers: %w", err)), nil
	}
	containers := byRuntime[cmd.GetRuntime()]
	if len(containers) == 0 {
		return failed(id, ref, tenantagentv1.CommandPhase_COMMAND_PHASE_UNSPECIFIED, fmt.Errorf("refused: unknown runtime %q: no managed container of it on this host", cmd.GetRuntime())), nil
	}
	if err := x.check(cmd.GetRuntime(), repo, digest, containers); err != nil {
		return failed(id, ref, tenantagentv1.CommandPhase_COMMAND_PHASE_UNSPECIFIED, err), nil
	}
	result := &tenantagentv1.CommandResult{CommandId: id, ImageRef: ref, StartedAt: started}
	var todo, current []docker.Container
	for _, c := range containers {
		if c.DigestFor(repo) == digest && c.Inspect.Config.Image == ref {
			current = append(current, c)
		} else {
			todo = append(todo, c)
		}
	}
	todo, current = withNamespaceSharers(todo, current)
	for _, c := range current {
		result.Containers = append(result.Containers, &tenantagentv1.ContainerResult{Name: c.Name(), OldContainerId: c.Inspect.ID, NewContainerId: c.Inspect.ID,
			OldDigest: digest, NewDigest: digest, WasRunning: c.Inspect.State.Running, Outcome: tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ALREADY_CURRENT})
	}
	// Verified before the already-current shortcut too, so every result
	// of an agent with a policy says whether its digest is signed.
	sig, err := x.verify(ctx, repo, digest, hooks)
	result.Signature = sig
	if err != nil {
		return x.nothingChanged(ctx, result, todo, tenantagentv1.CommandPhase_COMMAND_PHASE_VERIFYING, err), nil
	}
	if len(todo) == 0 {
		hooks.Progress(&Progress{Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_CONTAINER_DONE, Message: fmt.Sprintf("all %d containers already run %s", len(containers), digest)})
		return finish(result, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED, ""), nil
	}

	// Nothing is stopped before the image is present and verified.
	pulled, err := x.pull(ctx, ref, repo, hooks)
	if err != nil {
		return x.nothingChanged(ctx, result, todo, tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING, err), nil
	}
	result.PullDuration, result.PulledBytes = durationpb.New(pulled.Duration), pulled.Bytes
	target := docker.Target{Repository: repo, Digest: digest, ImageID: pulled.ImageID}
	outcomes, err := newSchedule(x, ctx, sortedByName(todo), target, x.recreateOptions(cmd), x.parallel(cmd), hooks).run()
	if err != nil {
		return nil, err
	}
	for _, o := range outcomes {
		result.Containers = append(result.Containers, containerResult(o))
	}
	return x.cleanUp(ctx, summarize(result), repo, digest, todo, hooks), nil
}

// nothingChanged is a refresh that failed or was canceled in phase
// (verifying or pulling), before any container was touched.
func (x *Executor) nothingChanged(ctx context.Context, result *tenantagentv1.CommandResult, todo []docker.Container, phase tenantagentv1.CommandPhase, err error) *tenantagentv1.CommandResult {
	if ctx.Err() != nil {
		msg := fmt.Sprintf("canceled while %s; nothing was changed", strings.ToLower(strings.TrimPrefix(phase.String(), "COMMAND_PHASE_")))
		return x.notAttempted(finish(result, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED, msg), todo)
	}
	r := x.notAttempted(finish(result, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED, fmt.Sprintf("%v; nothing was changed", err)), todo)
	r.FailedPhase = phase
	return r
}

// recreateOptions are the agent's defaults, overridden by what cmd says.
func (x *Executor) recreateOptions(cmd *tenantagentv1.RefreshRuntimeImage) docker.RecreateOptions {
	opts := docker.RecreateOptions{HealthGateTimeout: x.cfg.HealthGateTimeout, StabilityWindow: x.cfg.StabilityWindow, Suffix: shortCommand(cmd.GetCommandId()),
		Selector: x.cfg.Selector, CommandID: cmd.GetCommandId()}
	if d := cmd.GetOptions().GetHealthGateTimeout().AsDuration(); d > 0 {
		opts.HealthGateTimeout = d
	}
	if d := cmd.GetOptions().GetStabilityWindow().AsDuration(); d > 0 {
		opts.StabilityWindow = d
	}
	return opts
}

// parallel is how many containers cmd recreates at once after the
// canary: the agent's --max-parallel-recreates, or fewer if cmd says so
// (1: one at a time); a command can never raise it.
func (x *Executor) parallel(cmd *tenantagentv1.RefreshRuntimeImage) int {
	if n := int(cmd.GetOptions().GetMaxParallelContainers()); n > 0 {
		return min(n, x.cfg.MaxParallel)
	}
	return x.cfg.MaxParallel
}

// sortedByName gives refreshes a stable order: the canary and the order
// of the rest do not depend on how the Engine listed them.
func sortedByName(cs []docker.Container) []docker.Container {
	cs = slices.Clone(cs)
	slices.SortFunc(cs, func(a, b docker.Container) int { return strings.Compare(a.Name(), b.Name()) })
	return cs
}

// skipped is a container not attempted because an earlier one failed or
// the command was canceled.
func skipped(c docker.Container) docker.Outcome {
	d := c.DigestFor(c.Repository)
	return docker.Outcome{Name: c.Name(), OldID: c.Inspect.ID, NewID: c.Inspect.ID, OldDigest: d, NewDigest: d, WasRunning: c.Inspect.State.Running,
		Result: docker.ResultNotAttempted, Err: errors.New("not attempted: an earlier container failed or the command was canceled")}
}

func (x *Executor) notAttempted(r *tenantagentv1.CommandResult, todo []docker.Container) *tenantagentv1.CommandResult {
	for _, c := range todo {
		d := c.DigestFor(c.Repository)
		r.Containers = append(r.Containers, &tenantagentv1.ContainerResult{Name: c.Name(), OldContainerId: c.Inspect.ID, NewContainerId: c.Inspect.ID, OldDigest: d, NewDigest: d,
			WasRunning: c.Inspect.State.Running, Outcome: tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_NOT_ATTEMPTED})
	}
	return r
}

// Recover finishes or rolls back recreates a previous process left half
// done, and returns the command's result.
func (x *Executor) Recover(ctx context.Context, id, ref string, states []docker.RecreateState) *tenantagentv1.CommandResult {
	result := &tenantagentv1.CommandResult{CommandId: id, ImageRef: ref, StartedAt: timestamppb.Now()}
	for _, st := range states {
		if st.Step == docker.StepDone {
			result.Containers = append(result.Containers, &tenantagentv1.ContainerResult{Name: st.Name, OldContainerId: st.OldID, NewContainerId: st.NewID,
				OldDigest: st.OldDigest, NewDigest: st.NewDigest, WasRunning: st.WasRunning, Outcome: tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED})
			continue
		}
		x.cfg.Logger.Warn("recovering an interrupted recreate", "command", id, "container", st.Name, "step", st.Step)
		if st.CommandID == "" {
			st.CommandID = id // journaled before the state carried it
		}
		result.Containers = append(result.Containers, containerResult(x.cfg.Engine.Recover(ctx, st, x.cfg.Selector)))
	}
	return summarize(result)
}

// failedAlone reports whether o is a container's own failure before
// anything was changed: not attempted, with the step that failed. A
// container skipped (after a rollback, or canceled) has no failed step.
func failedAlone(o docker.Outcome) bool {
	return o.Result == docker.ResultNotAttempted && o.FailedStep != ""
}

// failedAloneResult is failedAlone on the wire form, which summarize reads.
func failedAloneResult(r *tenantagentv1.ContainerResult) bool {
	return r.GetOutcome() == tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_NOT_ATTEMPTED && r.GetFailedPhase() != tenantagentv1.CommandPhase_COMMAND_PHASE_UNSPECIFIED
}

// summarize decides a refresh's outcome from its containers' outcomes:
// SUCCEEDED if all are on the digest; PARTIAL if some moved and others did
// not; with none moved, ROLLED_BACK if one was rolled back (or failed to
// be), FAILED if one failed alone, CANCELED if they were only skipped.
func summarize(r *tenantagentv1.CommandResult) *tenantagentv1.CommandResult {
	var errs []string
	var moved, rolledBack, failed, skipped int
	note := func(c *tenantagentv1.ContainerResult) {
		errs = append(errs, c.GetName()+": "+c.GetError())
		if r.FailedPhase == tenantagentv1.CommandPhase_COMMAND_PHASE_UNSPECIFIED {
			r.FailedPhase = c.GetFailedPhase()
		}
	}
	for _, c := range r.GetContainers() {
		switch {
		case c.GetOutcome() == tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED:
			moved++
		case c.GetOutcome() == tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ROLLED_BACK, c.GetOutcome() == tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_FAILED:
			rolledBack++
			note(c)
		case failedAloneResult(c):
			failed++
			note(c)
		case c.GetOutcome() == tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_NOT_ATTEMPTED:
			skipped++
		}
	}
	outcome := tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED
	switch {
	case rolledBack+failed+skipped == 0:
	case moved > 0:
		outcome = tenantagentv1.CommandOutcome_COMMAND_OUTCOME_PARTIAL
	case rolledBack > 0:
		outcome = tenantagentv1.CommandOutcome_COMMAND_OUTCOME_ROLLED_BACK
	case failed > 0:
		outcome = tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED
	default:
		outcome = tenantagentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED
	}
	return finish(r, outcome, strings.Join(errs, "; "))
}

func finish(r *tenantagentv1.CommandResult, outcome tenantagentv1.CommandOutcome, msg string) *tenantagentv1.CommandResult {
	r.Outcome, r.FinishedAt = outcome, timestamppb.Now()
	if msg != "" {
		r.Error = msg
	}
	return r
}

// shortCommand makes a command ID fit in a container name.
func shortCommand(id string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimPrefix(id, "c-")) {
		if (r >= 'a' && r <= 'z' || r >= '0' && r <= '9') && b.Len() < 8 {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "cmd"
	}
	return b.String()
}
