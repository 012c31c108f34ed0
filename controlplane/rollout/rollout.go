// Package rollout promotes a runtime pin and rolls it to the fleet:
// optionally a prefetch everywhere first, then canary tenants one at a
// time, then the rest at most N at once, halting after M failures. A
// rollout runs on the control plane's lifetime, not the caller's: it goes
// on when the caller disconnects and resumes after a restart, reusing the
// commands it already issued.
//
// Replicas sharing a store run each rollout once: the replica running it
// holds a lease on its row (owner, epoch, lease end) and renews it; every
// write of the rollout is fenced by (owner, epoch). When the owner stops
// renewing (it died, or lost the store), another replica claims the
// rollout once the lease ends and resumes it with the same commands; the
// old owner, if alive, stops as soon as it learns, writing nothing. The
// store's one command of a kind per rollout and agent keeps two owners
// from ever refreshing a tenant twice in between.
package rollout

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	"github.com/molecule-ai/tenant-agent/controlplane/dispatch"
	"github.com/molecule-ai/tenant-agent/controlplane/pubsub"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/imageref"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// MaxNotes bounds the free text stored with a pin.
const MaxNotes = 4096

// recheckEvery is how long await trusts a quiet command before it reads
// it again: its agent may have gone offline meanwhile.
const recheckEvery = 30 * time.Second

// rolloutEventBuffer is how many events a promote's caller may fall behind
// by: a fleet of thousands sends a burst of several events per tenant.
const rolloutEventBuffer = 1 << 16

// Store is what a rollout keeps: its pin, its own record (created with
// PutRollout, claimed, then written fenced by its lease) and its commands.
type Store interface {
	RecordPin(ctx context.Context, p store.Pin) error
	PutRollout(ctx context.Context, r store.Rollout) error
	ClaimRollouts(ctx context.Context, owner string, now, until time.Time, except []string) ([]store.Rollout, error)
	UpdateRollout(ctx context.Context, r store.Rollout) error
	GetRollout(ctx context.Context, id string) (store.Rollout, error)
	ListRollouts(ctx context.Context, runtime string, state store.RolloutState) ([]store.Rollout, error)
	SetRolloutState(ctx context.Context, r store.Rollout, from []store.RolloutState) (store.Rollout, error)
	ListCommands(ctx context.Context, f store.CommandFilter) ([]*store.Command, error)
	GetCommand(ctx context.Context, id string) (*store.Command, error)
}

// Fleet is what a rollout reads and changes of the fleet (fleet.Fleet).
type Fleet interface {
	Held(tenant string) (store.Hold, bool)
	SetPin(p store.Pin)
}

// Dispatcher chooses targets and builds, issues and follows commands
// (dispatch.Dispatcher).
type Dispatcher interface {
	Targets(tenant, runtime string) []store.Agent
	Command(req dispatch.Request, a store.Agent) (*store.Command, error)
	Issue(ctx context.Context, cmds []*store.Command) error
	// WatchStates subscribes to a command's stored changes.
	WatchStates(commandID string) *pubsub.Subscription[dispatch.Update]
	// Cancel cancels a command not yet sent at once (an abort's).
	Cancel(ctx context.Context, id, reason string) error
}

// Presence tells whether an agent is connected (session.Registry): a
// command for an offline agent is left waiting for it.
type Presence interface {
	Online(agent string) bool
}

// Signatures decides whether an image may be promoted by its signatures
// (signing.Checker).
type Signatures interface {
	// Check returns an error (of a cperr kind) when ref must not be
	// promoted, or a warning for the caller when a problem is let through.
	Check(ctx context.Context, ref imageref.Ref) (warning string, err error)
}

