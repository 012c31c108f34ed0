package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/executor"
	"github.com/molecule-ai/tenant-agent/agent/signature"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

// fakeExecutor finishes every refresh at once with a fixed result.
type fakeExecutor struct{ res *tenantagentv1.CommandResult }

func (f fakeExecutor) Refresh(context.Context, *tenantagentv1.RefreshRuntimeImage, executor.Hooks) (*tenantagentv1.CommandResult, error) {
	return f.res, nil
}
func (f fakeExecutor) Prefetch(context.Context, *tenantagentv1.PrefetchRuntimeImage, executor.Hooks) *tenantagentv1.CommandResult {
	return &tenantagentv1.CommandResult{Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED}
}
func (f fakeExecutor) Recover(context.Context, string, string, []docker.RecreateState) *tenantagentv1.CommandResult {
	return nil
}

// serve runs the handler on loopback, as the agent does, and returns its
// base URL.
func serve(t *testing.T, m *Metrics, ping func(context.Context) error) string {
	t.Helper()
	addr, err := ListenAddr(":0")
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); Serve(ctx, lis, m.Handler(ping), (&testlog.Buffer{}).Logger(t, "agent")) }()
	t.Cleanup(func() { cancel(); <-done })
	return "http://" + lis.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestScrapeAfterCommands(t *testing.T) {
	m := New()
	var now atomic.Int64 // unix seconds
	now.Store(1000)
	m.now = func() time.Time { return time.Unix(now.Load(), 0) }
	url := serve(t, m, func(context.Context) error { return nil })
	if _, body := get(t, url+"/metrics"); !strings.Contains(body, "tenantagent_agent_heartbeat_age_seconds -1\n") || !strings.Contains(body, "tenantagent_agent_controlplane_connected 0\n") {
		t.Errorf("before any stream: want heartbeat age -1 and not connected:\n%s", grepAgent(body))
	}

	x := m.Executor(fakeExecutor{res: &tenantagentv1.CommandResult{Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED,
		PullDuration: durationpb.New(1500 * time.Millisecond), PulledBytes: 3 << 20,
		Containers: []*tenantagentv1.ContainerResult{{Name: "ws-1", Downtime: durationpb.New(400 * time.Millisecond)}}}})
	x.Refresh(context.Background(), &tenantagentv1.RefreshRuntimeImage{}, executor.Hooks{})
	x.Refresh(context.Background(), &tenantagentv1.RefreshRuntimeImage{}, executor.Hooks{})
	x.Prefetch(context.Background(), &tenantagentv1.PrefetchRuntimeImage{}, executor.Hooks{})
	x.Recover(context.Background(), "c", "r", nil) // a crash: not a finished command
	m.SignatureChecked(signature.Verified)
	m.SignatureChecked(signature.Refused)
	m.SignatureChecked(signature.Refused)
	m.Connected(true)
	m.DockerReachable(true)
	m.Heartbeat()
	now.Add(7)

	_, body := get(t, url+"/metrics")
	for _, want := range []string{
		`tenantagent_agent_commands_finished_total{outcome="succeeded"} 2`,
		`tenantagent_agent_commands_finished_total{outcome="failed"} 1`,
		`tenantagent_agent_pull_bytes_total 6.291456e+06`,
		`tenantagent_agent_pull_duration_seconds_sum 3`,
		`tenantagent_agent_pull_duration_seconds_count 2`,
		`tenantagent_agent_recreate_downtime_seconds_sum 0.8`,
		`tenantagent_agent_recreate_downtime_seconds_count 2`,
		`tenantagent_agent_docker_reachable 1`,
		`tenantagent_agent_controlplane_connected 1`,
		`tenantagent_agent_heartbeat_age_seconds 7`,
		`tenantagent_agent_signature_checks_total{result="verified"} 1`,
		`tenantagent_agent_signature_checks_total{result="refused"} 2`,
		`tenantagent_agent_signature_checks_total{result="cached"} 0`,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want+"\n") && !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, grepAgent(body))
		}
	}
	if strings.Contains(body, "ws-1") {
		t.Errorf("/metrics names a container")
	}
}

func TestHealthz(t *testing.T) {
	var dockerErr atomic.Pointer[error]
	url := serve(t, New(), func(context.Context) error {
		if p := dockerErr.Load(); p != nil {
			return *p
		}
		return nil
	})
	if code, body := get(t, url+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("Docker up: %d %q", code, body)
	}
	down := errors.New("Cannot connect to the Docker daemon at unix:///nope.sock")
	dockerErr.Store(&down)
	if code, body := get(t, url+"/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "docker unreachable: Cannot connect") {
		t.Errorf("Docker down: %d %q; want 503 with the reason", code, body)
	}
}

func TestListenAddrDefaultsToLoopback(t *testing.T) {
	for in, want := range map[string]string{":9091": "127.0.0.1:9091", "9091": "127.0.0.1:9091", "0.0.0.0:9091": "0.0.0.0:9091", "10.0.0.5:80": "10.0.0.5:80", "[::1]:9": "[::1]:9"} {
		if got, err := ListenAddr(in); err != nil || got != want {
			t.Errorf("ListenAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"host:", "a:b:c"} {
		if _, err := ListenAddr(bad); err == nil {
			t.Errorf("ListenAddr(%q) accepted", bad)
		}
	}
}

func grepAgent(body string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "tenantagent_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
