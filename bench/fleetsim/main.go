// Command fleetsim measures the control plane under a fleet: N agents,
// each with its own mTLS connection and identity, running the real agent
// channel and runner with an executor that answers at once. It reports
// connect time, control plane memory per agent, promote fan-out (to
// delivered and to stored) beside a bare gRPC broadcast over the same kind
// of streams, and a restart's reconnect storm. With -replicas K it
// instead compares a promote's acks on one replica (SQLite, then
// PostgreSQL) with K replicas on one PostgreSQL database (replicas.go).
// make bench runs both.
//
// For a diagnosis: FLEETSIM_HEAP=file saves the control plane's heap
// profile (and goroutines) once the fleet is connected,
// FLEETSIM_BARE_HEAP=file the bare server's, FLEETSIM_PROFILE=file a CPU
// profile of the promote, FLEETSIM_PROMOTE_HEAP=prefix heap profiles
// before and after it (compare alloc_space with pprof -base),
// FLEETSIM_MEM_PROFILE_RATE the control plane's heap sampling rate, and
// FLEETSIM_HOLD=seconds keeps the fleet connected that long, printing
// the control plane's RSS.
package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/molecule-ai/tenant-agent/agent/channel"
	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/executor"
	"github.com/molecule-ai/tenant-agent/agent/journal"
	"github.com/molecule-ai/tenant-agent/agent/runner"
	"github.com/molecule-ai/tenant-agent/certs/devpki"
	"github.com/molecule-ai/tenant-agent/certs/pki"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

