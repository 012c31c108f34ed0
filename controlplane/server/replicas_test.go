package server

import (
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/pgtest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

// replicas are control planes in this process sharing one PostgreSQL
// database, as replicas behind a load balancer do.
type replicas []*harness

func newReplicas(t *testing.T, n int, tenants ...string) replicas {
	dsn := pgtest.DSN(t)
	if !isPostgres(dsn) {
		t.Skipf("%s is not a postgres:// URL, which --store needs", pgtest.EnvDSN)
	}
	pki := pkitest.New(t, tenants...)
	rs := make(replicas, n)
	for i := range rs {
		rs[i] = &harness{t: t, pki: pki, storePath: dsn, logs: &testlog.Buffer{}}
		rs[i].start(fastCluster)
	}
	return rs
}

// fastCluster shortens the cluster's timers so failures are noticed in a
// test's time.
func fastCluster(cfg *Config) {
	cfg.ClusterSweep = 200 * time.Millisecond
	cfg.ReplicaTTL = 2 * time.Second
	cfg.RolloutLease = time.Second
	cfg.ReconnectBurst = 100 // tests reconnect one agent many times
}

func spiffe(tenant string) string { return "spiffe://molecule.local/tenant/" + tenant }

// waitSees waits until h's fleet knows the agents of tenants as connected.
func (h *harness) waitSees(tenants ...string) {
	h.t.Helper()
	for _, tenant := range tenants {
		eventually(h.t, "replica sees "+tenant+" connected", func() bool {
			a, ok := h.srv.fleet.Agent(spiffe(tenant))
			return ok && h.srv.fleet.View(a).Connected
		})
	}
}

func TestPromoteThroughOneReplicaReachesAgentsOnTheOthers(t *testing.T) {
	rs := newReplicas(t, 3, "alpha", "bravo", "charlie")
	agents := map[string]*cptest.Agent{
		"alpha":   rs[0].agent("alpha", codex(digestV1)),
		"bravo":   rs[1].agent("bravo", codex(digestV1)),
		"charlie": rs[2].agent("charlie", codex(digestV1)),
	}
	rs[0].waitSees("alpha", "bravo", "charlie")

	events := promote(t, rs[0].operator(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2})
	last := events[len(events)-1]
	if last.GetKind() != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED || last.GetCounts().GetSucceeded() != 3 {
		t.Fatalf("last event %v, want COMPLETED with 3 succeeded", last)
	}
	succeeded := map[string]bool{}
	for _, e := range kinds(events, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_UPDATED) {
		if e.GetState() == stateSucceeded {
			succeeded[e.GetTenant()] = true
		}
	}
	for tenant, a := range agents {
		if got := a.Refreshes(); len(got) != 1 || got[0].GetImageDigest() != digestV2 {
			t.Errorf("%s received %d refreshes, want exactly one to v2", tenant, len(got))
		}
		if !succeeded[tenant] {
			t.Errorf("replica 1's promote stream never showed %s's command SUCCEEDED", tenant)
		}
	}
	// Every replica reads the new pin and the agents' reports of it.
	for i, h := range rs {
		eventually(t, "replica "+string(rune('1'+i))+" has the new pin", func() bool {
			p, ok := h.srv.fleet.Pin("codex")
			return ok && p.Digest == digestV2
		})
	}
}

func TestWatchCommandOnOneReplicaFollowsAnAgentOnAnother(t *testing.T) {
	rs := newReplicas(t, 2, "remote")
	release := make(chan struct{})
	remote := rs[1].agent("remote", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: func(cmd *tenantagentv1.RefreshRuntimeImage) *tenantagentv1.CommandResult {
		<-release
		return cptest.Succeed(cmd)
	}})
	// Without progress seen through replica 1 the agent would hang.
	timeout := time.AfterFunc(wait, func() { close(release) })
	defer timeout.Stop()
	rs[0].waitSees("remote")

	id := refresh(t, rs[0].operator(), "remote", digestV2)
	stream, err := rs[0].operator().WatchCommand(ctx(t), &controlplanev1.WatchCommandRequest{CommandId: id})
	if err != nil {
		t.Fatal(err)
	}
	var sawRunning, sawProgress bool
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		ev := resp.GetEvent()
		if ev.GetState() == controlplanev1.CommandState_COMMAND_STATE_RUNNING && !sawRunning {
			sawRunning = true
			// The agent on replica 2 reports a step while replica 1 watches.
			if err := remote.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Progress{Progress: &tenantagentv1.CommandProgress{
				CommandId: id, Sequence: 2, Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING, Container: "codex-a", Message: "creating codex-a",
			}}}); err != nil {
				t.Fatal(err)
			}
		}
		if p := ev.GetProgress(); p.GetPhase() == tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING && !sawProgress {
			sawProgress = true
			timeout.Stop()
			close(release) // the agent on replica 2 finishes now
		}
	}
	if !sawRunning || !sawProgress {
		t.Errorf("watching through replica 1: running=%v progress=%v, want both from the agent on replica 2", sawRunning, sawProgress)
	}
	if c := rs[0].command(id); c.State != stateSucceeded {
		t.Errorf("command %s is %v, want SUCCEEDED", id, c.State)
	}
}

