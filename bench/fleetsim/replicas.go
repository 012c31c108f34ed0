package main

// The replicas mode (-replicas K): one run measures a promote's fan-out
// to N agents on three arrangements of the control plane, one after the
// other, each with a fresh fleet and store:
//
//  1. one replica on SQLite (what the default mode measures),
//  2. one replica on PostgreSQL (the cost of the database alone),
//  3. K replicas on one PostgreSQL database, every agent given all K
//     addresses (as --control-plane a,b,c), the promote sent to replica A;
//     agents on A and agents on the others are reported apart (the
//     cross-replica path: A journals, PostgreSQL rings the holder's
//     doorbell, the holder reads the agent's pending commands and sends).
//
// Per agent, the latency is from the promote call to the ACKED time in the
// store's record of its command. Where each agent's stream is held is read
// from each replica's /metrics (its heartbeat_age_seconds series names the
// tenants it holds), before and after the promotes.
//
// For a diagnosis: FLEETSIM_DUMP=file appends every command's times to a
// CSV file, FLEETSIM_PROFILE=prefix saves a CPU profile of each
// replica from the first promote of each setup on, for
// FLEETSIM_PROFILE_SECONDS (default 3; 3 × -promotes covers every promote
// and the pauses between them), FLEETSIM_KEEP=1 keeps the scratch folder (control plane logs, agent journals),
// FLEETSIM_CP_LOG_LEVEL=info makes the control planes log more, and
// -pg-statements counts PostgreSQL's statements per promote.

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/internal/pgserver"
)

// replicaSetup is one arrangement of control planes.
type replicaSetup struct {
	Name     string `json:"name"`
	Replicas int    `json:"replicas"`
	Postgres bool   `json:"postgres"`
}

// cmdTimes is one command of a promote, in seconds from the promote call.
type cmdTimes struct {
	tenant string
	issued float64 // created_at: the dispatcher began journaling the fan-out
	sent   float64 // the SENT event (-1 if none: the ack was recorded first, or recording SENT failed)
	acked  float64 // the ACKED event, or else the first later one
	// unacked is true when the record has no ACKED event: the result
	// was recorded first (see commandTimes), and acked is its time.
	unacked bool
}

// group is the agents of one setup on some of its replicas: one
// promote's figures (summarize), or the medians over the promotes
// (groups).
type group struct {
	Label       string  `json:"label"`
	Agents      int     `json:"agents"`
	IssuedP50   float64 `json:"issued_p50_seconds"`
	SentP50     float64 `json:"sent_p50_seconds"`
	SentP99     float64 `json:"sent_p99_seconds"`
	AckedP50    float64 `json:"acked_p50_seconds"`
	AckedP99    float64 `json:"acked_p99_seconds"`
	AckedMax    float64 `json:"acked_max_seconds"`
	AckedMinusS float64 `json:"acked_after_sent_p99_seconds"`
	// AckedP99Each is each promote's acked p99; the fields above are
	// medians over the promotes.
	AckedP99Each []float64 `json:"acked_p99_each_promote_seconds"`
	// Unacked counts commands with no ACKED event, timed by their result.
	Unacked int `json:"no_acked_event"`
	// Unsent counts commands with no SENT event (the ack was recorded
	// first, or recording SENT failed).
	Unsent int `json:"no_sent_event"`
}

type setupResult struct {
	Setup replicaSetup `json:"setup"`
	// PerReplica is how many agents each replica held.
	PerReplica []int `json:"agents_per_replica"`
	// AllAcked and AllStored are medians over the promotes: the last ack
	// and the rollout's COMPLETED event.
	AllAcked  float64 `json:"all_acked_median_seconds"`
	AllStored float64 `json:"all_stored_median_seconds"`
	Groups    []group `json:"groups"`
	// CPU is the CPU time each process used from the promote call to
	// COMPLETED, averaged over the promotes: one per replica, then
	// PostgreSQL (postmaster and backends; absent on SQLite), then fleetsim
	// itself (the agents). Wall is that span, averaged.
	CPU  []float64 `json:"cpu_seconds"`
	Wall float64   `json:"wall_seconds"`
	// Deadlocks is how many deadlocks PostgreSQL's log reports during the
	// setup's run (it aborts one transaction of each, after
	// deadlock_timeout, 1 s).
	Deadlocks int `json:"postgres_deadlocks"`
	// Statements counts, with -pg-statements, the statements PostgreSQL
	// ran from the promote call to COMPLETED, by kind, averaged over the
	// promotes.
	Statements map[string]float64 `json:"postgres_statements,omitempty"`
}