const (
	repo     = "registry.example/molecule-ai/workspace-template-codex"
	digestV1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	digestV2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

type result struct {
	N                  int     `json:"n"`
	ConnectSeconds     float64 `json:"connect_seconds"`
	RSSBeforeBytes     int64   `json:"rss_before_bytes"`
	RSSAfterBytes      int64   `json:"rss_after_bytes"`
	RSSPerAgentBytes   int64   `json:"rss_per_agent_bytes"`
	HeapPerAgentBytes  int64   `json:"heap_per_agent_bytes"`
	StackPerAgentBytes int64   `json:"stack_per_agent_bytes"`
	// LiveHeapPerAgentBytes and LiveStackPerAgentBytes are measured
	// after a collection (forced through pprof), before and after the
	// fleet connects, as the bare server's are.
	LiveHeapPerAgentBytes  int64 `json:"live_heap_per_agent_bytes"`
	LiveStackPerAgentBytes int64 `json:"live_stack_per_agent_bytes"`
	// IdleCPUCores is the control plane's CPU, in cores, and
	// IdleAllocPerAgentSecond what it allocates a second an agent, over
	// ten seconds of a connected fleet that only sends heartbeats.
	IdleCPUCores            float64 `json:"idle_cpu_cores"`
	IdleAllocPerAgentSecond int64   `json:"idle_alloc_per_agent_second_bytes"`
	BareHeapPerStream       int64   `json:"bare_heap_per_stream_bytes"`
	BareStackPerStream      int64   `json:"bare_stack_per_stream_bytes"`
	BareRSSPerStream        int64   `json:"bare_rss_per_stream_bytes"`
	AckedP50                float64 `json:"acked_p50_seconds"`
	AckedP99                float64 `json:"acked_p99_seconds"`
	AckedAll                float64 `json:"acked_all_seconds"`
	StoredAll               float64 `json:"stored_all_seconds"`
	BareP50                 float64 `json:"bare_broadcast_p50_seconds"`
	BareP99                 float64 `json:"bare_broadcast_p99_seconds"`
	BareAll                 float64 `json:"bare_broadcast_all_seconds"`
	RatioToBare             float64 `json:"acked_all_ratio_to_bare"`
	// CPU of the promote, from the processes' own counters: the control
	// plane's from the promote call to COMPLETED (raw, and less its idle
	// rate over that time), per agent; the bare server's for its one
	// message to each stream, per message; the simulated agents'.
	CPPromoteCPURaw      float64 `json:"cp_promote_cpu_raw_seconds"`
	CPPromoteCPU         float64 `json:"cp_promote_cpu_seconds"`
	CPPromoteCPUPerAgent float64 `json:"cp_promote_cpu_per_agent_seconds"`
	BareCPUPerMessage    float64 `json:"bare_cpu_per_message_seconds"`
	CPURatioToBare       float64 `json:"cpu_ratio_to_bare"`
	// BareCPUPerExchange is the bare server's CPU for one command's four
	// messages (command, ack, result, confirmation) with a stream: the
	// floor of a command that does nothing but trade them.
	BareCPUPerExchange     float64 `json:"bare_cpu_per_exchange_seconds"`
	CPURatioToBareExchange float64 `json:"cpu_ratio_to_bare_exchange"`
	AgentsPromoteCPU       float64 `json:"agents_promote_cpu_seconds"`
	ReconnectSeconds       float64 `json:"reconnect_storm_seconds"`
	PeakReconnectPerSec    float64 `json:"peak_reconnects_per_second"`
	Kill                   storm   `json:"kill_storm"`
	Term                   storm   `json:"term_storm"`
	// NoAckedEvent counts commands whose record has no ACKED event; their
	// acked time is their result's.
	NoAckedEvent int `json:"no_acked_event"`
}

func main() {
	n := flag.Int("n", 1000, "simulated agents")
	cpBin := flag.String("controlplane", "bin/controlplane", "controlplane binary")
	work := flag.String("workdir", "", "scratch folder (default: a new one under /dev/shm or the temp dir)")
	jsonOut := flag.Bool("json", false, "print the result as JSON")
	replicas := flag.Int("replicas", 0, "instead: compare one replica on SQLite, one on PostgreSQL and this many on one PostgreSQL database (internal/pgserver), promoting through the first")
	promotes := flag.Int("promotes", 3, "with -replicas: promotes per setup")
	pgStatements := flag.Bool("pg-statements", false, "with -replicas: have PostgreSQL log every statement and count them per promote (slows PostgreSQL; a diagnosis, not a measurement)")
	flag.IntVar(&containersPerAgent, "containers", 1, "containers each simulated agent reports in its heartbeats (one runtime); a real host's report is larger than the default's")
	skipFlag := flag.String("skip", "", "phases to leave out, comma-separated: promote, kill, term (the two restart storms), bare (for iterating; make bench runs all)")
	bareServeMode := flag.Bool("bare-serve", false, "internal: be the bare broadcast server of the parent fleetsim (certificates in -workdir)")
	flag.Parse()
	for _, p := range strings.Split(*skipFlag, ",") {
		skip[strings.TrimSpace(p)] = true
	}
	raiseFileLimit(*n)
	if *bareServeMode {
		if rate, err := strconv.Atoi(os.Getenv("FLEETSIM_MEM_PROFILE_RATE")); err == nil {
			runtime.MemProfileRate = rate // as the control plane's --mem-profile-rate
		}
		if err := bareServe(*n, *work); err != nil {
			fmt.Fprintln(os.Stderr, "fleetsim -bare-serve:", err)
			os.Exit(1)
		}
		return
	}
	if *replicas > 0 {
		res, err := runReplicas(*n, *replicas, *promotes, *pgStatements, *cpBin, *work)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fleetsim:", err)
			os.Exit(1)
		}
		if *jsonOut {
			json.NewEncoder(os.Stdout).Encode(res)
			return
		}
		printReplicas(res)
		return
	}
	res, err := run(*n, *cpBin, *work)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim:", err)
		os.Exit(1)
	}
	if *jsonOut {
		json.NewEncoder(os.Stdout).Encode(res)
		return
	}
	fmt.Printf("| %d | %.2f s | %s (bare %s) | %.0f ms / %.0f ms | %.2f s | %.2f s | %.0f ms / %.0f ms / %.2f s | %.2fx | %.0f µs / %.1f µs (%.1fx) / %.1f µs (%.1fx) | %.2f s (peak %.0f/s) | %.2f s (peak %.0f/s) |\n",
		res.N, res.ConnectSeconds, kib(res.RSSPerAgentBytes), kib(res.BareRSSPerStream), res.AckedP50*1000, res.AckedP99*1000, res.AckedAll, res.StoredAll,
		res.BareP50*1000, res.BareP99*1000, res.BareAll, res.RatioToBare, res.CPPromoteCPUPerAgent*1e6, res.BareCPUPerMessage*1e6, res.CPURatioToBare,
		res.BareCPUPerExchange*1e6, res.CPURatioToBareExchange,
		res.Kill.Seconds, res.Kill.PeakPerSec, res.Term.Seconds, res.Term.PeakPerSec)
}