// Config configures Rollouts.
type Config struct {
	Store      Store
	Fleet      Fleet
	Dispatcher Dispatcher
	Presence   Presence
	// Signatures, if set, checks every promoted image before its pin is
	// recorded; nil promotes without a check.
	Signatures Signatures
	Logger     *slog.Logger
	// DefaultParallel is how many tenants refresh at once when a promote
	// does not say.
	DefaultParallel int
	Now             func() time.Time
	// After is the clock await re-reads a quiet command by (time.After);
	// tests fire it at will.
	After func(time.Duration) <-chan time.Time
	// Replica names this control plane among those sharing the store: the
	// owner of the rollouts it runs. A restarted replica with the same
	// name takes its rollouts back at once; others wait for their lease
	// to end. Default "local", for a store only this process uses.
	Replica string
	// Lease is how long a rollout stays this replica's without a renewal.
	// It is renewed, and other replicas' expired rollouts are looked for,
	// every Lease/3. Default 15s.
	Lease time.Duration
}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Store == nil || c.Fleet == nil || c.Dispatcher == nil || c.Presence == nil {
		return errors.New("rollout: Store, Fleet, Dispatcher and Presence are required")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("component", "rollout")
	if c.DefaultParallel <= 0 {
		c.DefaultParallel = 10
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.After == nil {
		c.After = time.After
	}
	if c.Replica == "" {
		c.Replica = "local"
	}
	if c.Lease <= 0 {
		c.Lease = 15 * time.Second
	}
	return nil
}

// renewEvery is how often a lease is renewed and expired ones are looked
// for: a third of the lease, so two renewals may fail before it ends.
func (c *Config) renewEvery() time.Duration { return max(c.Lease/3, time.Millisecond) }

// Request is a promote: the pin to record and how to roll it out.
type Request struct {
	Runtime  string
	ImageRef string
	GitSHA   string
	Notes    string
	Options  store.RolloutOptions
}

// Counts are a rollout's tenants by outcome so far; the rest wait for
// their agent to connect.
type Counts struct {
	Tenants, Succeeded, Failed, Skipped uint32
}

// Event is one step of a rollout, for its watchers. Kind, Phase and State
// are the API's enums, shared vocabulary with the store.
type Event struct {
	Time      time.Time
	RolloutID string
	Kind      controlplanev1.RolloutEventKind
	Phase     controlplanev1.RolloutPhase
	Tenant    string
	CommandID string
	State     controlplanev1.CommandState
	Message   string
	// Pin is set on the PIN_RECORDED event only.
	Pin *store.Pin
	// Counts is set on every event but PIN_RECORDED.
	Counts *Counts
}

// Rollouts starts and runs rollouts.
type Rollouts struct {
	cfg       Config
	events    *pubsub.Hub[string, Event]
	ctx       context.Context
	wg        sync.WaitGroup
	claimLoop sync.Once

	// claiming is held across a claim and across Promote's create, so a
	// claim never takes a rollout this process is starting: its except
	// list (running) is then complete.
	claiming sync.Mutex
	running  map[string]bool // rollout IDs with a run in this process
	// stops holds each run here, by rollout ID, so an abort stops it at
	// once (on another replica, the lost lease stops it).
	stops sync.Map // rollout ID -> *run
}

// New returns Rollouts whose rollouts run until ctx ends.
func New(ctx context.Context, cfg Config) (*Rollouts, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	return &Rollouts{cfg: cfg, events: pubsub.NewHub[string, Event](rolloutEventBuffer), ctx: ctx, running: map[string]bool{}}, nil
}

// Wait waits for running rollouts to return after the lifetime ended.
func (r *Rollouts) Wait() { r.wg.Wait() }

// Promote validates the request, checks the image's signatures (if
// Config.Signatures is set), records the pin and starts the rollout. The
// subscription receives the rollout's events, PIN_RECORDED first (telling
// any signature warning); closing it does not stop the rollout.
func (r *Rollouts) Promote(ctx context.Context, caller identity.Identity, req Request) (store.Rollout, *pubsub.Subscription[Event], error) {
	ref, err := validate(req)
	if err != nil {
		return store.Rollout{}, nil, err
	}
	for _, t := range req.Options.CanaryTenants {
		if len(r.targets(req.Runtime, t)) == 0 {
			return store.Rollout{}, nil, cperr.NotFound("canary tenant %s has no agent reporting runtime %s", limits.Quoted(t), limits.Quoted(req.Runtime))
		}
	}
	var warning string
	if r.cfg.Signatures != nil {
		if warning, err = r.cfg.Signatures.Check(ctx, ref); err != nil {
			return store.Rollout{}, nil, err
		}
	}
	now := r.cfg.Now()
	pin := store.Pin{
		Runtime: req.Runtime, TemplateName: path.Base(ref.Repository), Repository: ref.Repository, Digest: ref.Digest,
		GitSHA: req.GitSHA, PromotedAt: now, PromotedBy: caller.ID, Notes: req.Notes,
	}
	if err := r.cfg.Store.RecordPin(ctx, pin); err != nil {
		return store.Rollout{}, nil, fmt.Errorf("record pin: %w", err)
	}
	ro := store.Rollout{
		ID: "r-" + strings.ToLower(rand.Text()), Runtime: pin.Runtime, Repository: pin.Repository, Digest: pin.Digest,
		Options: req.Options, State: store.RolloutRunning, RequestedBy: caller.ID, CreatedAt: now, UpdatedAt: now,
		Owner: r.cfg.Replica, Epoch: 1, LeaseUntil: now.Add(r.cfg.Lease),
	}
	r.claiming.Lock()
	err = r.cfg.Store.PutRollout(ctx, ro)
	if err == nil {
		r.running[ro.ID] = true
	}
	r.claiming.Unlock()
	if err != nil {
		return store.Rollout{}, nil, fmt.Errorf("record rollout: %w", err)
	}
	r.cfg.Fleet.SetPin(pin)
	r.cfg.Logger.Info("pin promoted", "runtime", pin.Runtime, "image", pin.Ref(), "by", caller.ID, "rollout", ro.ID)
	recorded := &Event{RolloutID: ro.ID, Kind: controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_PIN_RECORDED,
		Pin: &pin, Message: "pin recorded: " + pin.Runtime + " -> " + pin.Ref()}
	if warning != "" {
		recorded.Message += "; " + warning
	}
	sub := r.events.Subscribe(ro.ID)
	r.start(ro, recorded)
	return ro, sub, nil
}

func validate(req Request) (imageref.Ref, error) {
	if !identity.ValidName(req.Runtime) {
		return imageref.Ref{}, cperr.Invalid("runtime %s: want 1-63 lowercase letters, digits or hyphens", limits.Quoted(req.Runtime))
	}
	ref, err := imageref.Parse(req.ImageRef)
	if err != nil {
		return imageref.Ref{}, cperr.Invalid("%v", err)
	}
	if len(req.Notes) > MaxNotes {
		return imageref.Ref{}, cperr.Invalid("notes are %d bytes, at most %d", len(req.Notes), MaxNotes)
	}
	if len(req.GitSHA) > 64 {
		return imageref.Ref{}, cperr.Invalid("git_sha is %d characters, at most 64", len(req.GitSHA))
	}
	for _, t := range req.Options.CanaryTenants {
		if !identity.ValidName(t) {
			return imageref.Ref{}, cperr.Invalid("canary tenant %s: want 1-63 lowercase letters, digits or hyphens", limits.Quoted(t))
		}
	}
	return ref, nil
}

// Resume takes over the rollouts no replica runs: at once those a
// previous run of this replica left running, and those of any replica
// once their lease ends without a renewal. It claims once before it
// returns, then every Lease/3 until the lifetime ends.
func (r *Rollouts) Resume(ctx context.Context) error {
	if err := r.claim(ctx); err != nil {
		return err
	}
	r.claimLoop.Do(func() {
		r.wg.Go(func() {
			tick := time.NewTicker(r.cfg.renewEvery())
			defer tick.Stop()
			for {
				select {
				case <-r.ctx.Done():
					return
				case <-tick.C:
					if err := r.claim(r.ctx); err != nil && r.ctx.Err() == nil {
						r.cfg.Logger.Warn("cannot claim rollouts; trying again", "error", err)
					}
				}
			}
		})
	})
	return nil
}

// claim claims the rollouts this replica may take and starts a run for
// each; the ones it runs already are not claimed again (that would bump
// their epoch under their feet).
func (r *Rollouts) claim(ctx context.Context) error {
	if r.ctx.Err() != nil {
		return nil // shutting down: a claim now would only hold others off for a lease
	}
	r.claiming.Lock()
	defer r.claiming.Unlock()
	now := r.cfg.Now()
	claimed, err := r.cfg.Store.ClaimRollouts(ctx, r.cfg.Replica, now, now.Add(r.cfg.Lease), slices.Collect(maps.Keys(r.running)))
	if err != nil {
		return err
	}
	for _, ro := range claimed {
		r.cfg.Logger.Info("resuming rollout", "rollout", ro.ID, "runtime", ro.Runtime, "digest", ro.Digest, "epoch", ro.Epoch)
		r.running[ro.ID] = true
		r.start(ro, nil)
	}
	return nil
}

// start runs a rollout this replica owns (it is in running) on a context
// of its own, with a goroutine holding its lease; losing the lease cancels
// the context. first, if set, is published before anything else (a
// promote's PIN_RECORDED).
func (r *Rollouts) start(ro store.Rollout, first *Event) {
	ctx, cancel := context.WithCancel(r.ctx)
	x := &run{Rollouts: r, ro: ro, cancel: cancel}
	r.stops.Store(ro.ID, x)
	r.wg.Go(func() { x.hold(ctx) })
	r.wg.Go(func() {
		defer func() {
			cancel() // ends hold
			r.stops.CompareAndDelete(ro.ID, x)
			x.release()
			r.claiming.Lock()
			delete(r.running, ro.ID)
			r.claiming.Unlock()
		}()
		x.execute(ctx, first)
	})
}

// targets returns, by tenant, the agents that report the runtime; a
// non-empty tenant filters.
func (r *Rollouts) targets(runtime, tenant string) map[string][]store.Agent {
	out := map[string][]store.Agent{}
	for _, a := range r.cfg.Dispatcher.Targets(tenant, runtime) {
		out[a.Tenant] = append(out[a.Tenant], a)
	}
	return out
}

// run is one execution of a rollout.
type run struct {
	*Rollouts
	cancel context.CancelFunc

	// lease guards ro's changing fields (state, message, updated_at,
	// lease_until; the others never change) and ended, and is held across
	// each write of them, so a renewal can never land after the end and
	// put the rollout back to running.
	lease sync.Mutex
	ro    store.Rollout
	ended bool

	mu     sync.Mutex
	counts Counts
	// issued holds the IDs of the commands this run issued, whose
	// PENDING state its COMMAND_ISSUED event already told.
	issued sync.Map
	// preissued holds, per tenant of a first window, the commands preissue
	// journaled for it (and those it found), with their subscriptions, so
	// that tenant need not read them back: one query a tenant, thousands
	// in a fan-out.
	preissued sync.Map // tenant -> []follow
}

// hold renews the run's lease every Lease/3 until ctx ends. It stops the
// run when the lease is lost (another replica claimed the rollout) or
// ends without a renewal (this replica cannot reach the store, and
// another one may take the rollout over): either way the run must not go
// on issuing commands.
func (x *run) hold(ctx context.Context) {
	tick := time.NewTicker(x.cfg.renewEvery())
	defer tick.Stop()
	expiry := time.NewTimer(x.leaseLeft())
	defer expiry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-expiry.C:
			x.cfg.Logger.Warn("rollout lease ended without a renewal: stopping it here; a replica that reaches the store takes it over",
				"rollout", x.ro.ID, "replica", x.cfg.Replica)
			x.cancel()
			return
		case <-tick.C:
			err := x.renew(ctx)
			switch {
			case err == nil:
				expiry.Reset(x.leaseLeft())
			case errors.Is(err, store.ErrLeaseLost):
				x.cfg.Logger.Warn("rollout taken over by another replica: stopping it here", "rollout", x.ro.ID, "replica", x.cfg.Replica, "error", err)
				x.cancel()
				return
			case ctx.Err() == nil:
				x.cfg.Logger.Warn("cannot renew rollout lease; trying again", "rollout", x.ro.ID, "error", err)
			}
		}
	}
}