func TestNewestStreamWinsAcrossReplicas(t *testing.T) {
	rs := newReplicas(t, 2, "mover")
	first := rs[0].agent("mover", codex(digestV1))
	second := rs[1].agent("mover", codex(digestV1))
	select {
	case <-first.Done():
	case <-time.After(wait):
		t.Fatal("the older stream on replica 1 stayed open after the agent connected to replica 2")
	}
	if status.Code(first.Err()) != codes.Aborted {
		t.Errorf("older stream ended with %v, want Aborted (replaced)", first.Err())
	}
	// A refresh through the replica that lost the stream reaches the new one.
	rs[0].waitSees("mover")
	id := refresh(t, rs[0].operator(), "mover", digestV2)
	rs[0].waitState(id, stateSucceeded)
	if len(second.Refreshes()) != 1 {
		t.Errorf("the newer stream got %d refreshes, want 1", len(second.Refreshes()))
	}
}

func TestRacingStreamsOfOneAgentEndWithOne(t *testing.T) {
	rs := newReplicas(t, 2, "racer")
	for round := range 8 {
		var wg sync.WaitGroup
		streams := make([]*cptest.Agent, 2)
		for i := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				streams[i] = cptest.Connect(t, rs[i].srv.AgentAddr(), rs[i].pki.Files("agent-racer"), codex(digestV1))
			}()
		}
		wg.Wait()
		eventually(t, "one stream left", func() bool {
			open := 0
			for i, a := range streams {
				select {
				case <-a.Done():
				default:
					if rs[i].srv.sessions.Online(spiffe("racer")) {
						open++
					}
				}
			}
			return open == 1 && rs[0].srv.sessions.Len()+rs[1].srv.sessions.Len() == 1
		})
		for _, a := range streams {
			a.Close()
		}
		eventually(t, "round "+string(rune('0'+round))+" closed", func() bool {
			return rs[0].srv.sessions.Len()+rs[1].srv.sessions.Len() == 0
		})
	}
}

