package dispatch

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	"github.com/molecule-ai/tenant-agent/controlplane/session"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/teststore"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

const (
	repo   = "registry.example/molecule-ai/workspace-template-codex"
	digest = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	ttl    = time.Hour
)

type agents []store.Agent

func (as agents) Agents(tenant string) []store.Agent {
	var out []store.Agent
	for _, a := range as {
		if tenant == "" || a.Tenant == tenant {
			out = append(out, a)
		}
	}
	return out
}

func agent(tenant, name, reportedRepo string, runtimes ...string) store.Agent {
	a := store.Agent{Identity: "spiffe://td/tenant/" + tenant + "/agent/" + name, Tenant: tenant, Name: name}
	for _, rt := range runtimes {
		a.Runtimes = append(a.Runtimes, &tenantagentv1.RuntimeStatus{Runtime: rt, ImageRepository: reportedRepo})
	}
	return a
}

type env struct {
	d        *Dispatcher
	st       store.Store
	sessions *session.Registry
	now      time.Time
}

func newEnv(t testing.TB, fleet agents) *env {
	t.Helper()
	st := teststore.Open(t)
	e := &env{st: st, sessions: session.NewRegistry(16), now: time.Unix(1_000_000, 0)}
	var err error
	e.d, err = New(Config{Store: st, Sessions: e.sessions, Agents: fleet, CommandTTL: ttl,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return e.now }})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// withSentRefresh is a dispatcher whose one agent (acme's a1) is online
// and has been sent a refresh: the command's ID is in c.
func withSentRefresh(t testing.TB) (e *env, s *session.Session, c *store.Command) {
	a := agent("acme", "a1", repo, "codex")
	e = newEnv(t, agents{a})
	s = e.online(a)
	return e, s, e.issue(t, "acme", refresh)
}

func (e *env) online(a store.Agent) *session.Session {
	s, _ := e.sessions.Register(identity.Identity{ID: a.Identity, Kind: identity.KindAgent, Tenant: a.Tenant, Name: a.Name}, "01", e.now)
	return s
}