type replicasResult struct {
	N        int           `json:"n"`
	Promotes int           `json:"promotes"`
	Setups   []setupResult `json:"setups"`
	// DeltaP99 is acked p99 of K replicas' agents off the promote's
	// replica minus acked p99 of one replica on SQLite; the target is at
	// most 0.1 s.
	DeltaP99 float64 `json:"delta_p99_seconds"`
}

// cleanups run once each, on return or on SIGINT/SIGTERM, so no control
// plane, PostgreSQL or scratch folder outlives the run.
type cleanups struct {
	mu  sync.Mutex
	fns []func()
}

func (c *cleanups) add(fn func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var once sync.Once
	c.fns = append(c.fns, func() { once.Do(fn) })
}

// run runs the cleanups, newest first.
func (c *cleanups) run() {
	c.mu.Lock()
	fns := append([]func(){}, c.fns...)
	c.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

func runReplicas(n, k, promotes int, logStatements bool, cpBin, work string) (replicasResult, error) {
	res := replicasResult{N: n, Promotes: promotes}
	if k < 2 {
		return res, fmt.Errorf("-replicas %d: want at least 2", k)
	}
	var clean cleanups
	defer clean.run()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		if _, ok := <-sigs; ok {
			fmt.Fprintln(os.Stderr, "fleetsim: interrupted; cleaning up")
			clean.run()
			os.Exit(130)
		}
	}()
	raiseFDLimit()

	dir, err := scratch(work)
	if err != nil {
		return res, err
	}
	clean.add(func() {
		if os.Getenv("FLEETSIM_KEEP") != "" { // logs and journals, for a failure's post-mortem
			fmt.Fprintln(os.Stderr, "fleetsim: kept", dir)
			return
		}
		os.RemoveAll(dir)
	})
	certDir := filepath.Join(dir, "certs")
	certs, err := issueCerts(certDir, n)
	if err != nil {
		return res, err
	}
	bin, err := pgserver.FindBin()
	if err != nil {
		return res, err
	}
	fmt.Fprintln(os.Stderr, "starting PostgreSQL")
	pg, err := pgserver.Start(bin)
	if err != nil {
		return res, err
	}
	clean.add(func() {
		if err := pg.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "fleetsim: stopping PostgreSQL:", err)
		}
	})

	setups := []replicaSetup{
		{Name: "1 replica, SQLite", Replicas: 1},
		{Name: "1 replica, PostgreSQL", Replicas: 1, Postgres: true},
		{Name: fmt.Sprintf("%d replicas, PostgreSQL", k), Replicas: k, Postgres: true},
	}
	for i, s := range setups {
		fmt.Fprintf(os.Stderr, "%s: %d agents\n", s.Name, n)
		var stores []string
		if s.Postgres {
			dsn, err := pg.CreateDatabase(context.Background(), fmt.Sprintf("fleetsim_%d", i))
			if err != nil {
				return res, err
			}
			if logStatements {
				if err := setLogStatements(dsn); err != nil {
					return res, err
				}
			}
			for range s.Replicas {
				stores = append(stores, dsn)
			}
		} else {
			stores = []string{filepath.Join(dir, fmt.Sprintf("setup%d.db", i))}
		}
		pgPID := 0
		if s.Postgres {
			pgPID = postmasterPID(filepath.Join(pg.Dir, "data"))
		}
		deadlocks := countInFile(pg.LogPath(), "deadlock detected")
		pgLog := ""
		if logStatements && s.Postgres {
			pgLog = pg.LogPath()
		}
		sr, err := measureSetup(s, stores, pgPID, pgLog, promotes, cpBin, filepath.Join(dir, fmt.Sprintf("setup%d", i)), certDir, certs)
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.Name, err)
		}
		sr.Deadlocks = countInFile(pg.LogPath(), "deadlock detected") - deadlocks
		res.Setups = append(res.Setups, sr)
	}
	single := res.Setups[0].Groups[0].AckedP99
	last := res.Setups[len(res.Setups)-1]
	res.DeltaP99 = last.Groups[len(last.Groups)-1].AckedP99 - single
	return res, nil
}