func TestDenyOnOneReplicaClosesStreamsOnAnother(t *testing.T) {
	rs := newReplicas(t, 2, "bad")
	bad := rs[1].agent("bad", codex(digestV1))
	if _, err := rs[0].operator().DenyTenant(ctx(t), &controlplanev1.DenyTenantRequest{Tenant: "bad", Reason: "compromised host"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-bad.Done():
	case <-time.After(wait):
		t.Fatal("the denied agent's stream on replica 2 stayed open")
	}
	if status.Code(bad.Err()) != codes.PermissionDenied {
		t.Errorf("denied stream ended with %v, want PermissionDenied", bad.Err())
	}
	if err := deniedAgentDial(t, rs[1], "agent-bad"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("reconnecting to replica 2: %v, want PermissionDenied", err)
	}
	if _, err := rs[0].operator().AllowTenant(ctx(t), &controlplanev1.AllowTenantRequest{Tenant: "bad"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica 2 lifts the denial", func() bool { return rs[1].srv.deny.Denied("bad", "") == nil })
}

func TestRolloutResumesOnAnotherReplicaWhenItsOwnerStops(t *testing.T) {
	rs := newReplicas(t, 3, "alpha", "bravo", "charlie", "delta")
	release := make(chan struct{})
	slow := func(cmd *tenantagentv1.RefreshRuntimeImage) *tenantagentv1.CommandResult {
		<-release
		return cptest.Succeed(cmd)
	}
	agents := map[string]*cptest.Agent{}
	for i, tenant := range []string{"alpha", "bravo", "charlie", "delta"} {
		agents[tenant] = rs[1+i%2].agent(tenant, cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: slow})
	}
	rs[0].waitSees("alpha", "bravo", "charlie", "delta")

	// One tenant at a time, so the owner dies with most of the fleet to go.
	stream, err := rs[0].operator().PromoteRuntimeImage(ctx(t), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2,
		Options: &controlplanev1.RolloutOptions{MaxParallelTenants: 1}})
	if err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("promote stream: %v", err)
		}
		if resp.GetEvent().GetKind() == controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_ISSUED {
			break
		}
	}
	rs[0].stop() // the owner goes away mid-rollout
	close(release)

	eventually(t, "the rollout completes on another replica", func() bool {
		ros, err := rs[1].srv.store.ListRollouts(ctx(t), "codex", store.RolloutCompleted)
		return err == nil && len(ros) == 1
	})
	cmds, err := rs[1].srv.store.ListCommands(ctx(t), store.CommandFilter{Kind: controlplanev1.CommandKind_COMMAND_KIND_REFRESH})
	if err != nil {
		t.Fatal(err)
	}
	perAgent := map[string]int{}
	for _, c := range cmds {
		perAgent[c.Agent]++
		if c.State != stateSucceeded {
			t.Errorf("command %s for %s is %v, want SUCCEEDED", c.ID, c.Tenant, c.State)
		}
	}
	for tenant, a := range agents {
		if perAgent[spiffe(tenant)] != 1 || len(a.Refreshes()) != 1 {
			t.Errorf("%s: %d commands stored, %d refreshes received; want exactly one of each", tenant, perAgent[spiffe(tenant)], len(a.Refreshes()))
		}
	}
}

func TestReplicasCarryOnAfterPostgresRestarts(t *testing.T) {
	rs := newReplicas(t, 2, "alpha", "bravo")
	release := make(chan struct{})
	bravo := rs[1].agent("bravo", cptest.Options{Runtimes: codex(digestV1).Runtimes, Executor: func(cmd *tenantagentv1.RefreshRuntimeImage) *tenantagentv1.CommandResult {
		<-release
		return cptest.Succeed(cmd)
	}})
	alpha := rs[0].agent("alpha", codex(digestV1))
	rs[0].waitSees("alpha", "bravo")
	running := refresh(t, rs[0].operator(), "bravo", digestV2)
	rs[0].waitState(running, controlplanev1.CommandState_COMMAND_STATE_RUNNING)

	pgtest.Restart(t) // every connection of both replicas is cut

	// The command that ran through the restart finishes and is recorded.
	// (A pooled connection cut by the restart fails its next query once:
	// read until the replica's pool has fresh ones.)
	close(release)
	eventually(t, "the command that ran through the restart recorded SUCCEEDED", func() bool {
		c, err := rs[0].srv.store.GetCommand(ctx(t), running)
		return err == nil && c.State == stateSucceeded
	})
	// Doorbells ring again: a refresh through replica 2 reaches the agent
	// on replica 1 without waiting for a sweep to find it.
	id := refresh(t, rs[1].operator(), "alpha", digestV2)
	rs[1].waitState(id, stateSucceeded)
	if len(alpha.Refreshes()) != 1 || len(bravo.Refreshes()) != 1 {
		t.Errorf("refreshes received: alpha %d, bravo %d; want one each", len(alpha.Refreshes()), len(bravo.Refreshes()))
	}
}