// skip holds the phases -skip leaves out.
var skip = map[string]bool{}

// containersPerAgent is -containers.
var containersPerAgent = 1

func kib(b int64) string { return fmt.Sprintf("%.1f KiB", float64(b)/1024) }

func scratch(work string) (string, error) {
	if work != "" {
		return work, os.MkdirAll(work, 0o700)
	}
	base := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		base = "/dev/shm" // agent journals on tmpfs: the bench measures the control plane, not this disk
	}
	return os.MkdirTemp(base, "fleetsim")
}

func run(n int, cpBin, work string) (result, error) {
	res := result{N: n}
	dir, err := scratch(work)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	if f := os.Getenv("FLEETSIM_CP_LOG"); f != "" {
		defer copyFile(filepath.Join(dir, "controlplane.log"), f)
	}
	certDir := filepath.Join(dir, "certs")
	certs, err := issueCerts(certDir, n)
	if err != nil {
		return res, err
	}

	addrs := [3]string{freeAddr(), freeAddr(), freeAddr()}
	cp, err := startCP(cpBin, dir, certDir, addrs)
	if err != nil {
		return res, err
	}
	defer func() { cp.Process.Kill(); cp.Wait() }()
	metricsURL := "http://" + addrs[2] + "/metrics"
	res.RSSBeforeBytes = rss(cp.Process.Pid)
	heapBefore := metric(metricsURL, "go_memstats_heap_inuse_bytes")
	stackBefore := metric(metricsURL, "go_memstats_stack_inuse_bytes")
	collect(addrs[2])
	liveHeapBefore := metric(metricsURL, "go_memstats_heap_inuse_bytes")
	liveStackBefore := metric(metricsURL, "go_memstats_stack_inuse_bytes")

	// The fleet: real channels and runners, an executor that answers at once.
	fmt.Fprintf(os.Stderr, "connecting %d agents (load %s)\n", n, loadavg())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	stopFleet, err := startFleet(ctx, filepath.Join(dir, "agents"), certs, addrs[0])
	if err != nil {
		return res, err
	}
	if err := waitMetric(metricsURL, "tenantagent_controlplane_connected_agents", float64(n), 5*time.Minute, nil); err != nil {
		return res, err
	}
	res.ConnectSeconds = time.Since(start).Seconds()
	// Memory is read once every agent has sent a heartbeat (every 15 s)
	// besides its Hello: a fleet's steady state, where the first seconds
	// after connecting would show less (a stream's handler grows its
	// stack handling one).
	time.Sleep(7 * time.Second)
	// The control plane's CPU rate when idle but for heartbeats (also
	// taken off the promote's), over ten seconds: two thirds of a
	// heartbeat interval.
	// Reading the allocation counter scrapes /metrics, which allocates
	// too (about half a KiB an agent): two reads back to back measure
	// one scrape, taken off.
	scrape0 := metric(metricsURL, "go_memstats_alloc_bytes_total")
	idleCPU0, idleAlloc0, idleAt := procCPU(cp.Process.Pid), metric(metricsURL, "go_memstats_alloc_bytes_total"), time.Now()
	time.Sleep(10 * time.Second)
	idleRate := float64(procCPU(cp.Process.Pid)-idleCPU0) / float64(time.Since(idleAt))
	res.IdleCPUCores = idleRate
	idleAlloc := metric(metricsURL, "go_memstats_alloc_bytes_total") - idleAlloc0 - (idleAlloc0 - scrape0)
	res.IdleAllocPerAgentSecond = int64(idleAlloc / time.Since(idleAt).Seconds() / float64(n))
	fmt.Fprintf(os.Stderr, "  idle but for heartbeats: control plane %.1f%% of a core, %d B allocated a second an agent\n", 100*res.IdleCPUCores, res.IdleAllocPerAgentSecond)
	res.RSSAfterBytes = rss(cp.Process.Pid)
	res.RSSPerAgentBytes = (res.RSSAfterBytes - res.RSSBeforeBytes) / int64(n)
	res.HeapPerAgentBytes = int64((metric(metricsURL, "go_memstats_heap_inuse_bytes") - heapBefore) / float64(n))
	res.StackPerAgentBytes = int64((metric(metricsURL, "go_memstats_stack_inuse_bytes") - stackBefore) / float64(n))
	// The same after a collection, as the bare server is measured: what
	// is live, and the stacks as a collection shrinks them.
	collect(addrs[2])
	res.LiveHeapPerAgentBytes = int64((metric(metricsURL, "go_memstats_heap_inuse_bytes") - liveHeapBefore) / float64(n))
	res.LiveStackPerAgentBytes = int64((metric(metricsURL, "go_memstats_stack_inuse_bytes") - liveStackBefore) / float64(n))
	// FLEETSIM_HOLD=seconds keeps the connected fleet that long before
	// the promote, printing the control plane's RSS an agent every 30 s:
	// how it grows between collections on a process that runs for a while.
	if hold, _ := strconv.Atoi(os.Getenv("FLEETSIM_HOLD")); hold > 0 {
		for until := time.Now().Add(time.Duration(hold) * time.Second); time.Now().Before(until); {
			time.Sleep(min(30*time.Second, time.Until(until)))
			fmt.Fprintf(os.Stderr, "  held %s: RSS %s an agent, heap in use %s\n", time.Since(start).Round(time.Second),
				kib((rss(cp.Process.Pid)-res.RSSBeforeBytes)/int64(n)), kib(int64((metric(metricsURL, "go_memstats_heap_inuse_bytes")-heapBefore)/float64(n))))
		}
	}
	if f := os.Getenv("FLEETSIM_HEAP"); f != "" {
		profile("http://"+addrs[2]+"/debug/pprof/heap?gc=1", f)
		profile("http://"+addrs[2]+"/debug/pprof/goroutine?debug=1", f+".goroutines")
	}

	// Promote to the whole fleet at once.
	if !skip["promote"] {
		if err := promote(ctx, &res, n, cp, certDir, addrs, idleRate); err != nil {
			return res, err
		}
	}

	// A control plane crash and restart: every agent redials with backoff
	// and full jitter.
	if !skip["kill"] {
		fmt.Fprintln(os.Stderr, "restart storm (kill -9)")
		if cp, res.Kill, err = restartStorm(cp, syscall.SIGKILL, n, cpBin, dir, certDir, addrs); err != nil {
			return res, err
		}
		res.ReconnectSeconds, res.PeakReconnectPerSec = res.Kill.Seconds, res.Kill.PeakPerSec
	}
	// A graceful stop: the control plane tells every agent to come back
	// after a random delay up to its --reconnect-stagger.
	if !skip["term"] {
		fmt.Fprintln(os.Stderr, "restart storm (SIGTERM)")
		if cp, res.Term, err = restartStorm(cp, syscall.SIGTERM, n, cpBin, dir, certDir, addrs); err != nil {
			return res, err
		}
	}
	if skip["bare"] {
		return res, nil
	}
	// The floor: a bare broadcast over N mTLS streams of the same kind,
	// once the fleet has stopped (its sockets and these would not fit
	// under the open-file limit at 10,000).
	cancel()
	stopFleet()
	fmt.Fprintln(os.Stderr, "bare broadcast")
	bare, err := bareBroadcast(n, certs.tls, certs.roots, certDir)
	if err != nil {
		return res, err
	}
	bl := bare.latencies
	res.BareP50, res.BareP99, res.BareAll = pct(bl, 50), pct(bl, 99), bl[len(bl)-1]
	res.BareCPUPerMessage = bare.cpu.Seconds() / float64(n)
	res.BareCPUPerExchange = bare.exchangeCPU.Seconds() / float64(n)
	if !skip["promote"] {
		res.RatioToBare = res.AckedAll / res.BareAll
		res.CPURatioToBare = res.CPPromoteCPUPerAgent / res.BareCPUPerMessage
		res.CPURatioToBareExchange = res.CPPromoteCPUPerAgent / res.BareCPUPerExchange
	}
	res.BareHeapPerStream, res.BareStackPerStream, res.BareRSSPerStream = bare.heapPerStream, bare.stackPerStream, bare.rssPerStream
	fmt.Fprintf(os.Stderr, "  memory per agent: control plane heap %s + stack %s (RSS %s), after a collection %s + %s; bare stream RSS %s, after a collection heap %s + stack %s\n",
		kib(res.HeapPerAgentBytes), kib(res.StackPerAgentBytes), kib(res.RSSPerAgentBytes), kib(res.LiveHeapPerAgentBytes), kib(res.LiveStackPerAgentBytes),
		kib(res.BareRSSPerStream), kib(res.BareHeapPerStream), kib(res.BareStackPerStream))
	fmt.Fprintf(os.Stderr, "  CPU: control plane %.0f µs a command (%.2f s a promote, idle rate taken off: %.2f s), bare server %.1f µs a message: %.1fx, %.1f µs a command's four messages: %.1fx; agents (fleetsim) %.2f s; load %s\n",
		res.CPPromoteCPUPerAgent*1e6, res.CPPromoteCPURaw, res.CPPromoteCPU, res.BareCPUPerMessage*1e6, res.CPURatioToBare,
		res.BareCPUPerExchange*1e6, res.CPURatioToBareExchange, res.AgentsPromoteCPU, loadavg())

	return res, nil
}