func (x *run) leaseLeft() time.Duration {
	x.lease.Lock()
	defer x.lease.Unlock()
	return x.ro.LeaseUntil.Sub(x.cfg.Now())
}

// renew extends the lease by Lease from now. The write may take no longer
// than the lease has left: past it, the lease is not this replica's.
func (x *run) renew(ctx context.Context) error {
	x.lease.Lock()
	defer x.lease.Unlock()
	if x.ended {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, x.ro.LeaseUntil.Sub(x.cfg.Now()))
	defer cancel()
	ro := x.ro
	ro.LeaseUntil = x.cfg.Now().Add(x.cfg.Lease)
	if err := x.cfg.Store.UpdateRollout(ctx, ro); err != nil {
		return err
	}
	x.ro.LeaseUntil = ro.LeaseUntil
	return nil
}

// release gives up the lease of a run that stopped before the end (this
// replica is shutting down), so another replica takes the rollout over at
// its next claim instead of a lease later. Fenced: a lease already lost
// stays with its new owner.
func (x *run) release() {
	x.lease.Lock()
	defer x.lease.Unlock()
	if x.ended {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ro := x.ro
	ro.LeaseUntil = time.Time{}
	if err := x.cfg.Store.UpdateRollout(ctx, ro); err == nil {
		x.ro.LeaseUntil = ro.LeaseUntil
	}
}

// finish records the rollout's end, fenced by its lease.
func (x *run) finish(ctx context.Context, state store.RolloutState, message string) error {
	x.lease.Lock()
	defer x.lease.Unlock()
	ro := x.ro
	ro.State, ro.Message, ro.UpdatedAt = state, message, x.cfg.Now()
	if err := x.cfg.Store.UpdateRollout(ctx, ro); err != nil {
		return err
	}
	// Only the fields that change: the rest are read unlocked.
	x.ro.State, x.ro.Message, x.ro.UpdatedAt, x.ended = ro.State, ro.Message, ro.UpdatedAt, true
	return nil
}

type outcome int

const (
	succeeded outcome = iota
	failedOutcome
	skipped
	pending // the agent is offline; its command waits for it
	// failedBefore is a failure from before an operator resumed the
	// rollout: counted, but it neither halts it nor stops canaries.
	failedBefore
)

func (x *run) emit(kind controlplanev1.RolloutEventKind, phase controlplanev1.RolloutPhase, tenant string, c *store.Command, msg string) {
	x.mu.Lock()
	counts := x.counts
	x.mu.Unlock()
	ev := Event{Time: x.cfg.Now(), RolloutID: x.ro.ID, Kind: kind, Phase: phase, Tenant: tenant, Message: msg, Counts: &counts}
	if c != nil {
		ev.CommandID, ev.State = c.ID, c.State
	}
	x.events.Publish(x.ro.ID, ev)
}

func (x *run) count(o outcome) {
	x.mu.Lock()
	defer x.mu.Unlock()
	switch o {
	case succeeded:
		x.counts.Succeeded++
	case failedOutcome, failedBefore:
		x.counts.Failed++
	case skipped:
		x.counts.Skipped++
	}
}

// execute runs the rollout until it ends or ctx does; ctx ends when the
// lifetime does or the lease is lost, and then nothing more is written.
func (x *run) execute(ctx context.Context, first *Event) {
	opts := x.ro.Options
	if first != nil {
		ev := *first
		ev.Time = x.cfg.Now()
		x.events.Publish(x.ro.ID, ev)
	}

	targets := x.targets(x.ro.Runtime, "")
	tenants := make([]string, 0, len(targets))
	for t := range targets {
		tenants = append(tenants, t)
	}
	sort.Strings(tenants)
	x.counts.Tenants = uint32(len(tenants))

	var canaries, rest []string
	for _, t := range tenants {
		if h, held := x.cfg.Fleet.Held(t); held {
			x.count(skipped)
			x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_TENANT_SKIPPED, 0, t, nil, "tenant is held: "+h.Reason)
			continue
		}
		if slices.Contains(opts.CanaryTenants, t) {
			canaries = append(canaries, t)
		} else {
			rest = append(rest, t)
		}
	}
	// Canaries run in the order given.
	sort.SliceStable(canaries, func(i, j int) bool {
		return slices.Index(opts.CanaryTenants, canaries[i]) < slices.Index(opts.CanaryTenants, canaries[j])
	})
	parallel := int(opts.MaxParallelTenants)
	if parallel <= 0 {
		parallel = x.cfg.DefaultParallel
	}

	if opts.Prefetch {
		phase := controlplanev1.RolloutPhase_ROLLOUT_PHASE_PREFETCH
		x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_PHASE_STARTED, phase, "", nil, "prefetching on "+countTenants(len(canaries)+len(rest)))
		// A failed prefetch does not count: the refresh pulls again.
		always := func() bool { return true }
		x.each(ctx, append(slices.Clone(canaries), rest...), parallel, always, func(t string) {
			x.tenant(ctx, phase, controlplanev1.CommandKind_COMMAND_KIND_PREFETCH, t, targets[t])
		})
	}

	halted := ""
	if len(canaries) > 0 {
		phase := controlplanev1.RolloutPhase_ROLLOUT_PHASE_CANARY
		x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_PHASE_STARTED, phase, "", nil, fmt.Sprintf("refreshing %d canary tenants one at a time", len(canaries)))
		for _, t := range canaries {
			o := x.tenant(ctx, phase, controlplanev1.CommandKind_COMMAND_KIND_REFRESH, t, targets[t])
			x.count(o)
			if o != succeeded && o != failedBefore {
				halted = "canary tenant " + t + " did not succeed"
				break
			}
		}
	}

	if halted == "" && len(rest) > 0 {
		phase := controlplanev1.RolloutPhase_ROLLOUT_PHASE_FLEET
		x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_PHASE_STARTED, phase, "", nil, fmt.Sprintf("refreshing %s, %d at a time", countTenants(len(rest)), parallel))
		limit := opts.HaltAfterFailures
		var mu sync.Mutex
		var failures uint32
		// The first window of tenants is journaled in one transaction;
		// later tenants follow one by one as slots free up.
		x.preissue(ctx, phase, controlplanev1.CommandKind_COMMAND_KIND_REFRESH, rest[:min(parallel, len(rest))], targets)
		belowLimit := func() bool {
			mu.Lock()
			defer mu.Unlock()
			return limit == 0 || failures < limit
		}
		started := x.each(ctx, rest, parallel, belowLimit, func(t string) {
			o := x.tenant(ctx, phase, controlplanev1.CommandKind_COMMAND_KIND_REFRESH, t, targets[t])
			x.count(o)
			if o == failedOutcome {
				mu.Lock()
				failures++
				mu.Unlock()
			}
		})
		if limit > 0 && failures >= limit {
			halted = fmt.Sprintf("%d of its tenants failed (halt after %d)", failures, limit)
		}
		for _, t := range rest[started:] {
			if ctx.Err() != nil {
				break // stopped, not halted: another run goes on with them
			}
			x.count(skipped)
			x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_TENANT_SKIPPED, phase, t, nil, "not started: rollout halted")
		}
	}
	if ctx.Err() != nil {
		// Shutting down or lost the lease: the rollout stays RUNNING and
		// this replica or another resumes it.
		return
	}

	kind, state, message := controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED, store.RolloutCompleted, x.summary()
	if halted != "" {
		kind, state, message = controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED, store.RolloutHalted, "halted: "+halted+"; "+x.summary()
	}
	if err := x.finish(ctx, state, message); err != nil {
		// Unrecorded, the rollout stays RUNNING: the replica that owns it
		// next (another one, or this one once this run is gone) resumes it,
		// finds every command done and records the end.
		if errors.Is(err, store.ErrLeaseLost) {
			x.cfg.Logger.Warn("rollout taken over by another replica before its end was recorded; that replica finishes it", "rollout", x.ro.ID, "replica", x.cfg.Replica)
		} else {
			x.cfg.Logger.Error("cannot record rollout end; it will be resumed to record it", "rollout", x.ro.ID, "error", err)
		}
		return
	}
	x.cfg.Logger.Info("rollout ended", "rollout", x.ro.ID, "runtime", x.ro.Runtime, "state", state, "message", message)
	x.emit(kind, 0, "", nil, message)
}