// measureSetup starts the setup's control planes and a fleet spread over
// them, promotes through the first replica promotes times, and stops it
// all.
func measureSetup(s replicaSetup, stores []string, pgPID int, pgLog string, promotes int, cpBin, dir, certDir string, certs fleetCerts) (res setupResult, err error) {
	res = setupResult{Setup: s}
	n := len(certs.files)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, err
	}
	var local cleanups
	defer local.run()
	defer func() {
		if err != nil {
			showLogs(dir)
		}
	}()

	cps := make([][3]string, s.Replicas)
	pids := make([]int, s.Replicas)
	agentAddrs := make([]string, s.Replicas)
	for i := range cps {
		cps[i] = [3]string{freeAddr(), freeAddr(), freeAddr()}
		agentAddrs[i] = cps[i][0]
		cmd, err := startCPOn(cpBin, filepath.Join(dir, fmt.Sprintf("controlplane-%c.log", 'A'+i)), certDir, cps[i], stores[i])
		if err != nil {
			return res, err
		}
		pids[i] = cmd.Process.Pid
		local.add(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	metrics := func(i int) string { return "http://" + cps[i][2] + "/metrics" }

	ctx, cancel := context.WithCancel(context.Background())
	wait, err := startFleet(ctx, filepath.Join(dir, "agents"), certs, strings.Join(agentAddrs, ","))
	local.add(func() { cancel(); wait() }) // agents stop before the control planes
	if err != nil {
		return res, err
	}
	admin, err := adminClient(certDir, cps[0][1])
	if err != nil {
		return res, err
	}
	// Every replica holds its share, and replica A knows every agent as
	// connected with its runtime reported (else the rollout would leave
	// some waiting).
	if err := waitFor(2*time.Minute, func() (bool, string) {
		total := 0
		for i := range cps {
			total += max(int(metric(metrics(i), "tenantagent_controlplane_connected_agents")), 0)
		}
		if total < n {
			return false, fmt.Sprintf("%d of %d agents connected", total, n)
		}
		ready, err := readyAgents(ctx, admin)
		return err == nil && ready == n, fmt.Sprintf("replica A sees %d of %d agents connected and reporting (%v)", ready, n, err)
	}); err != nil {
		return res, err
	}
	time.Sleep(3 * time.Second) // let the first heartbeats and writes behind settle
	holder, perReplica, err := holders(cps, n)
	if err != nil {
		return res, err
	}
	res.PerReplica = perReplica
	fmt.Fprintf(os.Stderr, "  agents per replica: %v\n", perReplica)

	admin.ListRuntimePins(ctx, &controlplanev1.ListRuntimePinsRequest{}) // the connection is up before the clock starts
	var perPromote [][]cmdTimes
	var allAcked, allStored []float64
	// CPU time of each replica, PostgreSQL and fleetsim.
	cpu := func() []time.Duration {
		out := make([]time.Duration, 0, len(pids)+2)
		for _, pid := range pids {
			out = append(out, procCPU(pid))
		}
		if pgPID != 0 {
			out = append(out, treeCPU(pgPID))
		}
		return append(out, selfCPU())
	}
	for p := range promotes {
		// A new digest each time: every agent is off it.
		digest := "sha256:" + strings.Repeat(strconv.Itoa(p%8+2), 64)
		if prefix := os.Getenv("FLEETSIM_PROFILE"); prefix != "" && p == 0 {
			seconds := cmp.Or(os.Getenv("FLEETSIM_PROFILE_SECONDS"), "3")
			for i := range cps {
				go profile("http://"+cps[i][2]+"/debug/pprof/profile?seconds="+seconds, fmt.Sprintf("%s-%s-%c.pprof", prefix, strings.NewReplacer(" ", "", ",", "-").Replace(s.Name), 'A'+i))
			}
		}
		var before, after []time.Duration
		var logFrom, logTo int64
		times, stored, err := promoteOnce(ctx, admin, digest, n,
			func() { before, logFrom = cpu(), fileSize(pgLog) },
			func() { after, logTo = cpu(), fileSize(pgLog) })
		if err != nil {
			return res, fmt.Errorf("promote %d: %w", p+1, err)
		}
		if res.CPU == nil {
			res.CPU = make([]float64, len(before))
		}
		for i := range before {
			res.CPU[i] += (after[i] - before[i]).Seconds() / float64(promotes)
		}
		res.Wall += stored / float64(promotes)
		if pgLog != "" {
			st, err := countStatements(pgLog, logFrom, logTo)
			if err != nil {
				return res, err
			}
			if res.Statements == nil {
				res.Statements = map[string]float64{}
			}
			for k, v := range st {
				res.Statements[k] += float64(v) / float64(promotes)
			}
		}
		fmt.Fprintf(os.Stderr, "  promote %d: all acked %.3f s, stored %.3f s\n", p+1, maxAcked(times), stored)
		dumpTimes(s.Name, p+1, holder, times)
		perPromote = append(perPromote, times)
		allAcked = append(allAcked, maxAcked(times))
		allStored = append(allStored, stored)
		time.Sleep(2 * time.Second) // writes behind and reports settle before the next
	}
	// No agent moved during the promotes (a reconnect would blur the split).
	after, _, err := holders(cps, n)
	if err != nil {
		return res, err
	}
	for t, r := range holder {
		if after[t] != r {
			return res, fmt.Errorf("agent %s moved from replica %c to %c during the promotes", t, 'A'+r, 'A'+after[t])
		}
	}
	res.AllAcked, res.AllStored = median(allAcked), median(allStored)

	res.Groups = groups(s.Replicas, holder, perPromote)
	return res, nil
}

// groups splits each promote's commands by where their agents are: all
// of them on one replica; else per replica, then every replica but A
// together. Each group's figures are medians over the promotes of each
// promote's own (a promote slowed by the machine's other work moves a
// median less than it moves a percentile of all promotes pooled).
func groups(replicas int, holder map[string]int, perPromote [][]cmdTimes) []group {
	labels := []string{"all"}
	if replicas > 1 {
		labels = labels[:0]
		var others []string
		for r := range replicas {
			label := fmt.Sprintf("on %c", 'A'+r)
			if r == 0 {
				label += " (promoted there)"
			} else {
				others = append(others, string(rune('A'+r)))
			}
			labels = append(labels, label)
		}
		labels = append(labels, "on "+strings.Join(others, ", "))
	}
	each := make([][]group, len(labels)) // per label, per promote
	for _, times := range perPromote {
		split := make([][]cmdTimes, len(labels))
		for _, c := range times {
			if replicas == 1 {
				split[0] = append(split[0], c)
				continue
			}
			r := holder[c.tenant]
			split[r] = append(split[r], c)
			if r != 0 {
				split[replicas] = append(split[replicas], c)
			}
		}
		for l := range labels {
			each[l] = append(each[l], summarize(labels[l], split[l]))
		}
	}
	out := make([]group, len(labels))
	for l, gs := range each {
		med := func(f func(group) float64) float64 {
			xs := make([]float64, len(gs))
			for i, g := range gs {
				xs[i] = f(g)
			}
			return median(xs)
		}
		// Over the promotes whose commands have SENT events at all.
		medSent := func(f func(group) float64) float64 {
			var xs []float64
			for _, g := range gs {
				if g.Unsent < g.Agents {
					xs = append(xs, f(g))
				}
			}
			if len(xs) == 0 {
				return 0
			}
			return median(xs)
		}
		g := group{Label: labels[l], Agents: gs[0].Agents,
			IssuedP50:   med(func(g group) float64 { return g.IssuedP50 }),
			SentP50:     medSent(func(g group) float64 { return g.SentP50 }),
			SentP99:     medSent(func(g group) float64 { return g.SentP99 }),
			AckedP50:    med(func(g group) float64 { return g.AckedP50 }),
			AckedP99:    med(func(g group) float64 { return g.AckedP99 }),
			AckedMax:    med(func(g group) float64 { return g.AckedMax }),
			AckedMinusS: medSent(func(g group) float64 { return g.AckedMinusS }),
		}
		for _, x := range gs {
			g.AckedP99Each = append(g.AckedP99Each, x.AckedP99)
			g.Unacked += x.Unacked
			g.Unsent += x.Unsent
		}
		out[l] = g
	}
	return out
}

// countInFile counts the lines of a file holding s.
func countInFile(name, s string) int {
	b, _ := os.ReadFile(name)
	return strings.Count(string(b), s)
}

// showLogs prints the tail of each control plane log in dir (warnings
// and errors only) to stderr.
func showLogs(dir string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "controlplane-*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		fmt.Fprintf(os.Stderr, "--- %s (last %d lines)\n%s\n", filepath.Base(l), min(len(lines), 20), strings.Join(lines[max(len(lines)-20, 0):], "\n"))
	}
}