// promote promotes to the whole fleet at once and records in res how
// long until acked and stored, and the control plane's CPU for it (less
// idleRate, its CPU rate when idle).
func promote(ctx context.Context, res *result, n int, cp *exec.Cmd, certDir string, addrs [3]string, idleRate float64) error {
	fmt.Fprintf(os.Stderr, "promoting (load %s)\n", loadavg())
	admin, err := adminClient(certDir, addrs[1])
	if err != nil {
		return err
	}
	admin.ListRuntimePins(ctx, &controlplanev1.ListRuntimePinsRequest{}) // the connection is up before the clock starts
	var rolloutID string
	if f := os.Getenv("FLEETSIM_PROFILE"); f != "" {
		var profiled sync.WaitGroup
		profiled.Go(func() { profile("http://"+addrs[2]+"/debug/pprof/profile?seconds=3", f) })
		defer profiled.Wait() // the control plane lives until the profile is saved
	}
	// FLEETSIM_PROMOTE_HEAP=prefix saves heap profiles (after a
	// collection) before the promote and once it completed: their
	// difference in alloc_space is what the promote allocated.
	heapPrefix := os.Getenv("FLEETSIM_PROMOTE_HEAP")
	if heapPrefix != "" {
		profile("http://"+addrs[2]+"/debug/pprof/heap?gc=1", heapPrefix+".before")
	}
	cpCPU0, agentsCPU0 := procCPU(cp.Process.Pid), selfCPU()
	t0 := time.Now()
	stream, err := admin.PromoteRuntimeImage(ctx, &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2,
		Options: &controlplanev1.RolloutOptions{MaxParallelTenants: uint32(n)}})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("promote stream: %w", err)
		}
		rolloutID = resp.GetEvent().GetRolloutId()
		if k := resp.GetEvent().GetKind(); k == controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED || k == controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED {
			res.StoredAll = time.Since(t0).Seconds()
			raw := procCPU(cp.Process.Pid) - cpCPU0
			res.CPPromoteCPURaw = raw.Seconds()
			res.CPPromoteCPU = max(raw.Seconds()-idleRate*res.StoredAll, 0)
			res.CPPromoteCPUPerAgent = res.CPPromoteCPU / float64(n)
			res.AgentsPromoteCPU = (selfCPU() - agentsCPU0).Seconds()
			if heapPrefix != "" {
				profile("http://"+addrs[2]+"/debug/pprof/heap?gc=1", heapPrefix+".after")
			}
			if c := resp.GetEvent().GetCounts(); int(c.GetSucceeded()) != n {
				return fmt.Errorf("rollout: %v", resp.GetEvent())
			}
			break
		}
	}
	lat, unacked, err := ackLatencies(ctx, admin, rolloutID, t0)
	if err != nil {
		return err
	}
	if res.NoAckedEvent = unacked; unacked > 0 {
		fmt.Fprintf(os.Stderr, "%d of %d commands have no ACKED event (their result was recorded first); timed by the result\n", unacked, n)
	}
	res.AckedP50, res.AckedP99, res.AckedAll = pct(lat, 50), pct(lat, 99), lat[len(lat)-1]
	return nil
}