func (x *run) summary() string {
	x.mu.Lock()
	defer x.mu.Unlock()
	c := &x.counts
	waiting := c.Tenants - c.Succeeded - c.Failed - c.Skipped
	noun := "tenants"
	if c.Tenants == 1 {
		noun = "tenant"
	}
	return fmt.Sprintf("%d %s: %d succeeded, %d failed, %d skipped, %d waiting for their agent to connect", c.Tenants, noun, c.Succeeded, c.Failed, c.Skipped, waiting)
}

// each runs fn for tenants in order, at most parallel at once. Before each
// start (once a slot is free, so after the latest finish) it asks
// canStart; it stops at the first no or when ctx ends, and returns how
// many tenants it started.
func (x *run) each(ctx context.Context, tenants []string, parallel int, canStart func() bool, fn func(string)) int {
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	started := 0
	for _, t := range tenants {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil || !canStart() {
			break
		}
		started++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fn(t)
		}()
	}
	wg.Wait()
	return started
}

// follow is a command a tenant waits for, with its subscription.
type follow struct {
	c   *store.Command
	sub *pubsub.Subscription[dispatch.Update]
	// issued is set when c is the command as this run journals it, and
	// sub was made before: every later change comes on sub, so await
	// need not read the command back.
	issued bool
}

