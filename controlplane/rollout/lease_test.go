package rollout

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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

// lease is short so a takeover happens within the test; nothing asserts
// how fast.
const lease = 300 * time.Millisecond

// logBuffer is a log sink tests read while replicas write to it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// replica is one control plane's Rollouts on a store shared with others.
type replica struct {
	r    *Rollouts
	d    *fakeDispatcher
	logs *logBuffer
	kill func() // ends its lifetime, as a crash would, and waits for its goroutines
}

type replicaOpts struct {
	// outcome finishes the commands this replica issues; nil leaves them
	// PENDING.
	outcome map[string]controlplanev1.CommandState
	// skew moves the replica's clock.
	skew time.Duration
	// quiet makes await never re-read a command on its own (it waits for
	// an update or the end of the run); otherwise it re-reads every 10ms.
	quiet bool
	// cut, while set, fails the replica's lease writes (claims and
	// renewals) as a lost connection to the store would.
	cut *atomic.Bool
}

// cutStore fails the rollout's lease writes while cut is set. (Commands
// still reach the store: the run must stop by its lease alone.)
type cutStore struct {
	Store
	cut *atomic.Bool
}

func (s cutStore) ClaimRollouts(ctx context.Context, owner string, now, until time.Time, except []string) ([]store.Rollout, error) {
	if s.cut.Load() {
		return nil, errors.New("connection refused")
	}
	return s.Store.ClaimRollouts(ctx, owner, now, until, except)
}

func (s cutStore) UpdateRollout(ctx context.Context, r store.Rollout) error {
	if s.cut.Load() {
		return errors.New("connection refused")
	}
	return s.Store.UpdateRollout(ctx, r)
}

// openStore's cleanup runs after every replica's: it is registered first.
func openStore(t *testing.T) store.Store { return teststore.Open(t) }

func newReplica(t *testing.T, st store.Store, name string, tenants []string, o replicaOpts) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var agents []store.Agent
	for _, tn := range tenants {
		agents = append(agents, store.Agent{Identity: "spiffe://td/tenant/" + tn, Tenant: tn, Runtimes: []*tenantagentv1.RuntimeStatus{{Runtime: "codex"}}})
	}
	rp := &replica{d: &fakeDispatcher{st: st, agents: agents, outcome: o.outcome, hub: pubsub.NewHub[string, dispatch.Update](64)}, logs: &logBuffer{}}
	after := func(time.Duration) <-chan time.Time { return time.After(10 * time.Millisecond) }
	if o.quiet {
		after = func(time.Duration) <-chan time.Time { return nil }
	}
	var rs Store = st
	if o.cut != nil {
		rs = cutStore{Store: st, cut: o.cut}
	}
	var err error
	rp.r, err = New(ctx, Config{Store: rs, Fleet: fakeFleet{}, Dispatcher: rp.d, Presence: &presence{offline: map[string]bool{}},
		Logger: slog.New(slog.NewTextHandler(rp.logs, nil)), Replica: name, Lease: lease,
		Now: func() time.Time { return time.Now().Add(o.skew) }, After: after})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	rp.kill = func() { once.Do(func() { cancel(); rp.r.Wait() }) }
	t.Cleanup(rp.kill)
	return rp
}