// storm is one restart of the control plane under a connected fleet.
type storm struct {
	// Seconds runs from the restarted control plane being healthy until
	// all agents are connected again; Down from the signal until healthy.
	Seconds    float64 `json:"seconds"`
	Down       float64 `json:"down_seconds"`
	PeakPerSec float64 `json:"peak_reconnects_per_second"`
	// From the restarted control plane's /metrics (-1 where it has no
	// such series): TLS handshakes, full and resumed, and connections
	// told to come back later because handshakes were at their bound.
	FullHandshakes    float64 `json:"full_handshakes"`
	ResumedHandshakes float64 `json:"resumed_handshakes"`
	HandshakesShed    float64 `json:"handshakes_shed"`
	// CPUSeconds is the restarted control plane's own CPU time until all
	// were back (/proc/<pid>/stat).
	CPUSeconds float64 `json:"cp_cpu_seconds"`
}

// restartStorm stops cp with sig, starts it again on the same store and
// addresses, and times the fleet of n coming back.
func restartStorm(cp *exec.Cmd, sig syscall.Signal, n int, cpBin, dir, certDir string, addrs [3]string) (*exec.Cmd, storm, error) {
	var st storm
	t0 := time.Now()
	cp.Process.Signal(sig)
	cp.Wait()
	cp, err := startCP(cpBin, dir, certDir, addrs)
	if err != nil {
		return nil, st, err
	}
	t1 := time.Now()
	st.Down = t1.Sub(t0).Seconds()
	metricsURL := "http://" + addrs[2] + "/metrics"
	if f := os.Getenv("FLEETSIM_STORM_PROFILE"); f != "" {
		go profile("http://"+addrs[2]+"/debug/pprof/profile?seconds=10", f+"."+strconv.Itoa(int(sig)))
	}
	last, lastAt := 0.0, t1
	if err := waitMetric(metricsURL, "tenantagent_controlplane_connected_agents", float64(n), 5*time.Minute, func(v float64) {
		now := time.Now()
		if dt := now.Sub(lastAt).Seconds(); dt >= 0.5 {
			st.PeakPerSec = max(st.PeakPerSec, (v-last)/dt)
			last, lastAt = v, now
		}
	}); err != nil {
		return cp, st, err
	}
	st.Seconds = time.Since(t1).Seconds()
	st.CPUSeconds = procCPU(cp.Process.Pid).Seconds()
	st.FullHandshakes = metric(metricsURL, `tenantagent_controlplane_tls_handshakes_total{resumed="false"}`)
	st.ResumedHandshakes = metric(metricsURL, `tenantagent_controlplane_tls_handshakes_total{resumed="true"}`)
	st.HandshakesShed = metric(metricsURL, `tenantagent_controlplane_agent_admissions_refused_total{reason="handshakes"}`)
	if st.FullHandshakes >= 0 || st.ResumedHandshakes >= 0 {
		// A control plane that counts handshakes: a missing series is none.
		st.FullHandshakes, st.ResumedHandshakes, st.HandshakesShed = max(st.FullHandshakes, 0), max(st.ResumedHandshakes, 0), max(st.HandshakesShed, 0)
	}
	fmt.Fprintf(os.Stderr, "  %s: all %d back %.2f s after the signal: %.2f s after the restart (down %.2f s), peak %.0f/s; handshakes full %v, resumed %v, shed %v; control plane CPU %.2f s; load %s\n",
		sig, n, st.Down+st.Seconds, st.Seconds, st.Down, st.PeakPerSec, st.FullHandshakes, st.ResumedHandshakes, st.HandshakesShed, st.CPUSeconds, loadavg())
	return cp, st, nil
}