// watch subscribes to cmds' changes; those among fresh are about to be
// issued.
func (x *run) watch(cmds, fresh []*store.Command) []follow {
	out := make([]follow, len(cmds))
	for i, c := range cmds {
		out[i] = follow{c: c, sub: x.cfg.Dispatcher.WatchStates(c.ID), issued: slices.Contains(fresh, c)}
	}
	return out
}

func unwatch(fs []follow) {
	for _, f := range fs {
		f.sub.Close()
	}
}

// preissue journals and sends the commands of several tenants at once
// (one transaction for the lot), subscribed to before; tenant then
// follows them.
func (x *run) preissue(ctx context.Context, phase controlplanev1.RolloutPhase, kind controlplanev1.CommandKind, tenants []string, targets map[string][]store.Agent) {
	existing, err := x.cfg.Store.ListCommands(ctx, store.CommandFilter{RolloutID: x.ro.ID, Kind: kind})
	if err != nil {
		return // each tenant reports it when it runs
	}
	var fresh []*store.Command
	planned := map[string][]follow{}
	defer func() {
		for _, fs := range planned {
			unwatch(fs) // not handed to their tenants
		}
	}()
	for _, t := range tenants {
		cmds, f, err := x.plan(existing, kind, t, targets[t])
		if err != nil {
			continue // the tenant reports it when it runs
		}
		planned[t] = x.watch(cmds, f)
		fresh = append(fresh, f...)
	}
	if len(fresh) == 0 {
		return
	}
	if err := x.cfg.Dispatcher.Issue(ctx, fresh); err != nil {
		level := slog.LevelError
		if errors.Is(err, store.ErrConflict) || ctx.Err() != nil {
			level = slog.LevelInfo // another owner of the rollout issued some meanwhile; tenants find them
		}
		x.cfg.Logger.Log(ctx, level, "cannot issue the first window; tenants will issue one by one", "rollout", x.ro.ID, "error", err)
		return
	}
	for _, c := range fresh {
		x.issued.Store(c.ID, true)
		x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_ISSUED, phase, c.Tenant, c, "issued to "+c.Agent)
	}
	for t, fs := range planned {
		x.preissued.Store(t, fs)
	}
	clear(planned)
}

