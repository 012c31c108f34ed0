package rollout

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/dispatch"
	"github.com/molecule-ai/tenant-agent/controlplane/pubsub"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/teststore"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

const (
	stSucceeded = controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED
	stFailed    = controlplanev1.CommandState_COMMAND_STATE_FAILED
	stPartial   = controlplanev1.CommandState_COMMAND_STATE_PARTIAL
	stPending   = controlplanev1.CommandState_COMMAND_STATE_PENDING

	image = "registry.example/molecule-ai/workspace-template-codex@sha256:1111111111111111111111111111111111111111111111111111111111111111"
)

// fakeDispatcher finishes each command it is given with the outcome set
// for its tenant; a tenant with none is left PENDING.
type fakeDispatcher struct {
	st      store.Store
	agents  []store.Agent
	outcome map[string]controlplanev1.CommandState
	hub     *pubsub.Hub[string, dispatch.Update]
	// beforeIssue, if set, runs before Issue journals anything.
	beforeIssue func([]*store.Command)

	mu     sync.Mutex
	issued []string // tenants, in issue order
}

func (f *fakeDispatcher) Targets(tenant, _ string) []store.Agent {
	var out []store.Agent
	for _, a := range f.agents {
		if tenant == "" || a.Tenant == tenant {
			out = append(out, a)
		}
	}
	return out
}

func (f *fakeDispatcher) Command(req dispatch.Request, a store.Agent) (*store.Command, error) {
	return &store.Command{ID: dispatch.NewCommandID(), Agent: a.Identity, Tenant: a.Tenant, Kind: req.Kind, Runtime: req.Runtime,
		Repository: req.Repository, Digest: req.Digest, RequestedBy: req.RequestedBy, RolloutID: req.RolloutID}, nil
}

func (f *fakeDispatcher) Issue(ctx context.Context, cmds []*store.Command) error {
	if f.beforeIssue != nil {
		f.beforeIssue(cmds)
	}
	for _, c := range cmds {
		c.State = stPending
	}
	if _, err := f.st.InsertCommands(ctx, cmds); err != nil {
		return err
	}
	for _, c := range cmds {
		f.mu.Lock()
		f.issued = append(f.issued, c.Tenant)
		f.mu.Unlock()
		state, ok := f.outcome[c.Tenant]
		if !ok {
			continue
		}
		out, err := f.st.UpdateCommands(ctx, []store.CommandUpdate{{ID: c.ID, Fn: func(c *store.Command) bool { c.State = state; return true }}})
		if err != nil {
			return err
		}
		f.hub.Publish(c.ID, dispatch.Update{Command: out[0].Command})
	}
	return nil
}

func (f *fakeDispatcher) Cancel(ctx context.Context, id, reason string) error {
	out, err := f.st.UpdateCommands(ctx, []store.CommandUpdate{{ID: id, Fn: func(c *store.Command) bool {
		c.State, c.Error = controlplanev1.CommandState_COMMAND_STATE_CANCELED, reason
		return true
	}}})
	if err == nil && out[0].Command != nil {
		f.hub.Publish(id, dispatch.Update{Command: out[0].Command})
	}
	return err
}

func (f *fakeDispatcher) WatchStates(id string) *pubsub.Subscription[dispatch.Update] {
	return f.hub.Subscribe(id)
}

func (f *fakeDispatcher) tenantsIssued() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.issued...)
}

type fakeFleet struct{ held map[string]store.Hold }

func (f fakeFleet) Held(t string) (store.Hold, bool) { h, ok := f.held[t]; return h, ok }
func (fakeFleet) SetPin(store.Pin)                   {}

type presence struct {
	mu      sync.Mutex
	offline map[string]bool
}

func (p *presence) Online(agent string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.offline[agent]
}

func (p *presence) setOffline(agent string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.offline[agent] = true
}

type env struct {
	r        *Rollouts
	st       store.Store
	d        *fakeDispatcher
	presence *presence
	// ticks is the clock await waits on between re-reads; waiting gets
	// a value each time await starts waiting on it.
	ticks   chan time.Time
	waiting chan struct{}
}

func newEnv(t *testing.T, tenants []string, outcome map[string]controlplanev1.CommandState, held map[string]store.Hold) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st := teststore.Open(t)
	var agents []store.Agent
	for _, tn := range tenants {
		agents = append(agents, store.Agent{Identity: "spiffe://td/tenant/" + tn, Tenant: tn,
			Runtimes: []*tenantagentv1.RuntimeStatus{{Runtime: "codex"}}})
	}
	e := &env{st: st, d: &fakeDispatcher{st: st, agents: agents, outcome: outcome, hub: pubsub.NewHub[string, dispatch.Update](64)},
		presence: &presence{offline: map[string]bool{}}, ticks: make(chan time.Time), waiting: make(chan struct{}, 16)}
	var err error
	e.r, err = New(ctx, Config{Store: st, Fleet: fakeFleet{held: held}, Dispatcher: e.d, Presence: e.presence,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		After: func(time.Duration) <-chan time.Time {
			e.waiting <- struct{}{}
			return e.ticks
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); e.r.Wait() })
	return e
}