func (e *env) state(t *testing.T, id string) controlplanev1.CommandState {
	t.Helper()
	c, err := e.st.GetCommand(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return c.State
}

func (e *env) issue(t testing.TB, tenant string, req Request) *store.Command {
	t.Helper()
	cmds, err := e.d.Plan(tenant, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.d.Issue(context.Background(), cmds); err != nil {
		t.Fatal(err)
	}
	return cmds[0]
}

var refresh = Request{Kind: controlplanev1.CommandKind_COMMAND_KIND_REFRESH, Runtime: "codex", Repository: repo, Digest: digest, RequestedBy: "test"}

func TestCommandTakesTheTTLAndARepositoryFromThePinOrTheAgent(t *testing.T) {
	good, bad, other := agent("acme", "a1", repo, "codex"), agent("acme", "a2", "not a repo!", "codex"), agent("acme", "a3", repo, "hermes")
	e := newEnv(t, agents{good, bad, other})

	if got := e.d.Targets("acme", "codex"); len(got) != 2 || got[0].Identity != good.Identity || got[1].Identity != bad.Identity {
		t.Errorf("targets = %v; want the two agents reporting codex", got)
	}
	c, err := e.d.Command(refresh, bad)
	if err != nil || c.Repository != repo || !c.Deadline.Equal(e.now.Add(ttl)) || c.ID == "" {
		t.Errorf("Command with the pin's repository = %+v, %v; want the pin's repository, deadline now+TTL and an ID", c, err)
	}
	noPin := refresh
	noPin.Repository = ""
	if c, err := e.d.Command(noPin, good); err != nil || c.Repository != repo {
		t.Errorf("Command without a pin = %+v, %v; want the repository the agent reports", c, err)
	}
	if _, err := e.d.Command(noPin, bad); cperr.KindOf(err) != cperr.KindPrecondition {
		t.Errorf("Command from a bad reported repository: %v, want a precondition error", err)
	}
	if _, err := e.d.Plan("globex", refresh); cperr.KindOf(err) != cperr.KindNotFound {
		t.Errorf("Plan for a tenant with no agent: %v, want NotFound", err)
	}
}

func TestIssueSupersedesAPendingRefreshAndTellsItsWatchers(t *testing.T) {
	a := agent("acme", "a1", repo, "codex")
	e := newEnv(t, agents{a}) // the agent is offline: its commands wait
	first := e.issue(t, "acme", refresh)
	if s := e.state(t, first.ID); s != controlplanev1.CommandState_COMMAND_STATE_PENDING {
		t.Fatalf("first refresh is %v, want PENDING while its agent is offline", s)
	}
	sub := e.d.Watch(first.ID)
	defer sub.Close()

	second := e.issue(t, "acme", refresh)
	if s := e.state(t, first.ID); s != controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED {
		t.Errorf("first refresh is %v after a newer one, want SUPERSEDED", s)
	}
	if s := e.state(t, second.ID); s != controlplanev1.CommandState_COMMAND_STATE_PENDING {
		t.Errorf("second refresh is %v, want PENDING", s)
	}
	select {
	case u := <-sub.C:
		if u.Command == nil || u.Command.State != controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED {
			t.Errorf("watcher got %+v, want the SUPERSEDED command", u)
		}
	default:
		t.Error("the superseded command's watcher was not told")
	}
}

func TestExpireNowExpiresOnlyCommandsPastTheirDeadline(t *testing.T) {
	on, off := agent("acme", "on", repo, "codex"), agent("globex", "off", repo, "codex")
	e := newEnv(t, agents{on, off})
	s := e.online(on)
	sent := e.issue(t, "acme", refresh)
	if st := e.state(t, sent.ID); st != controlplanev1.CommandState_COMMAND_STATE_SENT {
		t.Fatalf("command to a connected agent is %v, want SENT", st)
	}
	s.Next() // the refresh itself

	e.now = e.now.Add(ttl / 2)
	waiting := e.issue(t, "globex", refresh) // deadline half a TTL later than sent's

	e.now = e.now.Add(ttl/2 + time.Second)
	e.d.ExpireNow(context.Background())
	if st := e.state(t, sent.ID); st != controlplanev1.CommandState_COMMAND_STATE_EXPIRED {
		t.Errorf("command past its deadline is %v, want EXPIRED", st)
	}
	if m, ok := s.Next(); !ok {
		t.Error("the agent holding the expired command was not told to cancel it")
	} else if m.GetCancel().GetCommandId() != sent.ID {
		t.Errorf("agent got %v, want a cancel of the expired command", m)
	}
	if st := e.state(t, waiting.ID); st != controlplanev1.CommandState_COMMAND_STATE_PENDING {
		t.Errorf("command within its deadline is %v, want PENDING", st)
	}

	e.now = e.now.Add(ttl / 2)
	e.d.ExpireNow(context.Background())
	if st := e.state(t, waiting.ID); st != controlplanev1.CommandState_COMMAND_STATE_EXPIRED {
		t.Errorf("pending command past its deadline is %v, want EXPIRED", st)
	}
}

// failingStore fails UpdateCommands the next failures times, as a
// database does while it restarts.
type failingStore struct {
	store.Store
	failures atomic.Int64
	calls    atomic.Int64
}

func (s *failingStore) UpdateCommands(ctx context.Context, updates []store.CommandUpdate) ([]store.UpdatedCommand, error) {
	s.calls.Add(1)
	if s.failures.Add(-1) >= 0 {
		return nil, errors.New("unexpected EOF")
	}
	return s.Store.UpdateCommands(ctx, updates)
}

func TestAgentReportsOutlastAShortStoreOutageAndEndTheStreamOfALongOne(t *testing.T) {
	a := agent("acme", "a1", repo, "codex")
	e := newEnv(t, agents{a})
	failing := &failingStore{Store: e.st}
	e.d.cfg.Store = failing
	s := e.online(a)
	result := func(id string) report {
		return report{from: s, result: &tenantagentv1.CommandResult{CommandId: id, Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED}}
	}

	short := e.issue(t, "acme", refresh)
	s.Next() // the refresh
	failing.failures.Store(3)
	e.d.apply(context.Background(), []report{result(short.ID)})
	if st := e.state(t, short.ID); st != controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
		t.Errorf("result reported through three store failures: command is %v, want SUCCEEDED", st)
	}
	if m, ok := s.Next(); !ok || m.GetResultReceived().GetCommandId() != short.ID {
		t.Errorf("after a short outage the agent got %v; want its result confirmed", m)
	}
	if s.Err() != nil {
		t.Errorf("a short store outage ended the agent's stream: %v", s.Err())
	}

	long := e.issue(t, "acme", refresh)
	s.Next()
	e.d.cfg.RecordRetry = 500 * time.Millisecond
	failing.failures.Store(1 << 30)
	failing.calls.Store(0)
	e.d.apply(context.Background(), []report{result(long.ID)})
	if st := e.state(t, long.ID); st != controlplanev1.CommandState_COMMAND_STATE_SENT {
		t.Errorf("result that could not be stored: command is %v, want still SENT", st)
	}
	if !errors.Is(s.Err(), ErrNotRecorded) {
		t.Errorf("stream of an agent whose result could not be stored: err %v; want it ended with ErrNotRecorded so the agent sends it again", s.Err())
	}
	if n := failing.calls.Load(); n < 2 {
		t.Errorf("store tried %d times before the stream was ended; want retries", n)
	}
}

// Once an agent's ack is recorded its stream forgets carrying the
// command (a long-lived stream would otherwise keep every ID it carried):
// sending it again is no longer refused as a repeat.
func TestARecordedAckIsForgottenByTheStream(t *testing.T) {
	e, s, c := withSentRefresh(t)
	if sent, _ := s.SendCommand(c.ID, ControlMessage(c)); sent {
		t.Fatal("a command just sent was sent again before its ack")
	}
	e.d.apply(context.Background(), []report{{from: s, ack: c.ID}}) // as Run records a burst
	if got := e.state(t, c.ID); got != controlplanev1.CommandState_COMMAND_STATE_ACKED {
		t.Fatalf("state %v, want ACKED", got)
	}
	if sent, _ := s.SendCommand(c.ID, ControlMessage(c)); !sent {
		t.Error("the stream still remembers a command whose ack is recorded")
	}
}

// readCountingStore counts the commands read one by one.
type readCountingStore struct {
	store.Store
	reads atomic.Int64
}

func (s *readCountingStore) GetCommand(ctx context.Context, id string) (*store.Command, error) {
	s.reads.Add(1)
	return s.Store.GetCommand(ctx, id)
}

// A pull reports every 250 ms: its progress is read from the store for
// the first report, for each new step and once every progressRecheck,
// not for every report; a command ended meanwhile gets no event after
// its end, and its reports stop reaching watchers once it is reread.
func TestProgressReadsTheStoreForNewStepsAndRechecksOnly(t *testing.T) {
	ctx := context.Background()
	e, s, c := withSentRefresh(t)
	counting := &readCountingStore{Store: e.st}
	e.d.cfg.Store = counting
	report := func(step tenantagentv1.CommandPhase, n uint64) {
		e.d.HandleProgress(ctx, s, &tenantagentv1.CommandProgress{CommandId: c.ID, Phase: step, CurrentBytes: n, TotalBytes: 1 << 20})
	}
	for i := range 40 { // ten seconds of a pull
		report(tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING, uint64(i))
		e.now = e.now.Add(250 * time.Millisecond)
	}
	if got, most := counting.reads.Load(), 1+int64(10*time.Second/progressRecheck); got > most || got == 0 {
		t.Errorf("40 reports of one step read the command %d times, want 1 to %d", got, most)
	}
	if got := e.state(t, c.ID); got != controlplanev1.CommandState_COMMAND_STATE_RUNNING {
		t.Fatalf("state %v, want RUNNING", got)
	}
	reads := counting.reads.Load()
	report(tenantagentv1.CommandPhase_COMMAND_PHASE_PULLED, 0)
	if counting.reads.Load() != reads+1 {
		t.Errorf("a new step was not checked against the store")
	}

	// Ended behind this replica's back (as another replica would).
	if _, err := e.st.UpdateCommands(ctx, []store.CommandUpdate{{ID: c.ID, Fn: func(c *store.Command) bool {
		c.State = controlplanev1.CommandState_COMMAND_STATE_FAILED
		return true
	}}}); err != nil {
		t.Fatal(err)
	}
	sub := e.d.Watch(c.ID)
	defer sub.Close()
	report(tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING, 0) // a new step: read, and dropped
	e.now = e.now.Add(progressRecheck)
	report(tenantagentv1.CommandPhase_COMMAND_PHASE_PULLED, 1) // forgotten when dropped: read, and dropped
	select {
	case u := <-sub.C:
		t.Errorf("a report of an ended command reached watchers: %v", u.Progress)
	default:
	}
	evs, err := e.st.ListEvents(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	var steps []tenantagentv1.CommandPhase
	for _, ev := range evs {
		if ev.Progress != nil {
			steps = append(steps, ev.Progress.GetPhase())
		}
	}
	if want := []tenantagentv1.CommandPhase{tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING, tenantagentv1.CommandPhase_COMMAND_PHASE_PULLED}; !slices.Equal(steps, want) {
		t.Errorf("stored steps %v, want %v: one event a step, none after the end", steps, want)
	}
}

// Another agent's report for a command is refused however recently the
// command's own agent reported.
func TestProgressForAnotherAgentsCommandIsRefused(t *testing.T) {
	ctx := context.Background()
	a, b := agent("acme", "a1", repo, "codex"), agent("other", "b1", repo, "codex")
	e := newEnv(t, agents{a, b})
	sa, sb := e.online(a), e.online(b)
	c := e.issue(t, "acme", refresh)
	pulling := &tenantagentv1.CommandProgress{CommandId: c.ID, Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING}
	e.d.HandleProgress(ctx, sa, pulling)
	sub := e.d.Watch(c.ID)
	defer sub.Close()
	e.d.HandleProgress(ctx, sb, &tenantagentv1.CommandProgress{CommandId: c.ID, Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_PULLED})
	select {
	case u := <-sub.C:
		t.Errorf("another agent's report reached watchers: %v", u.Progress)
	default:
	}
	evs, _ := e.st.ListEvents(ctx, c.ID)
	for _, ev := range evs {
		if ev.Progress.GetPhase() == tenantagentv1.CommandPhase_COMMAND_PHASE_PULLED {
			t.Errorf("another agent's report was stored")
		}
	}
}