// takePreissued returns, once, the refreshes preissue journaled for
// tenant, on its first attempt.
func (x *run) takePreissued(kind controlplanev1.CommandKind, tenant string, attempt int) ([]follow, bool) {
	if kind != controlplanev1.CommandKind_COMMAND_KIND_REFRESH || attempt != 1 {
		return nil, false
	}
	fs, ok := x.preissued.LoadAndDelete(tenant)
	if !ok {
		return nil, false
	}
	return fs.([]follow), true
}

// plan returns a tenant's commands for this rollout: the ones already
// journaled (among existing), and fresh ones, not yet journaled, for its
// agents without one.
func (x *run) plan(existing []*store.Command, kind controlplanev1.CommandKind, tenant string, agents []store.Agent) (cmds, fresh []*store.Command, err error) {
	for _, a := range agents {
		i := slices.IndexFunc(existing, func(c *store.Command) bool { return c.Agent == a.Identity })
		if i >= 0 {
			cmds = append(cmds, existing[i])
			continue
		}
		r := dispatch.Request{Kind: kind, Runtime: x.ro.Runtime, Repository: x.ro.Repository, Digest: x.ro.Digest,
			RequestedBy: x.ro.RequestedBy, RolloutID: x.ro.ID}
		if n := x.ro.Options.MaxParallelContainers; n > 0 && kind == controlplanev1.CommandKind_COMMAND_KIND_REFRESH {
			r.Options = &tenantagentv1.RefreshOptions{MaxParallelContainers: n}
		}
		c, err := x.cfg.Dispatcher.Command(r, a)
		if err != nil {
			return nil, nil, err
		}
		cmds, fresh = append(cmds, c), append(fresh, c)
	}
	return cmds, fresh, nil
}

