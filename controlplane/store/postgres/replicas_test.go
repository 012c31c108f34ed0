package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/controlplane/store/storetest"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/internal/pgtest"
)

const (
	statePending    = controlplanev1.CommandState_COMMAND_STATE_PENDING
	stateSuperseded = controlplanev1.CommandState_COMMAND_STATE_SUPERSEDED
)

// Two replicas (two pools) journaling a refresh for one agent and runtime
// at once: the one whose insert runs into the other's pending refresh
// retries and supersedes it, so both succeed and one stays PENDING.
func TestConcurrentRefreshesBothSucceed(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	a, b := open(t, dsn), open(t, dsn)
	for round := range 20 {
		agent := fmt.Sprintf("agent-%d", round)
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, 2)
		for i, s := range []*Store{a, b} {
			wg.Go(func() {
				<-start
				_, errs[i] = s.InsertCommands(ctx, []*store.Command{storetest.Cmd(fmt.Sprintf("%s-%d", agent, i), agent, "codex")})
			})
		}
		close(start)
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		assertOnePending(t, a, agent)
	}
}

// The retry, forced: a pending refresh committed while our insert waits
// on the unique index makes the insert fail once; the retry supersedes it.
func TestInsertRetriesAfterPendingRefreshConflict(t *testing.T) {
	ctx := context.Background()
	s := open(t, pgtest.DSN(t))
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	other := storetest.Cmd("theirs", "agent", "codex")
	if _, err := journal(ctx, tx, []*store.Command{other}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var superseded []string
	go func() {
		var err error
		superseded, err = s.InsertCommands(ctx, []*store.Command{storetest.Cmd("ours", "agent", "codex")})
		done <- err
	}()
	waitForLockWait(t, s)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("InsertCommands = %v; want the retry to succeed", err)
	}
	if len(superseded) != 1 || superseded[0] != "theirs" {
		t.Errorf("superseded = %v; want [theirs]", superseded)
	}
	assertOnePending(t, s, "agent")
}

// waitForLockWait waits until a backend of the database waits on a lock.
func waitForLockWait(t *testing.T, s *Store) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the insert never waited on the other transaction's pending refresh")
}

func assertOnePending(t *testing.T, s *Store, agent string) {
	t.Helper()
	cs, err := s.ListCommands(context.Background(), store.CommandFilter{Agent: agent})
	if err != nil {
		t.Fatal(err)
	}
	count := map[controlplanev1.CommandState]int{}
	for _, c := range cs {
		count[c.State]++
	}
	if len(cs) != 2 || count[statePending] != 1 || count[stateSuperseded] != 1 {
		t.Fatalf("%s: %d commands, states %v; want one PENDING and one SUPERSEDED", agent, len(cs), count)
	}
}

// InsertCommands rings, in its transaction, the replica holding each
// agent's stream: once per agent, never its own replica, never an agent
// with no holder, and never for a batch that rolled back.
func TestInsertRingsTheHoldersDoorbell(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	s := openWith(t, dsn, Replica("a"))
	if _, err := s.pool.Exec(ctx, `INSERT INTO agent_sessions (identity, replica, epoch, connected_at) VALUES
		('on-b', 'b', 1, 0), ('on-a', 'a', 1, 0), ('released', '', 2, 0), ('on-c', 'c', 3, 0)`); err != nil {
		t.Fatal(err)
	}
	listener := listen(t, dsn, "ta_r_a", "ta_r_b", "ta_r_c")

	pf := storetest.Cmd("p1", "on-b", "codex")
	pf.Kind = controlplanev1.CommandKind_COMMAND_KIND_PREFETCH
	if _, err := s.InsertCommands(ctx, []*store.Command{
		storetest.Cmd("c1", "on-b", "codex"), pf, storetest.Cmd("c2", "on-a", "codex"),
		storetest.Cmd("c3", "released", "codex"), storetest.Cmd("c4", "nobody", "codex"),
	}); err != nil {
		t.Fatal(err)
	}
	// A batch that fails (a rollout's second refresh for on-c) rings
	// nobody: the notification dies with the transaction.
	r1, r2 := storetest.Cmd("r1", "on-c", "codex"), storetest.Cmd("r2", "on-c", "codex")
	r1.RolloutID, r2.RolloutID = "ro", "ro"
	if _, err := s.InsertCommands(ctx, []*store.Command{r1}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.InsertCommands(ctx, []*store.Command{r2}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a rollout's second refresh for an agent = %v; want ErrConflict", err)
	}
	got := drain(t, listener)
	want := []string{"ta_r_b d on-b", "ta_r_c d on-c"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("notifications = %q; want %q", got, want)
	}
}

// A store opened without a replica rings every holder.
func TestInsertWithoutReplicaRingsEveryHolder(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	s := open(t, dsn)
	if _, err := s.pool.Exec(ctx, `INSERT INTO agent_sessions (identity, replica, epoch, connected_at) VALUES ('on-a', 'a', 1, 0)`); err != nil {
		t.Fatal(err)
	}
	listener := listen(t, dsn, "ta_r_a")
	if _, err := s.InsertCommands(ctx, []*store.Command{storetest.Cmd("c1", "on-a", "codex")}); err != nil {
		t.Fatal(err)
	}
	if got := drain(t, listener); fmt.Sprint(got) != "[ta_r_a d on-a]" {
		t.Fatalf("notifications = %q; want the holder rung", got)
	}
}

func openWith(t *testing.T, dsn string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(context.Background(), dsn, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func listen(t *testing.T, dsn string, channels ...string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	for _, ch := range channels {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			t.Fatal(err)
		}
	}
	return conn
}

// drain returns "<channel> <payload>" for every notification that
// arrives within half a second of the last.
func drain(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	var out []string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		n, err := conn.WaitForNotification(ctx)
		cancel()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatal(err)
			}
			return out
		}
		out = append(out, n.Channel+" "+n.Payload)
	}
}
