// Package reconcile moves agents to their runtime pins, level-triggered:
// whenever an agent connects or reports health and a runtime's containers
// are not all on the pin, it issues a refresh, unless the tenant is held, a
// rollout of the runtime is in charge (running or halted), a command for
// the runtime is already under way, or earlier attempts failed too
// recently (exponential backoff).
package reconcile

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/dispatch"
	"github.com/molecule-ai/tenant-agent/controlplane/fleet"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// Fleet is what reconcile reads of the fleet.
type Fleet interface {
	Pin(runtime string) (store.Pin, bool)
	Held(tenant string) (store.Hold, bool)
}

// Store is what reconcile reads of rollouts and commands.
type Store interface {
	ListRollouts(ctx context.Context, runtime string, state store.RolloutState) ([]store.Rollout, error)
	ListCommands(ctx context.Context, f store.CommandFilter) ([]*store.Command, error)
}

// Issuer builds, journals and sends commands (dispatch).
type Issuer interface {
	Command(req dispatch.Request, a store.Agent) (*store.Command, error)
	Issue(ctx context.Context, cmds []*store.Command) error
}

// Config configures a Reconciler.
type Config struct {
	Store  Store
	Fleet  Fleet
	Issuer Issuer
	Logger *slog.Logger
	// BackoffBase is the wait after one failed refresh of a digest; it
	// doubles with each further failure up to BackoffMax.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	Now         func() time.Time
}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Store == nil || c.Fleet == nil || c.Issuer == nil {
		return errors.New("reconcile: Store, Fleet and Issuer are required")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("component", "reconcile")
	if c.BackoffBase <= 0 {
		c.BackoffBase = time.Minute
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = time.Hour
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Reconciler issues refreshes for drifted runtimes.
type Reconciler struct {
	cfg Config
	// mu makes check-then-issue atomic, so two reports never issue two
	// refreshes for the same agent and runtime.
	mu sync.Mutex
}

// New returns a Reconciler.
func New(cfg Config) (*Reconciler, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	return &Reconciler{cfg: cfg}, nil
}

// Reconcile checks every runtime an agent reported against its pin.
func (r *Reconciler) Reconcile(ctx context.Context, a store.Agent) {
	for _, rt := range a.Runtimes {
		pin, ok := r.cfg.Fleet.Pin(rt.GetRuntime())
		if !ok || !drifted(rt.GetContainers(), pin.Digest) {
			continue
		}
		if err := r.reconcileRuntime(ctx, a, pin); err != nil {
			r.cfg.Logger.Error("reconcile failed", "agent", a.Identity, "runtime", pin.Runtime, "error", err)
		}
	}
}

func (r *Reconciler) reconcileRuntime(ctx context.Context, a store.Agent, pin store.Pin) error {
	log := r.cfg.Logger.With("agent", a.Identity, "runtime", pin.Runtime, "digest", pin.Digest)
	if _, held := r.cfg.Fleet.Held(a.Tenant); held {
		log.Debug("drift left alone: tenant held")
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rollouts, err := r.cfg.Store.ListRollouts(ctx, pin.Runtime, "")
	if err != nil {
		return err
	}
	// A running or halted rollout of the pin is in charge; a completed or
	// aborted one leaves the runtime to reconcile.
	if len(rollouts) > 0 && rollouts[0].Digest == pin.Digest && (rollouts[0].State == store.RolloutRunning || rollouts[0].State == store.RolloutHalted) {
		log.Debug("drift left alone: rollout in charge", "rollout", rollouts[0].ID, "state", rollouts[0].State)
		return nil
	}
	recent, err := r.cfg.Store.ListCommands(ctx, store.CommandFilter{Agent: a.Identity, Runtime: pin.Runtime, Kind: controlplanev1.CommandKind_COMMAND_KIND_REFRESH, Limit: 16})
	if err != nil {
		return err
	}
	for _, c := range recent {
		if !store.Terminal(c.State) {
			log.Debug("drift left alone: refresh under way", "command", c.ID)
			return nil
		}
	}
	now := r.cfg.Now()
	if wait := r.backoff(recent, pin.Digest); wait > 0 && now.Before(recent[0].UpdatedAt.Add(wait)) {
		log.Debug("drift left alone: backing off after failures", "until", recent[0].UpdatedAt.Add(wait))
		return nil
	}
	log.Info("runtime drifted from its pin; issuing refresh")
	c, err := r.cfg.Issuer.Command(dispatch.Request{Kind: controlplanev1.CommandKind_COMMAND_KIND_REFRESH,
		Runtime: pin.Runtime, Repository: pin.Repository, Digest: pin.Digest, RequestedBy: "reconcile"}, a)
	if err != nil {
		return err
	}
	return r.cfg.Issuer.Issue(ctx, []*store.Command{c})
}

// backoff is how long to wait after the newest command, given how many
// refreshes of this digest failed in a row (newest first).
func (r *Reconciler) backoff(recent []*store.Command, digest string) time.Duration {
	failures := 0
	for _, c := range recent {
		if c.Digest != digest || !failed(c.State) {
			break
		}
		failures++
	}
	if failures == 0 {
		return 0
	}
	wait := r.cfg.BackoffBase
	for i := 1; i < failures && wait < r.cfg.BackoffMax; i++ {
		wait *= 2
	}
	return min(wait, r.cfg.BackoffMax)
}

func failed(s controlplanev1.CommandState) bool {
	switch s {
	case controlplanev1.CommandState_COMMAND_STATE_FAILED,
		controlplanev1.CommandState_COMMAND_STATE_ROLLED_BACK,
		controlplanev1.CommandState_COMMAND_STATE_PARTIAL,
		controlplanev1.CommandState_COMMAND_STATE_EXPIRED:
		return true
	}
	return false
}

func drifted(containers []*tenantagentv1.ContainerStatus, digest string) bool {
	for _, c := range containers {
		if c.GetImageDigest() != digest {
			return true
		}
	}
	return false
}

var _ Fleet = (*fleet.Fleet)(nil)