// promoteOnce promotes digest through admin and waits for the rollout to
// complete with n succeeded; it returns each command's times and when
// COMPLETED arrived, from the promote call.
func promoteOnce(ctx context.Context, admin controlplanev1.AdminServiceClient, digest string, n int, start, done func()) ([]cmdTimes, float64, error) {
	start()
	t0 := time.Now()
	stream, err := admin.PromoteRuntimeImage(ctx, &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digest,
		Options: &controlplanev1.RolloutOptions{MaxParallelTenants: uint32(n)}})
	if err != nil {
		return nil, 0, err
	}
	var rolloutID string
	var stored float64
	for {
		resp, err := stream.Recv()
		if err != nil {
			return nil, 0, fmt.Errorf("promote stream: %w", err)
		}
		rolloutID = resp.GetEvent().GetRolloutId()
		if k := resp.GetEvent().GetKind(); k == controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED || k == controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED {
			stored = time.Since(t0).Seconds()
			done()
			if c := resp.GetEvent().GetCounts(); int(c.GetSucceeded()) != n {
				return nil, 0, fmt.Errorf("rollout: %v", resp.GetEvent())
			}
			break
		}
	}
	times, err := commandTimes(ctx, admin, rolloutID, t0)
	return times, stored, err
}

// commandTimes reads, from the control plane's own record, when each of a
// rollout's commands was journaled, sent and acknowledged (journaled by
// its agent), relative to t0.
func commandTimes(ctx context.Context, admin controlplanev1.AdminServiceClient, rolloutID string, t0 time.Time) ([]cmdTimes, error) {
	var ids []string
	token := ""
	for {
		page, err := admin.ListCommands(ctx, &controlplanev1.ListCommandsRequest{RolloutId: rolloutID, PageSize: 500, PageToken: token})
		if err != nil {
			return nil, err
		}
		for _, c := range page.GetCommands() {
			ids = append(ids, c.GetCommandId())
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	out := make([]cmdTimes, len(ids))
	var wg sync.WaitGroup
	errs := make(chan error, len(ids))
	sem := make(chan struct{}, 32)
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			resp, err := admin.GetCommand(ctx, &controlplanev1.GetCommandRequest{CommandId: id, IncludeEvents: true})
			if err != nil {
				errs <- err
				return
			}
			ct := cmdTimes{tenant: resp.GetCommand().GetTenant(), sent: -1, acked: -1,
				issued: resp.GetCommand().GetCreatedAt().AsTime().Sub(t0).Seconds()}
			for _, ev := range resp.GetEvents() {
				at := ev.GetTime().AsTime().Sub(t0).Seconds()
				switch st := ev.GetState(); {
				case st == controlplanev1.CommandState_COMMAND_STATE_SENT:
					ct.sent = at
				case st == controlplanev1.CommandState_COMMAND_STATE_ACKED:
					ct.acked = at
				case ct.acked < 0 && st != controlplanev1.CommandState_COMMAND_STATE_PENDING:
					// RUNNING or an end with no ACKED before it: the
					// agent's result overtook its ack (the agent resends
					// unconfirmed results at each heartbeat, ahead of
					// what it has queued), so the ack changed nothing.
					// The result says the agent had the command.
					ct.acked, ct.unacked = at, true
				}
			}
			if ct.acked < 0 {
				var evs []string
				for _, ev := range resp.GetEvents() {
					evs = append(evs, fmt.Sprintf("%s at %+.3f s (%s)", strings.TrimPrefix(ev.GetState().String(), "COMMAND_STATE_"), ev.GetTime().AsTime().Sub(t0).Seconds(), ev.GetMessage()))
				}
				errs <- fmt.Errorf("command %s has no ACKED event: %s", id, strings.Join(evs, "; "))
				return
			}
			out[i] = ct
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return out, nil
}

// readyAgents counts the agents admin's replica lists as connected with a
// runtime reported.
func readyAgents(ctx context.Context, admin controlplanev1.AdminServiceClient) (int, error) {
	ready, token := 0, ""
	for {
		page, err := admin.ListAgents(ctx, &controlplanev1.ListAgentsRequest{ConnectedOnly: true, PageSize: 1000, PageToken: token})
		if err != nil {
			return ready, err
		}
		for _, a := range page.GetAgents() {
			if a.GetConnected() && len(a.GetRuntimes()) > 0 {
				ready++
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			return ready, nil
		}
	}
}

// holders maps each tenant to the replica holding its stream, from each
// replica's heartbeat_age_seconds series (one per tenant it holds), and
// counts each replica's agents. Every one of the n tenants must be held
// by exactly one replica.
func holders(cps [][3]string, n int) (map[string]int, []int, error) {
	const prefix = `tenantagent_controlplane_heartbeat_age_seconds{tenant="`
	holder := map[string]int{}
	counts := make([]int, len(cps))
	for i, addrs := range cps {
		resp, err := http.Get("http://" + addrs[2] + "/metrics")
		if err != nil {
			return nil, nil, err
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			rest, ok := strings.CutPrefix(sc.Text(), prefix)
			if !ok {
				continue
			}
			tenant, _, _ := strings.Cut(rest, `"`)
			if prev, dup := holder[tenant]; dup {
				resp.Body.Close()
				return nil, nil, fmt.Errorf("tenant %s held by replicas %c and %c", tenant, 'A'+prev, 'A'+i)
			}
			holder[tenant] = i
			counts[i]++
		}
		resp.Body.Close()
		if err := sc.Err(); err != nil {
			return nil, nil, err
		}
	}
	if len(holder) != n {
		return nil, nil, fmt.Errorf("the replicas hold %d agents, want %d", len(holder), n)
	}
	return holder, counts, nil
}

func summarize(label string, cs []cmdTimes) group {
	var issued, sent, acked, after []float64
	unacked, unsent := 0, 0
	for _, c := range cs {
		issued = append(issued, c.issued)
		acked = append(acked, c.acked)
		if c.unacked {
			unacked++
		}
		if c.sent >= 0 {
			sent = append(sent, c.sent)
			after = append(after, c.acked-c.sent)
		} else {
			unsent++
		}
	}
	sort.Float64s(issued)
	sort.Float64s(sent)
	sort.Float64s(acked)
	sort.Float64s(after)
	g := group{Label: label, Agents: len(cs), Unacked: unacked, Unsent: unsent}
	if len(acked) > 0 {
		g.IssuedP50, g.AckedP50, g.AckedP99, g.AckedMax = pct(issued, 50), pct(acked, 50), pct(acked, 99), acked[len(acked)-1]
	}
	if len(sent) > 0 {
		g.SentP50, g.SentP99, g.AckedMinusS = pct(sent, 50), pct(sent, 99), pct(after, 99)
	}
	return g
}

// dumpTimes appends each command's times to the CSV file
// FLEETSIM_DUMP names, if it does: setup, promote, replica, tenant, then
// journaling began, sent and acked in seconds from the promote call.
func dumpTimes(setup string, promote int, holder map[string]int, times []cmdTimes) {
	name := os.Getenv("FLEETSIM_DUMP")
	if name == "" {
		return
	}
	f, err := os.OpenFile(name, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim:", err)
		return
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	for _, c := range times {
		fmt.Fprintf(w, "%s,%d,%c,%s,%.6f,%.6f,%.6f\n", setup, promote, 'A'+holder[c.tenant], c.tenant, c.issued, c.sent, c.acked)
	}
	w.Flush()
}

func maxAcked(cs []cmdTimes) float64 {
	m := 0.0
	for _, c := range cs {
		m = max(m, c.acked)
	}
	return m
}

func median(xs []float64) float64 {
	s := append([]float64{}, xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// waitFor polls cond every 200 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out: " + state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// raiseFDLimit raises this process's open-file limit (and so its
// children's) to the hard limit: fleetsim holds two descriptors an agent.
func raiseFDLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// printReplicas prints the replicas mode's table and its verdict.
func printReplicas(res replicasResult) {
	fmt.Printf("N=%d agents, %d promotes per setup; each figure is the median over the promotes of that promote's own\n\n", res.N, res.Promotes)
	fmt.Println("| setup | agents | sent p50 / p99 | acked p50 / p99 | acked p99 of each promote | all acked | all stored |")
	fmt.Println("|---|---|---|---|---|---|---|")
	ms := func(s float64) string { return fmt.Sprintf("%.0f ms", s*1000) }
	for _, s := range res.Setups {
		for j, g := range s.Groups {
			name := s.Setup.Name
			if len(s.Groups) > 1 {
				name += ": agents " + g.Label
			}
			allAcked, allStored := fmt.Sprintf("%.2f s", s.AllAcked), fmt.Sprintf("%.2f s", s.AllStored)
			if j != len(s.Groups)-1 {
				allAcked, allStored = "", ""
			}
			var each []string
			for _, x := range g.AckedP99Each {
				each = append(each, fmt.Sprintf("%.0f", x*1000))
			}
			fmt.Printf("| %s | %d | %s / %s | %s / %s | %s ms | %s | %s |\n", name, g.Agents,
				ms(g.SentP50), ms(g.SentP99), ms(g.AckedP50), ms(g.AckedP99), strings.Join(each, ", "), allAcked, allStored)
		}
	}
	fmt.Println()
	fmt.Println("CPU seconds from the promote call to COMPLETED (mean of the promotes; 2 cores give at most 2 s a second):")
	fmt.Println()
	fmt.Println("| setup | replicas | PostgreSQL | fleetsim (agents) | all | promote → COMPLETED | cores busy | PostgreSQL deadlocks | no SENT / no ACKED event |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, s := range res.Setups {
		k := s.Setup.Replicas
		var reps []string
		sum := 0.0
		for i, c := range s.CPU {
			sum += c
			if i < k {
				reps = append(reps, fmt.Sprintf("%c %.2f s", 'A'+i, c))
			}
		}
		pgCPU := "-"
		if s.Setup.Postgres {
			pgCPU = fmt.Sprintf("%.2f s", s.CPU[k])
		}
		unsent, unacked := 0, 0
		for _, g := range s.Groups[:max(len(s.Groups)-1, 1)] { // the last of several sums others
			unsent += g.Unsent
			unacked += g.Unacked
		}
		deadlocks := "-"
		if s.Setup.Postgres {
			deadlocks = strconv.Itoa(s.Deadlocks)
		}
		fmt.Printf("| %s | %s | %s | %.2f s | %.2f s | %.2f s | %.2f | %s | %d / %d |\n", s.Setup.Name, strings.Join(reps, ", "), pgCPU, s.CPU[len(s.CPU)-1], sum, s.Wall, sum/s.Wall,
			deadlocks, unsent, unacked)
	}
	for _, s := range res.Setups {
		if s.Statements == nil {
			continue
		}
		if s.Setup.Name == res.Setups[1].Setup.Name {
			fmt.Println("\nPostgreSQL statements from the promote call to COMPLETED (mean of the promotes; logging them all slows PostgreSQL, so the times above are not comparable):")
		}
		var kinds []string
		for k := range s.Statements {
			if k != "all" {
				kinds = append(kinds, k)
			}
		}
		sort.Slice(kinds, func(i, j int) bool { return s.Statements[kinds[i]] > s.Statements[kinds[j]] })
		var parts []string
		for _, k := range kinds {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, s.Statements[k]))
		}
		fmt.Printf("- %s: %.0f (%s)\n", s.Setup.Name, s.Statements["all"], strings.Join(parts, ", "))
	}
	verdict := "met"
	if res.DeltaP99 > 0.1 {
		verdict = "missed"
	}
	fmt.Printf("\nacked p99 (median of the promotes), agents off the promote's replica minus one replica on SQLite: %+.0f ms (target ≤ +100 ms: %s)\n", res.DeltaP99*1000, verdict)
}
