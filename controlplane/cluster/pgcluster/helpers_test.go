package pgcluster

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/controlplane/store/postgres"
	"github.com/molecule-ai/tenant-agent/controlplane/store/storetest"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// Short enough for tests: a sweep every 200 ms, dead after a second.
const (
	testSweep = 200 * time.Millisecond
	testTTL   = time.Second
	// noSweep is a sweep interval no test lasts, for tests that must see
	// a doorbell, not the sweep, do the work.
	noSweep = time.Minute
)

// database returns a fresh database with the store's migrations applied.
func database(t testing.TB) string {
	t.Helper()
	dsn := pgtest.DSN(t)
	s, err := postgres.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	return dsn
}

// node is one replica under test: its cluster and what its handler was
// told.
type node struct {
	*Cluster
	rec  *recorder
	stop func() // ends Run and closes the cluster; idempotent
}

// start runs a replica until the test ends, with SweepEvery sweep (and a
// ReplicaTTL five times it), and waits for its first LISTEN.
func start(t testing.TB, dsn, replica string, sweep time.Duration) *node {
	t.Helper()
	c, err := New(context.Background(), Config{DSN: dsn, Replica: replica, SweepEvery: sweep, ReplicaTTL: 5 * sweep,
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, rec) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			c.Close()
		})
	}
	t.Cleanup(stop)
	eventually(t, 10*time.Second, "first LISTEN and resync", func() bool { return rec.resyncs() >= 1 })
	return &node{Cluster: c, rec: rec, stop: stop}
}

func openStore(t testing.TB, dsn string, opts ...postgres.Option) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), dsn, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func issue(t testing.TB, s store.Store, id, agent string) {
	t.Helper()
	if _, err := s.InsertCommands(context.Background(), []*store.Command{storetest.Cmd(id, agent, "codex")}); err != nil {
		t.Fatal(err)
	}
}

func connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func claim(t testing.TB, n *node, agent string) int64 {
	t.Helper()
	e, err := n.Claim(context.Background(), agent)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// sessionRow reads agent's row of agent_sessions.
func sessionRow(t testing.TB, conn *pgx.Conn, agent string) (replica string, epoch int64) {
	t.Helper()
	if err := conn.QueryRow(context.Background(), `SELECT replica, epoch FROM agent_sessions WHERE identity = $1`, agent).Scan(&replica, &epoch); err != nil {
		t.Fatal(err)
	}
	return replica, epoch
}

func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recorder is a cluster.Handler that remembers every call.
type recorder struct {
	mu         sync.Mutex
	delivered  map[string]int
	deliveries chan string // every Deliver, if someone waits on them
	cancels    []string    // "agent command"
	commands   [][]string
	progress   []*tenantagentv1.CommandProgress
	agents     [][]string
	all        int // AgentsChanged(nil, true): one per resync
	state      int
	replaced   []replacement
}

type replacement struct {
	agent string
	epoch int64
}

func newRecorder() *recorder {
	return &recorder{delivered: map[string]int{}, deliveries: make(chan string, 1024)}
}

func (r *recorder) Deliver(_ context.Context, agents []string) {
	for _, agent := range agents {
		r.mu.Lock()
		r.delivered[agent]++
		r.mu.Unlock()
		select {
		case r.deliveries <- agent:
		default:
		}
	}
}

func (r *recorder) Cancel(_ context.Context, agent, id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cancels = append(r.cancels, agent+" "+id)
}

func (r *recorder) CommandsChanged(_ context.Context, ids []string) {
	if ids == nil {
		return // part of a resync
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.commands = append(r.commands, ids)
}

func (r *recorder) Progress(p *tenantagentv1.CommandProgress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.progress = append(r.progress, p)
}

func (r *recorder) AgentsChanged(_ context.Context, ids []string, all bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if all {
		r.all++
		return
	}
	r.agents = append(r.agents, ids)
}

func (r *recorder) StateChanged(context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.state++
}

func (r *recorder) Replaced(agent string, epoch int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.replaced = append(r.replaced, replacement{agent, epoch})
}

func (r *recorder) resyncs() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.all
}

func (r *recorder) deliveredTo(agent string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.delivered[agent]
}

func (r *recorder) wasReplaced(agent string, epoch int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.replaced, replacement{agent, epoch})
}

// replacedAbove reports whether Replaced came for agent with an epoch
// above epoch.
func (r *recorder) replacedAbove(agent string, epoch int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.ContainsFunc(r.replaced, func(x replacement) bool { return x.agent == agent && x.epoch > epoch })
}

func (r *recorder) commandIDs() (calls int, ids []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.commands {
		ids = append(ids, c...)
	}
	return len(r.commands), ids
}

func (r *recorder) stateChanges() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

func (r *recorder) snapshot() (cancels []string, agents [][]string, progress []*tenantagentv1.CommandProgress, replaced []replacement) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.cancels), slices.Clone(r.agents), slices.Clone(r.progress), slices.Clone(r.replaced)
}