func (rp *replica) promote(t *testing.T, opts store.RolloutOptions) (store.Rollout, *pubsub.Subscription[Event]) {
	t.Helper()
	ro, sub, err := rp.r.Promote(context.Background(), identity.Identity{ID: "spiffe://td/operator/dev"}, Request{Runtime: "codex", ImageRef: image, Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	return ro, sub
}

func (rp *replica) runs(id string) bool {
	rp.r.claiming.Lock()
	defer rp.r.claiming.Unlock()
	return rp.r.running[id]
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func getRollout(t *testing.T, st store.Store, id string) store.Rollout {
	t.Helper()
	ro, err := st.GetRollout(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return ro
}

// commandsByTenant returns the rollout's commands by tenant.
func commandsByTenant(t *testing.T, st store.Store, rolloutID string) map[string][]*store.Command {
	t.Helper()
	cs, err := st.ListCommands(context.Background(), store.CommandFilter{RolloutID: rolloutID})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]*store.Command{}
	for _, c := range cs {
		out[c.Tenant] = append(out[c.Tenant], c)
	}
	return out
}

// succeed ends a command as its agent would.
func succeed(t *testing.T, st store.Store, id string) {
	t.Helper()
	if _, err := st.UpdateCommands(context.Background(), []store.CommandUpdate{{ID: id, Fn: func(c *store.Command) bool { c.State = stSucceeded; return true }}}); err != nil {
		t.Fatal(err)
	}
}

// assertOneCommandEach checks every tenant got exactly one refresh from
// the rollout.
func assertOneCommandEach(t *testing.T, st store.Store, rolloutID string, tenants []string) map[string][]*store.Command {
	t.Helper()
	byTenant := commandsByTenant(t, st, rolloutID)
	for _, tn := range tenants {
		if n := len(byTenant[tn]); n != 1 {
			t.Errorf("tenant %s got %d commands from the rollout; want exactly 1", tn, n)
		}
	}
	return byTenant
}

// finalEvents returns the COMPLETED and HALTED events sub has received.
func finalEvents(sub *pubsub.Subscription[Event]) []Event {
	var out []Event
	for {
		select {
		case ev := <-sub.C:
			if ev.Kind == controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED || ev.Kind == controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED {
				out = append(out, ev)
			}
		default:
			return out
		}
	}
}

// A replica dies mid-rollout: another one claims the rollout once the
// lease ends, follows the command the dead one issued and finishes the
// rest, so every tenant is refreshed once.
func TestReplicaTakesOverARolloutWhoseOwnerDied(t *testing.T) {
	tenants := []string{"t1", "t2", "t3"}
	st := openStore(t)
	a := newReplica(t, st, "replica-a", tenants, replicaOpts{quiet: true}) // its commands stay PENDING
	all := map[string]controlplanev1.CommandState{"t1": stSucceeded, "t2": stSucceeded, "t3": stSucceeded}
	b := newReplica(t, st, "replica-b", tenants, replicaOpts{outcome: all})
	for _, rp := range []*replica{a, b} {
		if err := rp.r.Resume(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ro, _ := a.promote(t, store.RolloutOptions{MaxParallelTenants: 1})
	waitFor(t, "A to issue t1's command", func() bool { return len(a.d.tenantsIssued()) == 1 })

	// While A renews, B (claiming every lease/3) leaves the rollout alone.
	time.Sleep(3 * lease)
	if got := getRollout(t, st, ro.ID); got.Owner != "replica-a" || got.Epoch != 1 || len(b.d.tenantsIssued()) != 0 {
		t.Fatalf("rollout = owner %s epoch %d, B issued %v; want A's at epoch 1 while A renews", got.Owner, got.Epoch, b.d.tenantsIssued())
	}
	if !a.runs(ro.ID) || b.runs(ro.ID) {
		t.Fatal("the rollout should run on A only")
	}

	a.kill()
	if got := getRollout(t, st, ro.ID); got.State != store.RolloutRunning || got.Owner != "replica-a" {
		t.Fatalf("after A died the rollout is %s, owner %s; want running, still A's (A writes nothing)", got.State, got.Owner)
	}
	t1 := commandsByTenant(t, st, ro.ID)["t1"]
	if len(t1) != 1 {
		t.Fatalf("t1 commands = %d; want A's one", len(t1))
	}
	succeed(t, st, t1[0].ID) // the agent finishes what A sent it

	waitFor(t, "B to finish the rollout", func() bool { return getRollout(t, st, ro.ID).State == store.RolloutCompleted })
	got := getRollout(t, st, ro.ID)
	if got.Owner != "replica-b" || got.Epoch != 2 || !strings.Contains(got.Message, "3 succeeded") {
		t.Errorf("rollout = %+v; want completed by replica-b at epoch 2 with 3 succeeded", got)
	}
	byTenant := assertOneCommandEach(t, st, ro.ID, tenants)
	if byTenant["t1"][0].ID != t1[0].ID {
		t.Error("B did not reuse A's command for t1")
	}
	if issued := b.d.tenantsIssued(); !slices.Equal(issued, []string{"t2", "t3"}) {
		t.Errorf("B issued for %v; want t2, t3 (t1 was A's)", issued)
	}
	if !strings.Contains(b.logs.String(), "resuming rollout") {
		t.Error("B did not log resuming the rollout")
	}
}

// A replica that is alive but lost its lease (another replica claimed the
// rollout: here one whose clock is an hour ahead) stops at its next
// renewal: it issues nothing more and writes no end; the new owner's end
// is the one stored.
func TestReplicaThatLostItsLeaseStopsWritingNothing(t *testing.T) {
	tenants := []string{"t1", "t2", "t3"}
	st := openStore(t)
	// A re-reads t1's command: were it still running once that ends, it
	// would issue t2 and t3 (and succeed them at once).
	a := newReplica(t, st, "replica-a", tenants, replicaOpts{outcome: map[string]controlplanev1.CommandState{"t2": stSucceeded, "t3": stSucceeded}})
	all := map[string]controlplanev1.CommandState{"t1": stSucceeded, "t2": stSucceeded, "t3": stSucceeded}
	b := newReplica(t, st, "replica-b", tenants, replicaOpts{outcome: all, skew: time.Hour})
	ro, aEvents := a.promote(t, store.RolloutOptions{MaxParallelTenants: 1})
	waitFor(t, "A to issue t1's command", func() bool { return len(a.d.tenantsIssued()) == 1 })

	// To B, A's lease ended an hour ago: it claims the rollout at once.
	if err := b.r.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := getRollout(t, st, ro.ID); got.Owner != "replica-b" || got.Epoch != 2 {
		t.Fatalf("after B's claim: owner %s epoch %d; want replica-b at 2", got.Owner, got.Epoch)
	}
	waitFor(t, "A to stop the rollout", func() bool { return !a.runs(ro.ID) })
	if n := strings.Count(a.logs.String(), "rollout taken over by another replica"); n != 1 {
		t.Errorf("A logged the takeover %d times; want once:\n%s", n, a.logs.String())
	}

	t1 := commandsByTenant(t, st, ro.ID)["t1"]
	succeed(t, st, t1[0].ID)
	waitFor(t, "B to finish the rollout", func() bool { return getRollout(t, st, ro.ID).State == store.RolloutCompleted })
	got := getRollout(t, st, ro.ID)
	if got.Owner != "replica-b" || got.Epoch != 2 || !strings.Contains(got.Message, "3 succeeded") {
		t.Errorf("rollout = %+v; want B's end: completed at epoch 2, 3 succeeded", got)
	}
	a.kill() // A's goroutines are done: what it did is all there is
	if issued := a.d.tenantsIssued(); !slices.Equal(issued, []string{"t1"}) {
		t.Errorf("A issued for %v; want t1 only (nothing after it lost the lease)", issued)
	}
	assertOneCommandEach(t, st, ro.ID, tenants)
	if evs := finalEvents(aEvents); len(evs) != 0 {
		t.Errorf("A emitted an end: %+v", evs)
	}
	if strings.Contains(a.logs.String(), "rollout ended") {
		t.Error("A logged an end it must not have recorded")
	}
}

// A command this rollout already has for an agent, journaled by another
// owner between the tenant's read and its issue, is followed instead of
// failing the tenant: the store refuses a second one with ErrConflict.
func TestRolloutFollowsACommandAnotherOwnerIssuedMeanwhile(t *testing.T) {
	e := newEnv(t, []string{"t1", "t2"}, map[string]controlplanev1.CommandState{"t1": stSucceeded, "t2": stSucceeded}, nil)
	var theirs *store.Command
	e.d.beforeIssue = func(cmds []*store.Command) {
		for _, c := range cmds {
			if c.Tenant != "t2" || theirs != nil {
				continue
			}
			// The other owner's command for the same agent, already done.
			cp := *c
			cp.ID, cp.State = "theirs", stSucceeded
			if _, err := e.st.InsertCommands(context.Background(), []*store.Command{&cp}); err != nil {
				t.Errorf("insert the other owner's command: %v", err)
			}
			theirs = &cp
		}
	}
	// One at a time: t2 reads, plans and issues on its own.
	last := e.promote(t, store.RolloutOptions{MaxParallelTenants: 1})
	if last.Kind != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED || last.Counts.Succeeded != 2 || last.Counts.Failed != 0 {
		t.Fatalf("last event %v %+v; want COMPLETED with both tenants succeeded", last.Kind, last.Counts)
	}
	cmds := commandsByTenant(t, e.st, last.RolloutID)
	if len(cmds["t2"]) != 1 || cmds["t2"][0].ID != "theirs" {
		t.Fatalf("t2 commands = %v; want only the other owner's", cmds["t2"])
	}
	dup := *cmds["t2"][0]
	dup.ID = "again"
	if _, err := e.st.InsertCommands(context.Background(), []*store.Command{&dup}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a second refresh of the rollout for t2's agent = %v; want ErrConflict", err)
	}
}

// A replica cut off from the store cannot renew: once its lease ends it
// stops the rollout, issuing nothing more, and once it reaches the store
// again its claim loop takes the rollout back (no one else did) and
// finishes it.
func TestReplicaCutOffFromTheStoreStopsWhenItsLeaseEnds(t *testing.T) {
	tenants := []string{"t1", "t2"}
	st := openStore(t)
	var cut atomic.Bool
	a := newReplica(t, st, "replica-a", tenants, replicaOpts{cut: &cut, outcome: map[string]controlplanev1.CommandState{"t2": stSucceeded}})
	ro, _ := a.promote(t, store.RolloutOptions{MaxParallelTenants: 1})
	waitFor(t, "A to issue t1's command", func() bool { return len(a.d.tenantsIssued()) == 1 })
	if err := a.r.Resume(context.Background()); err != nil { // claims nothing: A runs it
		t.Fatal(err)
	}

	cut.Store(true)
	waitFor(t, "A to stop the rollout", func() bool { return !a.runs(ro.ID) })
	if !strings.Contains(a.logs.String(), "rollout lease ended without a renewal") {
		t.Errorf("A did not log why it stopped:\n%s", a.logs.String())
	}
	if got := getRollout(t, st, ro.ID); got.State != store.RolloutRunning || got.Owner != "replica-a" || got.Epoch != 1 {
		t.Fatalf("rollout = %+v; want still running, A's at epoch 1", got)
	}
	succeed(t, st, commandsByTenant(t, st, ro.ID)["t1"][0].ID)
	time.Sleep(lease) // room for a run that did not stop to issue t2
	if issued := a.d.tenantsIssued(); !slices.Equal(issued, []string{"t1"}) {
		t.Fatalf("A issued for %v while cut off; want t1 only", issued)
	}

	cut.Store(false)
	waitFor(t, "A to take the rollout back and finish it", func() bool { return getRollout(t, st, ro.ID).State == store.RolloutCompleted })
	if got := getRollout(t, st, ro.ID); got.Owner != "replica-a" || got.Epoch != 2 {
		t.Errorf("rollout = %+v; want finished by replica-a at epoch 2", got)
	}
	assertOneCommandEach(t, st, ro.ID, tenants)
}