// loadavg is /proc/loadavg's first three fields, for the record beside a
// measurement on a shared machine.
func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// raiseFileLimit lifts this process's soft limit on open files to its hard
// limit: every simulated agent holds a socket and the control plane (our
// child, which inherits the limit) one per agent.
func raiseFileLimit(agents int) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	lim.Cur = lim.Max
	need := agents + 1000 // a socket an agent, and room for journals and the rest
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < uint64(need) {
		fmt.Fprintf(os.Stderr, "fleetsim: open files limited to %d; %d agents need about %d\n", lim.Cur, agents, need)
	}
}

// fleetCerts are the simulated agents' certificates, in memory (for the
// bare broadcast) and as files (for the agents, which read them as the
// real agent does, through mtls.Source).
type fleetCerts struct {
	tls   []tls.Certificate
	files []mtls.Files
	roots *x509.CertPool
}

// issueCerts makes a dev PKI in certDir and issues n agent certificates
// in process, for tenants sim-00000 on.
func issueCerts(certDir string, n int) (fleetCerts, error) {
	var fc fleetCerts
	if err := devpki.Run([]string{"--out", certDir}, io.Discard); err != nil {
		return fc, err
	}
	ca, err := pki.LoadCA(filepath.Join(certDir, "ca.pem"), filepath.Join(certDir, "ca-key.pem"))
	if err != nil {
		return fc, err
	}
	fc.roots = x509.NewCertPool()
	fc.roots.AppendCertsFromPEM(ca.CertPEM)
	agentDir := filepath.Join(certDir, "agents")
	if err := os.MkdirAll(agentDir, 0o700); err != nil {
		return fc, err
	}
	fmt.Fprintf(os.Stderr, "issuing %d agent certificates\n", n)
	fc.tls, fc.files = make([]tls.Certificate, n), make([]mtls.Files, n)
	for i := range n {
		issued, err := ca.Issue(pki.Leaf{SPIFFEID: fmt.Sprintf("spiffe://molecule.local/tenant/%s", simTenant(i)), Client: true})
		if err != nil {
			return fc, err
		}
		if fc.tls[i], err = issued.TLSCertificate(); err != nil {
			return fc, err
		}
		certPath, keyPath, err := pki.WriteFiles(agentDir, simTenant(i), issued.CertPEM, issued.KeyPEM, true)
		if err != nil {
			return fc, err
		}
		fc.files[i] = mtls.Files{Cert: certPath, Key: keyPath, CA: filepath.Join(certDir, "ca.pem")}
	}
	return fc, nil
}