// promote runs a rollout to its end and returns its last event.
func (e *env) promote(t *testing.T, opts store.RolloutOptions) Event {
	t.Helper()
	_, sub, err := e.r.Promote(context.Background(), identity.Identity{ID: "spiffe://td/operator/dev"},
		Request{Runtime: "codex", ImageRef: image, Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	timeout := time.After(10 * time.Second) // a guard only: nothing here waits on the clock
	for {
		select {
		case ev := <-sub.C:
			switch ev.Kind {
			case controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED:
				return ev
			}
		case <-timeout:
			t.Fatal("rollout did not end")
		}
	}
}

func TestRolloutHaltsAfterMFailuresCountingPartialAsFailed(t *testing.T) {
	tenants := []string{"t1", "t2", "t3", "t4", "t5"}
	e := newEnv(t, tenants, map[string]controlplanev1.CommandState{
		"t1": stPartial, "t2": stSucceeded, "t3": stFailed, "t4": stSucceeded, "t5": stSucceeded,
	}, nil)
	last := e.promote(t, store.RolloutOptions{MaxParallelTenants: 1, HaltAfterFailures: 2})

	if last.Kind != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED {
		t.Fatalf("last event %v %q, want HALTED", last.Kind, last.Message)
	}
	if c := *last.Counts; c != (Counts{Tenants: 5, Succeeded: 1, Failed: 2, Skipped: 2}) {
		t.Errorf("counts = %v; want 5 tenants, 1 succeeded, 2 failed (PARTIAL is one), 2 skipped", c)
	}
	if got := strings.Join(e.d.tenantsIssued(), ","); got != "t1,t2,t3" {
		t.Errorf("commands issued for %s; want t1,t2,t3 only (halted before t4)", got)
	}
	ros, err := e.st.ListRollouts(context.Background(), "codex", store.RolloutHalted)
	if err != nil || len(ros) != 1 || !strings.Contains(ros[0].Message, "2 of its tenants failed (halt after 2)") {
		t.Errorf("stored rollouts = %+v, %v; want one halted after 2 failures", ros, err)
	}
}

func TestRolloutSkipsHeldTenantsAndCompletes(t *testing.T) {
	e := newEnv(t, []string{"t1", "t2"}, map[string]controlplanev1.CommandState{"t1": stSucceeded, "t2": stSucceeded},
		map[string]store.Hold{"t2": {Tenant: "t2", Reason: "incident"}})
	last := e.promote(t, store.RolloutOptions{})
	if last.Kind != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED || last.Counts.Succeeded != 1 || last.Counts.Skipped != 1 {
		t.Fatalf("last event %v %+v; want COMPLETED, 1 succeeded, 1 skipped", last.Kind, last.Counts)
	}
	if got := strings.Join(e.d.tenantsIssued(), ","); got != "t1" {
		t.Errorf("commands issued for %s; want t1 only", got)
	}
}

// A command that stays quiet is read again on the injected clock: once its
// agent is offline the rollout leaves it waiting and ends, with no real
// time passing.
func TestRolloutRereadsAQuietCommandOnItsClock(t *testing.T) {
	e := newEnv(t, []string{"t1"}, nil, nil) // t1's command never finishes
	done := make(chan Event, 1)
	go func() { done <- e.promote(t, store.RolloutOptions{}) }()

	// The agent is online: a tick only leads to another wait.
	<-e.waiting
	e.ticks <- time.Time{}
	<-e.waiting
	// The agent goes offline while await waits; the rollout ends only
	// once the clock fires and the command is read again.
	e.presence.setOffline("spiffe://td/tenant/t1")
	select {
	case ev := <-done:
		t.Fatalf("rollout ended before its re-read: %v", ev)
	default:
	}
	e.ticks <- time.Time{}
	ev := <-done
	if ev.Kind != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED || !strings.Contains(ev.Message, "1 waiting for their agent") {
		t.Fatalf("last event %v %q; want COMPLETED with 1 waiting", ev.Kind, ev.Message)
	}
}

func TestCountTenantsReadsAsEnglish(t *testing.T) {
	for n, want := range map[int]string{0: "0 tenants", 1: "1 tenant", 2: "2 tenants"} {
		if got := countTenants(n); got != want {
			t.Errorf("countTenants(%d) = %q, want %q", n, got, want)
		}
	}
}