// tenant refreshes (or prefetches) one tenant: one command per agent that
// reports the runtime, reusing commands this rollout already issued, and
// waits for them unless the agent is offline.
func (x *run) tenant(ctx context.Context, phase controlplanev1.RolloutPhase, kind controlplanev1.CommandKind, tenant string, agents []store.Agent) outcome {
	var follows []follow
	defer func() { unwatch(follows) }()
	for attempt := 1; ; attempt++ {
		if pre, ok := x.takePreissued(kind, tenant, attempt); ok {
			follows = pre // journaled by preissue, subscribed to before
			break
		}
		existing, err := x.cfg.Store.ListCommands(ctx, store.CommandFilter{RolloutID: x.ro.ID, Tenant: tenant, Kind: kind})
		if err != nil {
			x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_UPDATED, phase, tenant, nil, "cannot read commands: "+err.Error())
			return failedOutcome
		}
		cmds, fresh, err := x.plan(existing, kind, tenant, agents)
		if err != nil {
			x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_UPDATED, phase, tenant, nil, "cannot build commands: "+err.Error())
			return failedOutcome
		}
		// Subscribe before issuing, so no update is missed.
		unwatch(follows)
		follows = x.watch(cmds, fresh)
		if len(fresh) == 0 {
			break
		}
		err = x.cfg.Dispatcher.Issue(ctx, fresh)
		if err == nil {
			for _, c := range fresh {
				x.issued.Store(c.ID, true)
				x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_ISSUED, phase, tenant, c, "issued to "+c.Agent)
			}
			break
		}
		// A conflict is another owner of this rollout (one that held it
		// before, or still thinks it does) having journaled a command for
		// one of these agents meanwhile: read again and follow that one.
		// A few times at most: each conflict means a command now exists.
		if ctx.Err() != nil {
			return pending // stopped: whoever runs the rollout next follows up
		}
		if !errors.Is(err, store.ErrConflict) || attempt == 3 {
			x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_UPDATED, phase, tenant, nil, "cannot issue: "+err.Error())
			return failedOutcome
		}
	}
	result := succeeded
	for _, f := range follows {
		o := x.await(ctx, phase, tenant, f)
		switch {
		case o == failedOutcome:
			result = failedOutcome
		case o == failedBefore && result != failedOutcome:
			result = failedBefore
		case o == pending && result == succeeded:
			result = pending
		case o == skipped && result == succeeded:
			result = skipped
		}
	}
	return result
}