func simTenant(i int) string { return fmt.Sprintf("sim-%05d", i) }

// startFleet starts one simulated agent per certificate, journals under
// dir, each dialing addr (one address or a comma-separated list), until
// ctx ends. Each has the agent's own credentials (mtls.ClientCredentials:
// its files re-read at each handshake, its session cache). wait returns
// when every agent has stopped.
func startFleet(ctx context.Context, dir string, certs fleetCerts, addr string) (wait func(), err error) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var wg sync.WaitGroup
	for i, files := range certs.files {
		j, err := journal.Open(filepath.Join(dir, strconv.Itoa(i)))
		if err != nil {
			return wg.Wait, err
		}
		src, err := mtls.NewSource(files, quiet)
		if err != nil {
			return wg.Wait, err
		}
		exec := &instantExecutor{}
		r := runner.New(runner.Config{Journal: j, Executor: exec, Logger: quiet})
		r.Start(ctx)
		wg.Add(1)
		go func() {
			defer wg.Done()
			channel.Run(ctx, channel.Config{Addr: addr, Creds: mtls.ClientCredentials(src, "localhost"), Tenant: simTenant(i), Hostname: "sim", Version: "sim",
				Inventory: exec.inventory, Runner: r, HeartbeatInterval: 15 * time.Second, Logger: quiet})
			r.Wait()
		}()
	}
	return wg.Wait, nil
}

// instantExecutor answers every command at once and reports its runtime
// on whatever digest it was last refreshed to.
type instantExecutor struct {
	digest atomic.Value
}

func (x *instantExecutor) Refresh(_ context.Context, cmd *tenantagentv1.RefreshRuntimeImage, _ executor.Hooks) (*tenantagentv1.CommandResult, error) {
	x.digest.Store(cmd.GetImageDigest())
	return &tenantagentv1.CommandResult{Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED, ImageRef: cmd.GetImageRepository() + "@" + cmd.GetImageDigest()}, nil
}

func (x *instantExecutor) Prefetch(context.Context, *tenantagentv1.PrefetchRuntimeImage, executor.Hooks) *tenantagentv1.CommandResult {
	return &tenantagentv1.CommandResult{Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED}
}

func (x *instantExecutor) Recover(context.Context, string, string, []docker.RecreateState) *tenantagentv1.CommandResult {
	return &tenantagentv1.CommandResult{Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED}
}

func (x *instantExecutor) inventory(context.Context) ([]*tenantagentv1.RuntimeStatus, error) {
	d, _ := x.digest.Load().(string)
	if d == "" {
		d = digestV1
	}
	containers := make([]*tenantagentv1.ContainerStatus, containersPerAgent)
	for i := range containers {
		containers[i] = &tenantagentv1.ContainerStatus{Name: fmt.Sprintf("ws-%d", i+1), Id: fmt.Sprintf("%064x", i+1), ImageRef: repo + "@" + d, ImageDigest: d,
			State: tenantagentv1.ContainerState_CONTAINER_STATE_RUNNING, Health: tenantagentv1.ContainerHealth_CONTAINER_HEALTH_HEALTHY, StartedAt: simStarted}
	}
	return []*tenantagentv1.RuntimeStatus{{Runtime: "codex", ImageRepository: repo, Containers: containers}}, nil
}

