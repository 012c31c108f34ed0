// Command demoha shows control plane replicas on one PostgreSQL surviving
// the loss of a rollout's owner (make demo-ha, issue #13).
//
// It starts a throwaway PostgreSQL server from the machine's binaries
// (internal/pgserver), three bin/controlplane replicas on one database,
// and four tenants, each with two v1 workspace containers and a
// bin/tenant-agent given all three replicas' agent addresses. It promotes
// v2 through replica 1, one tenant at a time with a health gate slow
// enough that the rollout is mid-way when replica 1, its owner, is killed
// with SIGKILL; another replica takes the rollout over once its lease runs
// out and finishes it. The demo exits 0 only if every workspace ends on v2
// with its data, the rollout is completed in the store, every tenant got
// exactly one refresh command, and the agents that were on replica 1 are
// on the others. It removes everything it started (containers, volumes,
// images, processes, the PostgreSQL server and its directory) on success,
// failure or Ctrl-C, and on failure prints the tails of the logs.
package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/molecule-ai/tenant-agent/agent/journal"
	"github.com/molecule-ai/tenant-agent/controlplane/cluster"
	"github.com/molecule-ai/tenant-agent/e2e/demokit"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/internal/pgserver"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

const (
	runtime = "codex"
	varDir  = "var/demoha"
	// certDir holds a dev PKI made for this run, removed with varDir.
	certDir  = varDir + "/certs"
	tenantsN = 4
	replicaN = 3
	// The replicas' cluster timing, short so the takeover shows quickly.
	rolloutLease = 3 * time.Second
	clusterSweep = 500 * time.Millisecond
	replicaTTL   = 3 * time.Second
	// stability is how long each new v2 container (v2 has no healthcheck)
	// must run before the agent moves on: with two containers a tenant
	// and one tenant at a time, the rollout is slow enough to be
	// interrupted mid-way.
	stability = 3 * time.Second
)

// run names this run's tenants: the agents manage every container
// carrying their tenant's labels, so the names must be new.
var run = demokit.RandomHex(3)

// midway is the index of the tenant whose refresh is under way when
// replica 1 is killed; its agent is put on replica 1 (see demo).
const midway = 1

type replica struct {
	n                              int
	id                             string // the ID it logs and the store records
	agentAddr, adminAddr, httpAddr string
	proc                           *demokit.Process
}

func (r *replica) String() string { return fmt.Sprintf("replica %d (%s)", r.n, r.id) }

type tenant struct {
	name       string
	agent      *demokit.Process
	workspaces []*demokit.Workspace
	before     map[string]string // workspace name: digest before
}

// The processes, for the log tails printed on failure.
var (
	procsMu  sync.Mutex
	replicas []*replica
	agents   []*demokit.Process
	pgLog    string
)

func main() {
	os.Exit(demokit.Run(demokit.Demo{
		Name:      "demo-ha",
		Passed:    "the rollout outlived its owner: every tenant runs v2 with its data, after exactly one refresh each",
		OnFailure: printTails,
		Body:      demo,
	}))
}

func printTails() {
	procsMu.Lock()
	defer procsMu.Unlock()
	for _, r := range replicas {
		r.proc.PrintTail(25)
	}
	for _, a := range agents {
		a.PrintTail(12)
	}
	if pgLog != "" {
		b, _ := os.ReadFile(pgLog)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		fmt.Fprintf(os.Stderr, "\n--- PostgreSQL, last lines of %s\n", pgLog)
		for _, l := range lines[max(0, len(lines)-10):] {
			fmt.Fprintln(os.Stderr, "  "+l)
		}
	}
}