func TestWatchAgentsOnOneReplicaSeesAgentsOfAnother(t *testing.T) {
	rs := newReplicas(t, 2, "elsewhere")
	watch, err := rs[0].operator().WatchAgents(ctx(t), &controlplanev1.WatchAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	next := func(want controlplanev1.AgentEventKind) *controlplanev1.WatchAgentsResponse {
		t.Helper()
		for {
			resp, err := watch.Recv()
			if err != nil {
				t.Fatalf("waiting for %v: %v", want, err)
			}
			if resp.GetKind() == want {
				return resp
			}
		}
	}
	next(controlplanev1.AgentEventKind_AGENT_EVENT_KIND_SYNCED)
	a := rs[1].agent("elsewhere", codex(digestV1))
	if ev := next(controlplanev1.AgentEventKind_AGENT_EVENT_KIND_CONNECTED); ev.GetAgent().GetTenant() != "elsewhere" || !ev.GetAgent().GetConnected() || len(ev.GetAgent().GetRuntimes()) != 1 {
		t.Fatalf("event %v, want elsewhere CONNECTED with its runtime", ev)
	}
	a.Close()
	if ev := next(controlplanev1.AgentEventKind_AGENT_EVENT_KIND_DISCONNECTED); ev.GetAgent().GetTenant() != "elsewhere" || ev.GetAgent().GetConnected() {
		t.Fatalf("event %v, want elsewhere DISCONNECTED", ev)
	}
}

func TestExpiryRunsOnceWhicheverReplicasRunIt(t *testing.T) {
	dsn := pgtest.DSN(t)
	if !isPostgres(dsn) {
		t.Skipf("%s is not a postgres:// URL, which --store needs", pgtest.EnvDSN)
	}
	pki := pkitest.New(t, "gone")
	var rs replicas
	for range 3 {
		h := &harness{t: t, pki: pki, storePath: dsn, logs: &testlog.Buffer{}}
		h.start(func(c *Config) { fastCluster(c); c.CommandTTL = 300 * time.Millisecond })
		rs = append(rs, h)
	}
	a := rs[0].agent("gone", codex(digestV1))
	a.Close()
	rs[0].waitConnected(spiffe("gone"), false)
	eventually(t, "replica 2 knows the agent", func() bool { _, ok := rs[1].srv.fleet.Agent(spiffe("gone")); return ok })
	var ids []string
	for range 5 {
		id := refresh(t, rs[1].operator(), "gone", digestV2)
		ids = append(ids, id)
		time.Sleep(350 * time.Millisecond) // past its deadline
		// Every replica runs its expiry pass at once.
		var wg sync.WaitGroup
		for _, h := range rs {
			wg.Go(func() { h.srv.dispatcher.ExpireNow(ctx(t)) })
		}
		wg.Wait()
		rs[0].waitState(id, controlplanev1.CommandState_COMMAND_STATE_EXPIRED)
	}
	for _, id := range ids {
		events, err := rs[2].srv.store.ListEvents(ctx(t), id)
		if err != nil {
			t.Fatal(err)
		}
		expired := 0
		for _, e := range events {
			if e.State == controlplanev1.CommandState_COMMAND_STATE_EXPIRED {
				expired++
			}
		}
		if expired != 1 {
			t.Errorf("command %s has %d EXPIRED events, want exactly 1 whatever replicas expired it", id, expired)
		}
	}
}