// simStarted is when every simulated container started.
var simStarted = timestamppb.New(time.Unix(1_700_000_000, 0))

// ackLatencies reads, from the control plane's own record, when each of a
// rollout's commands was acknowledged (journaled by its agent), relative
// to t0, sorted, and how many had no ACKED event (commandTimes).
func ackLatencies(ctx context.Context, admin controlplanev1.AdminServiceClient, rolloutID string, t0 time.Time) ([]float64, int, error) {
	times, err := commandTimes(ctx, admin, rolloutID, t0)
	if err != nil {
		return nil, 0, err
	}
	out := make([]float64, len(times))
	unacked := 0
	for i, c := range times {
		out[i] = c.acked
		if c.unacked {
			unacked++
		}
	}
	sort.Float64s(out)
	return out, unacked, nil
}

func pct(sorted []float64, p int) float64 {
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startCP(bin, dir, certDir string, addrs [3]string) (*exec.Cmd, error) {
	return startCPOn(bin, filepath.Join(dir, "controlplane.log"), certDir, addrs, filepath.Join(dir, "cp.db"))
}

// startCPOn starts a control plane on store (a SQLite file or a
// postgres:// URL), logging to logPath, and waits until it is healthy.
func startCPOn(bin, logPath, certDir string, addrs [3]string, store string) (*exec.Cmd, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child holds its own copy
	args := []string{"--agent-addr", addrs[0], "--admin-addr", addrs[1], "--http-addr", addrs[2],
		"--cert", filepath.Join(certDir, "controlplane.pem"), "--key", filepath.Join(certDir, "controlplane-key.pem"), "--ca", filepath.Join(certDir, "ca.pem"),
		"--store", store, "--log-level", cmp.Or(os.Getenv("FLEETSIM_CP_LOG_LEVEL"), "warn"), "--pprof"}
	if rate := os.Getenv("FLEETSIM_MEM_PROFILE_RATE"); rate != "" {
		args = append(args, "--mem-profile-rate", rate) // finer heap profiles (FLEETSIM_HEAP)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The control plane dies with fleetsim, whatever ends it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + addrs[2] + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return cmd, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	log, _ := os.ReadFile(logPath)
	return nil, fmt.Errorf("control plane did not start:\n%s", log)
}

func rss(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func metric(url, name string) float64 {
	resp, err := http.Get(url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	return -1
}

func waitMetric(url, name string, want float64, timeout time.Duration, each func(float64)) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		v := metric(url, name)
		if each != nil {
			each(v)
		}
		if v >= want {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not reach %v in %s (last %v)", name, want, timeout, metric(url, name))
}

func adminClient(certDir, addr string) (controlplanev1.AdminServiceClient, error) {
	src, err := mtls.NewSource(mtls.Files{Cert: filepath.Join(certDir, "operator-dev.pem"), Key: filepath.Join(certDir, "operator-dev-key.pem"), CA: filepath.Join(certDir, "ca.pem")}, nil)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(mtls.ClientCredentials(src, "localhost")))
	if err != nil {
		return nil, err
	}
	return controlplanev1.NewAdminServiceClient(conn), nil
}

// profile saves a CPU profile of the control plane (FLEETSIM_PROFILE=file).
func profile(url, file string) {
	resp, err := http.Get(url)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		return
	}
	defer f.Close()
	io.Copy(f, resp.Body)
}

// copyFile copies from to to, for keeping the control plane's log
// (FLEETSIM_CP_LOG=file) past the scratch folder.
func copyFile(from, to string) {
	b, err := os.ReadFile(from)
	if err == nil {
		err = os.WriteFile(to, b, 0o600)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim: keep the control plane log:", err)
	}
}

// collect has the control plane run garbage collections (pprof's heap
// profile with gc=1), so that what /metrics says next is what is live.
// Three: each shrinks a goroutine's stack by half at most, as a running
// control plane's collections do over time.
func collect(httpAddr string) {
	for range 3 {
		resp, err := http.Get("http://" + httpAddr + "/debug/pprof/heap?gc=1")
		if err != nil {
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