func demo(ctx context.Context, d *registrytest.Standalone) int {
	began := time.Now()
	cli := demokit.Docker(ctx, d)
	os.RemoveAll(varDir)
	if err := os.MkdirAll(varDir, 0o700); err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() { os.RemoveAll(varDir) })

	tenants := make([]*tenant, tenantsN)
	names := make([]string, tenantsN)
	for i := range tenants {
		tenants[i] = &tenant{name: fmt.Sprintf("demoha-%s-%d", run, i+1), before: map[string]string{}}
		names[i] = tenants[i].name
		if n := demokit.Labelled(ctx, d, cli, tenants[i].name); n > 0 {
			d.Fatalf("%d containers already carry tenant %s's labels; the demo touches only what it creates", n, tenants[i].name)
		}
	}
	demokit.Step("dev certificates for this run's tenants %s in %s", strings.Join(names, " "), certDir)
	demokit.MustRun(ctx, d, "go", append([]string{"run", "./certs/cmd/devpki", "--out", certDir}, names...)...)

	demokit.Step("PostgreSQL from the machine's binaries, on a free loopback port")
	db, dsn := startPostgres(ctx, d)

	demokit.Step("registry on 127.0.0.1 with workspace images v1 and v2 (v2 has no healthcheck: its gate is a %s stability window)", stability)
	reg := registrytest.StartRegistry(d)
	repo, v1 := reg.Push(d, "molecule-ai/workspace-template-"+runtime, registrytest.WorkspaceImage(d, registrytest.Image{Version: "v1"}))
	_, v2 := reg.Push(d, "molecule-ai/workspace-template-"+runtime, registrytest.WorkspaceImage(d, registrytest.Image{Version: "v2", NoHealthcheck: true, Padding: 16 << 20}))
	d.Cleanup(func() { registrytest.RemoveImages(d, cli, repo) })
	fmt.Printf("  %s\n  v1 %s\n  v2 %s\n", repo, v1, v2)

	demokit.Step("two %s workspaces on v1 for each of %d tenants", runtime, tenantsN)
	demokit.Pull(ctx, d, cli, repo+"@"+v1)
	reg.Throttle(8 << 20) // the first pull of v2 shows its progress
	for _, t := range tenants {
		for i := 1; i <= 2; i++ {
			w := demokit.StartWorkspace(ctx, d, cli, t.name, fmt.Sprintf("%s-ws-%d", t.name, i), repo+"@"+v1, "v1")
			t.workspaces = append(t.workspaces, w)
			t.before[w.Name] = w.Digest(ctx, d, cli, repo)
			fmt.Printf("  %-24s %s  port %s  volume %s\n", w.Name, t.before[w.Name], w.Port, w.Volume)
		}
	}

	g := demokit.Grpcurl{CertDir: certDir}
	rs := make([]*replica, replicaN)
	var list []string
	for i := range rs {
		rs[i] = &replica{n: i + 1, agentAddr: registrytest.FreeAddr(d), adminAddr: registrytest.FreeAddr(d), httpAddr: registrytest.FreeAddr(d)}
		list = append(list, rs[i].agentAddr)
	}
	agentList := strings.Join(list, ",")
	startAgent := func(t *tenant) {
		// The agent takes only the demo's own repository, matched whole.
		p := demokit.StartProcess(d, varDir, "agent-"+t.name, "bin/tenant-agent", "--control-plane", agentList, "--server-name", "localhost",
			"--repository-pattern", strings.TrimSuffix(repo, runtime)+"{runtime}", "--allow-repos", repo,
			"--cert", certDir+"/agent-"+t.name+".pem", "--key", certDir+"/agent-"+t.name+"-key.pem", "--ca", certDir+"/ca.pem",
			"--state-dir", varDir+"/agent-"+t.name, "--stability-window", stability.String(), "--min-free-disk", "256MiB")
		t.agent = p
		procsMu.Lock()
		agents = append(agents, p)
		procsMu.Unlock()
	}

	// The agents shuffle the addresses; to have the hardest case every
	// run (the tenant refreshing when the owner dies has its stream on
	// the owner too), that tenant's agent starts while replica 1 alone
	// is up. The others spread over all three.
	demokit.Step("replica 1 (--store %s), and tenant %s's agent while replica 1 is the only one up", redacted(dsn), tenants[midway].name)
	startReplica(ctx, d, rs[0], dsn)
	startAgent(tenants[midway])
	waitForSessions(ctx, d, db, rs, tenants[midway:midway+1], nil)
	demokit.Step("replicas 2 and 3 on the same database, and the other agents (each given %s)", agentList)
	for _, r := range rs[1:] {
		startReplica(ctx, d, r, dsn)
	}
	for i, t := range tenants {
		if i != midway {
			startAgent(t)
		}
	}
	before := waitForSessions(ctx, d, db, rs, tenants, nil)
	waitForAgents(ctx, d, g, rs[0], tenants)
	printSessions("which replica holds each agent's stream (agent_sessions)", rs, tenants, before)

	demokit.Step("promote %s to v2 through replica 1 with grpcurl: one tenant at a time (max_parallel_tenants 1)", runtime)
	// Progress is watched through replica 2, which outlives the promote.
	wctx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	watchers := &demokit.Watchers{Ctx: wctx, G: g, Addr: rs[1].adminAddr}
	rolloutID, midwayCommand := "", ""
	var killedAt time.Time
	watched := map[string]bool{} // commands the promote's stream announced (and Promote watches)
	request := `{"runtime":"` + runtime + `","image_ref":"` + repo + "@" + v2 + `","notes":"make demo-ha","options":{"max_parallel_tenants":1}}`
	completed, err := demokit.Promote(ctx, d, g, rs[0].adminAddr, request, watchers, func(ev demokit.RolloutEvent) {
		if rolloutID == "" {
			rolloutID = ev.RolloutId
		}
		if ev.CommandId != "" {
			watched[ev.CommandId] = true
		}
		if ev.Kind == "ROLLOUT_EVENT_KIND_COMMAND_ISSUED" && ev.Tenant == tenants[midway].name {
			midwayCommand = ev.CommandId
		}
		// Once the agent runs the refresh, let it get into it, then kill
		// the owner.
		if ev.CommandId == "" || ev.CommandId != midwayCommand || ev.State != "COMMAND_STATE_RUNNING" || !killedAt.IsZero() {
			return
		}
		time.Sleep(time.Second)
		owner := rolloutRow(ctx, d, db, rolloutID).owner
		if owner != rs[0].id {
			d.Fatalf("the rollouts table names %q as rollout %s's owner, not replica 1 (%s), which runs the promote", owner, rolloutID, rs[0].id)
		}
		demokit.Step("SIGKILL %s, the owner of rollout %s, mid-way (tenant %s refreshing)", rs[0], rolloutID, ev.Tenant)
		rs[0].proc.Kill()
		killedAt = time.Now()
		fmt.Printf("  killed pid %d; the rollout's lease (%s) runs out, another replica takes it over\n", rs[0].proc.Pid, rolloutLease)
	})
	if ctx.Err() != nil {
		d.Fatal("interrupted during the promote")
	}
	switch {
	case killedAt.IsZero() && completed:
		d.Fatal("the rollout completed before tenant " + tenants[midway].name + "'s refresh was running: replica 1 was never killed mid-way")
	case killedAt.IsZero():
		d.Fatalf("the promote stream ended (%v) before tenant %s's refresh was running; replica 1 was never killed", err, tenants[midway].name)
	case rolloutID == "":
		d.Fatal("the promote stream named no rollout ID")
	}
	fmt.Printf("  the promote's stream ended with replica 1 (grpcurl: %v)\n", err)

	demokit.Step("following rollout %s in the store (and the commands through replica 2)", rolloutID)
	final := follow(ctx, d, db, rs, rolloutID, killedAt, watchers, watched)
	// The watchers end with their commands; give them a moment to print
	// the last lines, then stop any left waiting.
	watchersDone := make(chan struct{})
	go func() { watchers.Wait(); close(watchersDone) }()
	select {
	case <-watchersDone:
	case <-time.After(10 * time.Second):
		stopWatching()
		<-watchersDone
	}

	demokit.Step("the agents that were on replica 1 reconnect to the others")
	after := waitForSessions(ctx, d, db, rs, tenants, rs[0])
	printSessions("agent_sessions before the kill and now", rs, tenants, before, after)

	demokit.Step("checks")
	var failures []string
	fmt.Printf("  rollout %s: state %s, owner %s, message %q\n", rolloutID, final.state, nameOf(rs, final.owner), final.message)
	for _, r := range rs[1:] {
		for _, l := range strings.Split(r.proc.Log(), "\n") {
			if strings.Contains(l, "rollout="+rolloutID) {
				fmt.Printf("    replica %d's log: %s\n", r.n, l)
			}
		}
	}
	if final.owner == rs[0].id || final.owner == "" {
		failures = append(failures, fmt.Sprintf("the completed rollout's owner is %q, not a surviving replica", final.owner))
	}

	fmt.Println("  refresh commands per agent (SELECT agent, count(*) FROM commands WHERE kind = 1 GROUP BY agent):")
	counts := refreshCounts(ctx, d, db)
	for _, t := range tenants {
		n, agentsOf := 0, []string{}
		for agent, c := range counts {
			if strings.HasSuffix(agent, "/tenant/"+t.name) || strings.Contains(agent, "/tenant/"+t.name+"/") {
				n += c
				agentsOf = append(agentsOf, fmt.Sprintf("%s: %d", agent, c))
			}
		}
		fmt.Printf("    %-20s %s\n", t.name, strings.Join(agentsOf, ", "))
		if n != 1 || len(agentsOf) != 1 {
			failures = append(failures, fmt.Sprintf("tenant %s got %d refresh commands over %d agents; want exactly one", t.name, n, len(agentsOf)))
		}
	}
	if len(counts) != tenantsN {
		failures = append(failures, fmt.Sprintf("refresh commands went to %d agents; want %d (one per tenant)", len(counts), tenantsN))
	}

	// The agents' own word: each journal holds one refresh, the store's.
	fmt.Println("  refreshes in each agent's journal (--state-dir/commands), against the store:")
	stored := refreshIDs(ctx, d, db)
	for _, t := range tenants {
		got, err := journaledRefreshes(varDir + "/agent-" + t.name)
		if err != nil {
			failures = append(failures, fmt.Sprintf("tenant %s's journal: %v", t.name, err))
			continue
		}
		var want []string
		for agent, ids := range stored {
			if strings.HasSuffix(agent, "/tenant/"+t.name) {
				want = append(want, ids...)
			}
		}
		fmt.Printf("    %-20s journal %v, store %v\n", t.name, got, want)
		if len(got) != 1 || len(want) != 1 || got[0] != want[0]+" finished" {
			failures = append(failures, fmt.Sprintf("tenant %s's agent journaled refreshes %v; the store has %v: want the one stored command, finished, once", t.name, got, want))
		}
	}

	fmt.Printf("  %-24s %-73s %-73s %s\n", "workspace", "before", "after", "data kept (/data/history)")
	for _, t := range tenants {
		for _, w := range t.workspaces {
			now := w.Digest(ctx, d, cli, repo)
			hist, versions := w.History()
			fmt.Printf("  %-24s %-73s %-73s %s\n", w.Name, t.before[w.Name], now, strings.Join(versions, " then "))
			if now != v2 {
				failures = append(failures, fmt.Sprintf("workspace %s runs %s, not v2 %s", w.Name, now, v2))
			} else if !demokit.KeptData(hist) {
				failures = append(failures, fmt.Sprintf("workspace %s lost its data: /data/history is %q", w.Name, hist))
			}
		}
	}
	if len(failures) > 0 {
		d.Fatal("\n  " + strings.Join(failures, "\n  "))
	}
	fmt.Printf("\n  took %s in all\n", time.Since(began).Round(time.Second))
	return 0
}