// await follows a command until it ends; a command whose agent is offline
// is left waiting for it.
func (x *run) await(ctx context.Context, phase controlplanev1.RolloutPhase, tenant string, f follow) outcome {
	c, sub := f.c, f.sub
	// told is the state watchers last heard of: a state reached before
	// this await subscribed (a first window is issued before its tenants
	// follow it) is told once from the store, never twice.
	var told controlplanev1.CommandState
	if _, ok := x.issued.Load(c.ID); ok {
		told = controlplanev1.CommandState_COMMAND_STATE_PENDING
	}
	// The store is read at most once (not at all for a command this run
	// just issued, subscribed to before), then again only on a recheck
	// or after falling behind: an update carries the command as stored.
	stored, err := c, error(nil)
	if !f.issued {
		stored, err = x.cfg.Store.GetCommand(ctx, c.ID)
	}
	for {
		if err != nil {
			return failedOutcome
		}
		if store.Terminal(stored.State) {
			x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_UPDATED, phase, tenant, stored, describe(stored))
			o := classify(stored.State)
			if o == failedOutcome && stored.UpdatedAt.Before(x.ro.ResumedAt) {
				o = failedBefore
			}
			return o
		}
		if stored.State == controlplanev1.CommandState_COMMAND_STATE_PENDING && !x.cfg.Presence.Online(stored.Agent) {
			x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_UPDATED, phase, tenant, stored, "agent offline: the command waits for it to connect")
			return pending
		}
		// A state told once, however many updates repeat it.
		if stored.State != told {
			told = stored.State
			x.emit(controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_UPDATED, phase, tenant, stored, describe(stored))
		}
		select {
		case <-ctx.Done():
			return pending
		case u, ok := <-sub.C:
			if !ok {
				sub = x.cfg.Dispatcher.WatchStates(c.ID) // fell behind: re-attach and re-read
				defer sub.Close()
				stored, err = x.cfg.Store.GetCommand(ctx, c.ID)
				continue
			}
			// Progress leaves the stored state as it is; an update
			// published late never takes the state back.
			if u.Command != nil && store.StateOrder(u.Command.State) >= store.StateOrder(stored.State) {
				stored = u.Command
			}
		case <-x.cfg.After(recheckEvery):
			// Re-read: the agent may have gone offline meanwhile.
			stored, err = x.cfg.Store.GetCommand(ctx, c.ID)
		}
	}
}

func describe(c *store.Command) string {
	s := strings.ToLower(strings.TrimPrefix(c.State.String(), "COMMAND_STATE_"))
	if c.Error != "" {
		s += ": " + c.Error
	}
	return s
}

func classify(s controlplanev1.CommandState) outcome {
	switch s {
	case controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED:
		return succeeded
	case controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED, controlplanev1.CommandState_COMMAND_STATE_CANCELED:
		return skipped
	}
	return failedOutcome
}

// countTenants is "1 tenant" or "n tenants", for event messages people read.
func countTenants(n int) string {
	if n == 1 {
		return "1 tenant"
	}
	return fmt.Sprintf("%d tenants", n)
}
