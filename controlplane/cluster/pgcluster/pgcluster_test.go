package pgcluster

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/store/postgres"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/pgtest"
)

const agentX = "spiffe://example.org/tenant/acme"

func TestConfig(t *testing.T) {
	for _, bad := range []Config{
		{Replica: "a"},
		{DSN: "x"},
		{DSN: "x", Replica: "A"},
		{DSN: "x", Replica: "a-b"},
		{DSN: "x", Replica: strings.Repeat("a", 41)},
		{DSN: "x", Replica: "a", SweepEvery: time.Second, ReplicaTTL: 2 * time.Second},
	} {
		if err := bad.CheckAndSetDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	c := Config{DSN: "x", Replica: "replica_0" + strings.Repeat("z", 31)}
	if err := c.CheckAndSetDefaults(); err != nil || c.SweepEvery != 3*time.Second || c.ReplicaTTL != 30*time.Second {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
}

// A claim on b replaces a's older stream: a is told with b's epoch, and
// both see the agent online.
func TestClaimElsewhereReplaces(t *testing.T) {
	dsn := database(t)
	a, b := start(t, dsn, "a", testSweep), start(t, dsn, "b", testSweep)
	ea := claim(t, a, agentX)
	eb := claim(t, b, agentX)
	if eb <= ea {
		t.Fatalf("epochs %d then %d; want them to grow", ea, eb)
	}
	eventually(t, time.Second, "a told Replaced with b's epoch", func() bool { return a.rec.wasReplaced(agentX, eb) })
	if !a.Online(agentX) || !b.Online(agentX) {
		t.Fatalf("online: a says %v, b says %v; want both true", a.Online(agentX), b.Online(agentX))
	}
	if b.rec.replacedAbove(agentX, 0) {
		t.Fatal("b, holding the newest stream, was told Replaced")
	}
	if a.Online("spiffe://example.org/tenant/nobody") {
		t.Fatal("an agent never claimed is online")
	}
}

// Release takes the agent offline everywhere; a release of an older
// epoch changes nothing.
func TestReleaseGoesOffline(t *testing.T) {
	dsn := database(t)
	a, b := start(t, dsn, "a", testSweep), start(t, dsn, "b", testSweep)
	e1 := claim(t, b, agentX)
	e2 := claim(t, b, agentX) // the agent reconnected to b
	eventually(t, time.Second, "a sees the agent online", func() bool { return a.Online(agentX) })
	b.Release(context.Background(), agentX, e1)
	time.Sleep(3 * testSweep)
	if !a.Online(agentX) || !b.Online(agentX) {
		t.Fatal("releasing the older stream took the agent offline")
	}
	b.Release(context.Background(), agentX, e2)
	if b.Online(agentX) {
		t.Fatal("b still says online after its release")
	}
	eventually(t, time.Second, "a sees the agent offline", func() bool { return !a.Online(agentX) })
	// And stays so: no sweep brings it back.
	time.Sleep(3 * testSweep)
	if a.Online(agentX) || b.Online(agentX) {
		t.Fatal("online again after the release")
	}
}

// Two replicas claiming one agent at the same moment, 40 times: each
// round, the row names exactly one owner (the higher epoch), the other is
// told Replaced with it, and the owner is not.
func TestConcurrentClaims(t *testing.T) {
	dsn := database(t)
	a, b := start(t, dsn, "a", testSweep), start(t, dsn, "b", testSweep)
	conn := connect(t, dsn)
	for round := range 40 {
		var ea, eb int64
		var erra, errb error
		var wg sync.WaitGroup
		begin := make(chan struct{})
		wg.Go(func() { <-begin; ea, erra = a.Claim(context.Background(), agentX) })
		wg.Go(func() { <-begin; eb, errb = b.Claim(context.Background(), agentX) })
		close(begin)
		wg.Wait()
		if erra != nil || errb != nil {
			t.Fatalf("round %d: claims: %v, %v", round, erra, errb)
		}
		winner, loser, top := a, b, ea
		if eb > ea {
			winner, loser, top = b, a, eb
		}
		if ea == eb {
			t.Fatalf("round %d: both claims got epoch %d", round, ea)
		}
		if replica, epoch := sessionRow(t, conn, agentX); replica != winner.Replica() || epoch != top {
			t.Fatalf("round %d: row says %s at %d; want %s at %d", round, replica, epoch, winner.Replica(), top)
		}
		eventually(t, 2*time.Second, fmt.Sprintf("round %d: %s told Replaced(%d)", round, loser.Replica(), top),
			func() bool { return loser.rec.wasReplaced(agentX, top) })
		if winner.rec.replacedAbove(agentX, top-1) {
			t.Fatalf("round %d: the owner %s was told Replaced", round, winner.Replica())
		}
		eventually(t, time.Second, "both see the agent online", func() bool { return a.Online(agentX) && b.Online(agentX) })
	}
}

// CommandsChanged from a reaches b, not a, in a few notifications for a
// fan-out of a thousand; AgentsChanged and StateChanged too.
func TestBroadcastsBatched(t *testing.T) {
	dsn := database(t)
	a, b := start(t, dsn, "a", noSweep), start(t, dsn, "b", noSweep)
	var want []string
	for i := range 1000 {
		id := fmt.Sprintf("cmd-%026d", i) // as long as a real command ID
		want = append(want, id)
		a.CommandsChanged(id)
	}
	eventually(t, 2*time.Second, "b gets all 1000 ids", func() bool {
		_, ids := b.rec.commandIDs()
		return len(ids) >= 1000
	})
	time.Sleep(100 * time.Millisecond) // anything more would be a duplicate
	calls, ids := b.rec.commandIDs()
	if !slices.Equal(ids, want) {
		t.Fatalf("b got %d ids, in or out of order; want the 1000 sent, in order", len(ids))
	}
	t.Logf("1000 commands changed: %d notifications", calls)
	if calls > 10 {
		t.Errorf("%d notifications for 1000 ids; want a few (batched)", calls)
	}
	if n, _ := a.rec.commandIDs(); n != 0 {
		t.Errorf("a heard its own broadcast %d times", n)
	}

	stateA, stateB := a.rec.stateChanges(), b.rec.stateChanges() // the resyncs' so far
	a.AgentsChanged("agent-1", "agent-2")
	a.AgentsChanged("agent-3")
	a.StateChanged()
	eventually(t, time.Second, "b re-reads state", func() bool { return b.rec.stateChanges() == stateB+1 })
	eventually(t, time.Second, "b re-reads agents", func() bool {
		_, agents, _, _ := b.rec.snapshot()
		return slices.Equal(slices.Concat(agents...), []string{"agent-1", "agent-2", "agent-3"})
	})
	if _, agents, _, _ := a.rec.snapshot(); len(agents) != 0 || a.rec.stateChanges() != stateA {
		t.Errorf("a heard its own broadcasts: agents %v, state %d", agents, a.rec.stateChanges()-stateA)
	}
}

// Progress is coalesced per command: 100 reports in 100 ms arrive as a
// handful, and the last one sent is the last one delivered.
func TestProgressCoalesced(t *testing.T) {
	dsn := database(t)
	a, b := start(t, dsn, "a", noSweep), start(t, dsn, "b", noSweep)
	for i := range 100 {
		a.Progress(&tenantagentv1.CommandProgress{CommandId: "cmd-1", Message: fmt.Sprint("report ", i)})
		a.Progress(&tenantagentv1.CommandProgress{CommandId: "cmd-2", Message: fmt.Sprint("report ", i)})
		time.Sleep(time.Millisecond)
	}
	last := func(id string) string {
		_, _, progress, _ := b.rec.snapshot()
		msg := ""
		for _, p := range progress {
			if p.GetCommandId() == id {
				msg = p.GetMessage()
			}
		}
		return msg
	}
	eventually(t, 2*time.Second, "the last reports arrive", func() bool {
		return last("cmd-1") == "report 99" && last("cmd-2") == "report 99"
	})
	time.Sleep(2 * progressEvery)
	_, _, progress, _ := b.rec.snapshot()
	t.Logf("200 reports (2 commands) sent, %d delivered", len(progress))
	if len(progress) > 2*4 {
		t.Errorf("%d reports delivered; want at most a handful per command", len(progress))
	}
	if last("cmd-1") != "report 99" {
		t.Errorf("a later report overtook the last one: %q", last("cmd-1"))
	}
	// A large report is dropped, not sent half.
	a.Progress(&tenantagentv1.CommandProgress{CommandId: "cmd-3", Message: strings.Repeat("x", 8000)})
	time.Sleep(2 * progressEvery)
	if last("cmd-3") != "" {
		t.Error("an over-size report was delivered")
	}
}

// Byte counts are coalesced, steps are not: each step's last report
// reaches the other replica, in order, however fast they come.
func TestProgressKeepsEveryStep(t *testing.T) {
	dsn := database(t)
	a, b := start(t, dsn, "a", noSweep), start(t, dsn, "b", noSweep)
	phases := []tenantagentv1.CommandPhase{tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING, tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING,
		tenantagentv1.CommandPhase_COMMAND_PHASE_STARTING, tenantagentv1.CommandPhase_COMMAND_PHASE_HEALTH_GATE}
	for _, ph := range phases {
		for i := range 20 {
			a.Progress(&tenantagentv1.CommandProgress{CommandId: "cmd-1", Phase: ph, CurrentBytes: uint64(i)})
		}
	}
	var seen []tenantagentv1.CommandPhase
	eventually(t, 2*time.Second, "every step arrives", func() bool {
		_, _, progress, _ := b.rec.snapshot()
		seen = seen[:0]
		for _, p := range progress {
			if len(seen) == 0 || seen[len(seen)-1] != p.GetPhase() {
				seen = append(seen, p.GetPhase())
			}
		}
		return len(seen) == len(phases)
	})
	for i, ph := range phases {
		if seen[i] != ph {
			t.Fatalf("steps arrived as %v, want %v", seen, phases)
		}
	}
}

// A command journaled on a for an agent whose stream is on b rings b's
// doorbell: b delivers within a second (no sweep would in this test), a
// does not.
func TestDoorbellDelivers(t *testing.T) {
	dsn := database(t)
	a, b := start(t, dsn, "a", noSweep), start(t, dsn, "b", noSweep)
	storeA := openStore(t, dsn, postgres.Replica("a"))
	claim(t, b, agentX)
	began := time.Now()
	issue(t, storeA, "cmd-1", agentX)
	select {
	case <-b.rec.deliveries:
		t.Logf("doorbell: delivered %v after the insert returned", time.Since(began))
	case <-time.After(time.Second):
		t.Fatal("b did not deliver within a second")
	}
	time.Sleep(100 * time.Millisecond)
	if n := a.rec.deliveredTo(agentX); n != 0 {
		t.Fatalf("a delivered %d times to an agent held by b", n)
	}
}

// A command that rang no doorbell (journaled before the agent's claim)
// is delivered by the sweep.
func TestSweepDeliversWithoutDoorbell(t *testing.T) {
	dsn := database(t)
	b := start(t, dsn, "b", testSweep)
	issue(t, openStore(t, dsn), "cmd-1", agentX) // nobody holds the agent yet
	claim(t, b, agentX)
	eventually(t, 3*testSweep, "the sweep delivers", func() bool { return b.rec.deliveredTo(agentX) > 0 })
}

// Cancel reaches the replica holding the stream; one here goes straight
// to the handler.
func TestCancelRoutes(t *testing.T) {
	dsn := database(t)
	a, b := start(t, dsn, "a", noSweep), start(t, dsn, "b", noSweep)
	claim(t, b, agentX)
	eventually(t, time.Second, "a knows where the agent is", func() bool { return a.Online(agentX) })
	a.Cancel(agentX, "cmd-1")
	b.Cancel(agentX, "cmd-2")
	a.Cancel("spiffe://example.org/tenant/nobody", "cmd-3")
	eventually(t, time.Second, "b cancels both", func() bool {
		cancels, _, _, _ := b.rec.snapshot()
		return len(cancels) == 2
	})
	cancels, _, _, _ := b.rec.snapshot()
	slices.Sort(cancels)
	if want := []string{agentX + " cmd-1", agentX + " cmd-2"}; !slices.Equal(cancels, want) {
		t.Fatalf("b canceled %q; want %q", cancels, want)
	}
	if cancels, _, _, _ := a.rec.snapshot(); len(cancels) != 0 {
		t.Fatalf("a canceled %q", cancels)
	}
}

// The LISTEN connection cut under it: the cluster reconnects by itself,
// resyncs (the sweep delivers what no doorbell rang meanwhile), and the
// doorbells ring again.
func TestListenConnectionLost(t *testing.T) {
	dsn := database(t)
	b := start(t, dsn, "b", noSweep)
	storeA := openStore(t, dsn, postgres.Replica("a"))
	conn := connect(t, dsn)
	claim(t, b, agentX)
	var killed int
	if err := conn.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = 'tenant-agent-listen-b' AND datname = current_database()`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d listen backends, %v; want 1", killed, err)
	}
	// Journaled while nobody listens: no doorbell can reach b.
	if _, err := conn.Exec(context.Background(), `INSERT INTO commands (id, agent, tenant, kind, runtime, image_repository, image_digest, state, requested_by, created_at, updated_at, deadline)
		VALUES ('raw-1', $1, 'acme', 1, 'codex', 'r', 'sha256:x', $2, 'test', 0, 0, 0)`, agentX, int32(controlplanev1.CommandState_COMMAND_STATE_PENDING)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "a resync after the reconnect", func() bool { return b.rec.resyncs() >= 2 })
	eventually(t, time.Second, "the resync's sweep delivers", func() bool { return b.rec.deliveredTo(agentX) >= 1 })
	delivered := b.rec.deliveredTo(agentX)
	issue(t, storeA, "cmd-2", agentX)
	eventually(t, time.Second, "the doorbell rings again", func() bool { return b.rec.deliveredTo(agentX) > delivered })
}

// A replica that stops without releasing (a crash): after ReplicaTTL its
// agents are offline on every other replica, and its sessions are reaped.
func TestDeadReplica(t *testing.T) {
	dsn := database(t)
	a, b := start(t, dsn, "a", testSweep), start(t, dsn, "b", testSweep)
	c := start(t, dsn, "c", testSweep)
	claim(t, c, agentX)
	eventually(t, time.Second, "a and b see the agent online", func() bool { return a.Online(agentX) && b.Online(agentX) })
	c.stop()
	stopped := time.Now()
	eventually(t, testTTL+5*testSweep, "a and b see the agent offline", func() bool { return !a.Online(agentX) && !b.Online(agentX) })
	if d := time.Since(stopped); d < testTTL-2*testSweep {
		t.Errorf("offline %v after the stop; want after about ReplicaTTL (%v)", d, testTTL)
	}
	conn := connect(t, dsn)
	eventually(t, 2*testSweep, "the session reaped", func() bool {
		replica, _ := sessionRow(t, conn, agentX)
		return replica == ""
	})
}

// A claim reaped while its replica's heartbeat was late is taken back by
// that replica's next sweep, unless a newer claim came.
func TestReapedClaimReasserted(t *testing.T) {
	dsn := database(t)
	a, b := start(t, dsn, "a", testSweep), start(t, dsn, "b", testSweep)
	conn := connect(t, dsn)
	e := claim(t, a, agentX)
	if _, err := conn.Exec(context.Background(), `UPDATE agent_sessions SET replica = '' WHERE identity = $1`, agentX); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*testSweep, "a re-asserts its claim", func() bool {
		replica, epoch := sessionRow(t, conn, agentX)
		return replica == "a" && epoch == e
	})
	eventually(t, 3*testSweep, "b sees the agent online", func() bool { return b.Online(agentX) })
	if a.rec.replacedAbove(agentX, 0) {
		t.Fatal("a was told Replaced")
	}
}

// A replica restarted under the same ID holds no stream yet: the
// sessions of its previous life are released.
func TestRestartedReplicaDropsOldSessions(t *testing.T) {
	dsn := database(t)
	first := start(t, dsn, "a", testSweep)
	claim(t, first, agentX)
	first.stop()
	second := start(t, dsn, "a", testSweep)
	if second.Online(agentX) {
		t.Fatal("the restarted replica says it holds its previous life's stream")
	}
	if replica, _ := sessionRow(t, connect(t, dsn), agentX); replica != "" {
		t.Fatalf("session still held by %q", replica)
	}
}

// Malformed notifications, sent by hand, are ignored without a panic;
// the listener keeps working.
func TestMalformedPayloadsIgnored(t *testing.T) {
	dsn := database(t)
	b := start(t, dsn, "b", noSweep)
	conn := connect(t, dsn)
	state := b.rec.stateChanges() // the resync's
	bad := map[string][]string{
		"ta_all": {"", " ", "s", "s a", "s a x", "s a x notanumber", "s a x -1", "s A x 1", "s a  1", "g a x 0",
			"c a", "c a  x", "a a", "x a extra", "p a", "p a !!!", "p a " + "AAAA", "p a a b", "z a x", "ss a x 1",
			"s " + strings.Repeat("a", 41) + " x 1", "c a " + strings.Repeat("y", 3000), "\x01\x02", "s a x\t 1"},
		"ta_r_b": {"", "d", "d ", "d a b", "k", "k a", "k a b c", "z a", "dd a", "d " + strings.Repeat("y", 3000)},
	}
	for ch, payloads := range bad {
		for _, p := range payloads {
			if _, err := conn.Exec(context.Background(), `SELECT pg_notify($1, $2)`, ch, p); err != nil {
				t.Fatalf("notify %q: %v", p, err)
			}
		}
	}
	if _, err := conn.Exec(context.Background(), `SELECT pg_notify('ta_all', 'x a')`); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "the valid one after them", func() bool { return b.rec.stateChanges() == state+1 })
	cancels, agents, progress, replaced := b.rec.snapshot()
	delivered := b.rec.deliveredTo("a") + b.rec.deliveredTo("a b") + b.rec.deliveredTo("")
	if n, _ := b.rec.commandIDs(); n+len(cancels)+len(agents)+len(progress)+len(replaced)+delivered != 0 {
		t.Fatalf("malformed payloads reached the handler: commands %d, cancels %q, agents %q, progress %d, replaced %v, delivered %d",
			n, cancels, agents, len(progress), replaced, delivered)
	}
}

// PostgreSQL restarted under load: the replicas reconnect, LISTEN again,
// and the doorbells ring.
func TestDatabaseRestart(t *testing.T) {
	dsn := database(t)
	a, b := start(t, dsn, "a", noSweep), start(t, dsn, "b", noSweep)
	storeA := openStore(t, dsn, postgres.Replica("a"))
	claim(t, b, agentX)
	ctx, cancel := context.WithCancel(context.Background())
	var load sync.WaitGroup
	load.Go(func() { // traffic while the server goes down and up
		for i := 0; ctx.Err() == nil; i++ {
			a.CommandsChanged(fmt.Sprint("load-", i))
			time.Sleep(time.Millisecond)
		}
	})
	pgtest.Restart(t)
	cancel()
	load.Wait()
	eventually(t, 15*time.Second, "both resync after the restart", func() bool { return a.rec.resyncs() >= 2 && b.rec.resyncs() >= 2 })
	delivered := b.rec.deliveredTo(agentX)
	eventually(t, 10*time.Second, "the doorbell rings again", func() bool {
		// The store's pool may hold a connection the restart cut: retry.
		if _, err := storeA.InsertCommands(context.Background(), nil); err != nil {
			return false
		}
		issue(t, storeA, fmt.Sprint("cmd-", time.Now().UnixNano()), agentX)
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			if b.rec.deliveredTo(agentX) > delivered {
				return true
			}
			time.Sleep(5 * time.Millisecond)
		}
		return false
	})
}

// Run returns when its context ends, and Close leaves no goroutine.
func TestNoGoroutineLeak(t *testing.T) {
	dsn := database(t)
	before := runtime.NumGoroutine()
	n := start(t, dsn, "a", testSweep)
	claim(t, n, agentX)
	n.CommandsChanged("x")
	n.Progress(&tenantagentv1.CommandProgress{CommandId: "x"})
	time.Sleep(2 * testSweep)
	n.stop()
	eventually(t, 2*time.Second, "goroutines back to where they were", func() bool { return runtime.NumGoroutine() <= before })
	if err := n.Run(context.Background(), newRecorder()); err == nil {
		t.Fatal("Run after Close succeeded")
	}
}