// startPostgres starts the server and creates the replicas' database,
// returning a connection for the demo's own queries and the database's
// DSN.
func startPostgres(ctx context.Context, d *registrytest.Standalone) (*pgx.Conn, string) {
	bin, err := pgserver.FindBin()
	if err != nil {
		d.Fatal(err)
	}
	srv, err := pgserver.Start(bin)
	if err != nil {
		d.Fatal("start PostgreSQL: ", err)
	}
	d.Cleanup(func() {
		procsMu.Lock()
		pgLog = ""
		procsMu.Unlock()
		if err := srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "  stopping PostgreSQL:", err)
		}
	})
	procsMu.Lock()
	pgLog = srv.LogPath()
	procsMu.Unlock()
	dsn, err := srv.CreateDatabase(ctx, "tenantagent")
	if err != nil {
		d.Fatal("create database: ", err)
	}
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() { db.Close(context.Background()) })
	fmt.Printf("  PostgreSQL %s from %s on 127.0.0.1:%d, data in %s (removed at the end)\n", srv.Version(), bin, srv.Port, srv.Dir)
	return db, dsn
}

var servingRE = regexp.MustCompile(`msg="control plane serving".*\breplica=("?)([^" ]*)`)

// startReplica starts a controlplane on the shared database and waits for
// it to serve, reading its replica ID from the log.
func startReplica(ctx context.Context, d *registrytest.Standalone, r *replica, dsn string) {
	r.proc = demokit.StartProcess(d, varDir, fmt.Sprintf("replica-%d", r.n), "bin/controlplane",
		"--agent-addr", r.agentAddr, "--admin-addr", r.adminAddr, "--http-addr", r.httpAddr,
		"--cert", certDir+"/controlplane.pem", "--key", certDir+"/controlplane-key.pem", "--ca", certDir+"/ca.pem",
		"--store", dsn, "--heartbeat-interval", "2s",
		"--rollout-lease", rolloutLease.String(), "--cluster-sweep", clusterSweep.String(), "--replica-ttl", replicaTTL.String())
	procsMu.Lock()
	replicas = append(replicas, r)
	procsMu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := servingRE.FindStringSubmatch(r.proc.Log()); m != nil {
			r.id = m[2]
			break
		}
		if r.proc.Exited() {
			d.Fatalf("replica %d exited at start; its log:\n%s", r.n, r.proc.Tail(20))
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			d.Fatalf("replica %d did not log \"control plane serving\" within 30s", r.n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	switch r.id {
	case "":
		d.Fatalf("replica %d logs no replica ID in its \"control plane serving\" line", r.n)
	case cluster.LocalReplica:
		d.Fatalf("replica %d on %s runs as a cluster of one (replica=%s in its log): it does not join the other replicas on PostgreSQL", r.n, redacted(dsn), r.id)
	}
	for _, o := range replicas {
		if o != r && o.id == r.id {
			d.Fatalf("replicas %d and %d both call themselves %q", o.n, r.n, r.id)
		}
	}
	fmt.Printf("  replica %d is %s: agents %s, admin %s, http %s\n", r.n, r.id, r.agentAddr, r.adminAddr, r.httpAddr)
}

// waitForSessions waits up to 45 s for each tenant's agent to hold a
// stream on a replica (agent_sessions) other than not, and returns which
// replica holds each tenant's.
func waitForSessions(ctx context.Context, d *registrytest.Standalone, db *pgx.Conn, rs []*replica, tenants []*tenant, not *replica) map[string]string {
	deadline := time.Now().Add(45 * time.Second)
	for {
		held := sessions(ctx, d, db)
		missing := []string{}
		for _, t := range tenants {
			if r := held[t.name]; r == "" || (not != nil && r == not.id) {
				missing = append(missing, t.name)
			}
			if t.agent != nil && t.agent.Exited() {
				d.Fatalf("tenant %s's agent exited; its log:\n%s", t.name, t.agent.Tail(20))
			}
		}
		if len(missing) == 0 {
			return held
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			what := "hold a stream on a replica"
			if not != nil {
				what = "hold a stream on a replica other than " + not.String()
			}
			d.Fatalf("after 45s, the agents of %s do not %s (agent_sessions: %v)", strings.Join(missing, ", "), what, held)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitForAgents waits until replica r lists every tenant's agent as
// connected and reporting the runtime: what the rollout will cover.
func waitForAgents(ctx context.Context, d *registrytest.Standalone, g demokit.Grpcurl, r *replica, tenants []*tenant) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := g.Command(ctx, r.adminAddr, `{"connected_only":true,"page_size":100}`, "ListAgents").Output()
		ok := err == nil
		for _, t := range tenants {
			ok = ok && strings.Contains(string(out), `"tenant": "`+t.name+`"`)
		}
		if ok && strings.Count(string(out), `"runtime": "`+runtime+`"`) >= len(tenants) {
			fmt.Printf("  %s lists all %d agents connected, each reporting its %s containers\n", r, len(tenants), runtime)
			return
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			d.Fatalf("%s does not list all %d agents as connected with their %s containers after 30s (ListAgents: %v)\n%s", r, len(tenants), runtime, err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func printSessions(title string, rs []*replica, tenants []*tenant, maps ...map[string]string) {
	fmt.Printf("  %s:\n", title)
	for _, t := range tenants {
		cols := []string{}
		for _, m := range maps {
			cols = append(cols, fmt.Sprintf("%-28s", nameOf(rs, m[t.name])))
		}
		fmt.Printf("    %-20s %s\n", t.name, strings.Join(cols, " "))
	}
}

// nameOf names a replica by its number and ID.
func nameOf(rs []*replica, id string) string {
	for _, r := range rs {
		if r.id == id {
			return r.String()
		}
	}
	if id == "" {
		return "(none)"
	}
	return id
}

type rollout struct {
	state, owner, message string
	epoch                 int64
}

func rolloutRow(ctx context.Context, d *registrytest.Standalone, db *pgx.Conn, id string) rollout {
	var r rollout
	if err := db.QueryRow(ctx, `SELECT state, owner, epoch, message FROM rollouts WHERE id = $1`, id).Scan(&r.state, &r.owner, &r.epoch, &r.message); err != nil {
		d.Fatalf("read rollout %s: %v", id, err)
	}
	return r
}

// follow reads the rollout and its commands from the store until it
// completes (at most 90 s), printing who owns it and each command's
// state as they change, and watching each command not watched yet
// through a surviving replica.
func follow(ctx context.Context, d *registrytest.Standalone, db *pgx.Conn, rs []*replica, id string, killedAt time.Time, watchers *demokit.Watchers, watched map[string]bool) rollout {
	deadline := time.Now().Add(90 * time.Second)
	var last rollout
	seen := map[string]int32{}
	for {
		r := rolloutRow(ctx, d, db, id)
		if r.owner != last.owner || r.state != last.state {
			took := ""
			if r.owner != rs[0].id && r.owner != "" && last.owner != r.owner {
				took = fmt.Sprintf(" (took it over %s after the kill, epoch %d)", time.Since(killedAt).Round(100*time.Millisecond), r.epoch)
			}
			fmt.Printf("  [store] rollout %s: %s, owner %s%s\n", id, r.state, nameOf(rs, r.owner), took)
		}
		rows, err := db.Query(ctx, `SELECT id, tenant, state FROM commands WHERE rollout_id = $1 ORDER BY seq`, id)
		if err != nil {
			d.Fatal("read the rollout's commands: ", err)
		}
		type cmd struct {
			id, tenant string
			state      int32
		}
		var cmds []cmd
		for rows.Next() {
			var c cmd
			if err := rows.Scan(&c.id, &c.tenant, &c.state); err != nil {
				d.Fatal(err)
			}
			cmds = append(cmds, c)
		}
		if err := rows.Err(); err != nil {
			d.Fatal(err)
		}
		for _, c := range cmds {
			old, known := seen[c.id]
			if known && old == c.state {
				continue
			}
			seen[c.id] = c.state
			if !watched[c.id] {
				watched[c.id] = true
				watchers.Watch(c.id)
			}
			fmt.Printf("  [store] %-20s %s %s\n", c.tenant, c.id, strings.TrimPrefix(controlplanev1.CommandState(c.state).String(), "COMMAND_STATE_"))
		}
		last = r
		switch r.state {
		case "completed":
			return r
		case "running":
		default:
			d.Fatalf("rollout %s is %s: %s", id, r.state, r.message)
		}
		if ctx.Err() != nil {
			d.Fatal("interrupted while following the rollout")
		}
		if time.Now().After(deadline) {
			d.Fatalf("rollout %s did not complete within 90s of the kill (state %s, owner %s)", id, r.state, nameOf(rs, r.owner))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// sessions returns, per tenant, the replica holding its agent's stream
// ("" for none).
func sessions(ctx context.Context, d *registrytest.Standalone, db *pgx.Conn) map[string]string {
	rows, err := db.Query(ctx, `SELECT a.tenant, s.replica FROM agent_sessions s JOIN agents a ON a.identity = s.identity WHERE s.replica <> ''`)
	if err != nil {
		d.Fatal("read agent_sessions: ", err)
	}
	out := map[string]string{}
	for rows.Next() {
		var tenant, replica string
		if err := rows.Scan(&tenant, &replica); err != nil {
			d.Fatal(err)
		}
		out[tenant] = replica
	}
	if err := rows.Err(); err != nil {
		d.Fatal("read agent_sessions: ", err)
	}
	return out
}

// refreshCounts is SELECT agent, count(*) FROM commands WHERE kind = 1
// GROUP BY agent.
func refreshCounts(ctx context.Context, d *registrytest.Standalone, db *pgx.Conn) map[string]int {
	rows, err := db.Query(ctx, `SELECT agent, count(*) FROM commands WHERE kind = $1 GROUP BY agent`, int32(controlplanev1.CommandKind_COMMAND_KIND_REFRESH))
	if err != nil {
		d.Fatal("count refresh commands: ", err)
	}
	out := map[string]int{}
	for rows.Next() {
		var agent string
		var n int
		if err := rows.Scan(&agent, &n); err != nil {
			d.Fatal(err)
		}
		out[agent] = n
	}
	if err := rows.Err(); err != nil {
		d.Fatal("count refresh commands: ", err)
	}
	return out
}

// refreshIDs is each agent's refresh command IDs in the store.
func refreshIDs(ctx context.Context, d *registrytest.Standalone, db *pgx.Conn) map[string][]string {
	rows, err := db.Query(ctx, `SELECT agent, id FROM commands WHERE kind = $1 ORDER BY seq`, int32(controlplanev1.CommandKind_COMMAND_KIND_REFRESH))
	if err != nil {
		d.Fatal("read refresh commands: ", err)
	}
	out := map[string][]string{}
	for rows.Next() {
		var agent, id string
		if err := rows.Scan(&agent, &id); err != nil {
			d.Fatal(err)
		}
		out[agent] = append(out[agent], id)
	}
	if err := rows.Err(); err != nil {
		d.Fatal("read refresh commands: ", err)
	}
	return out
}

// journaledRefreshes lists the refreshes an agent's journal holds, as
// "<command id> <state>".
func journaledRefreshes(stateDir string) ([]string, error) {
	j, err := journal.Open(stateDir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range j.List() {
		m, err := r.Message()
		if err != nil {
			return nil, err
		}
		if m.GetRefresh() != nil {
			out = append(out, r.ID+" "+string(r.State))
		}
	}
	return out, nil
}

// redacted is a DSN fit to print (the demo's has no password anyway).
func redacted(dsn string) string {
	if i := strings.Index(dsn, "?"); i > 0 {
		return dsn[:i]
	}
	return dsn
}
