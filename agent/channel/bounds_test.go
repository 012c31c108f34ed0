package channel

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/credentials/insecure"

	"github.com/molecule-ai/tenant-agent/agent/journal"
	"github.com/molecule-ai/tenant-agent/agent/runner"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// inventory is a host with n runtimes of per containers each.
func inventory(n, per int) Inventory {
	return func(context.Context) ([]*tenantagentv1.RuntimeStatus, error) {
		var out []*tenantagentv1.RuntimeStatus
		for i := range n {
			r := &tenantagentv1.RuntimeStatus{Runtime: fmt.Sprintf("rt%03d", i), ImageRepository: strings.Repeat("r", 2000)}
			for j := range per {
				r.Containers = append(r.Containers, &tenantagentv1.ContainerStatus{Name: fmt.Sprintf("ws-%d-%d", i, j), ImageRef: strings.Repeat("i", 2000)})
			}
			out = append(out, r)
		}
		return out, nil
	}
}

// Hello and health reports stay inside pkg/limits; dropping is logged
// once, not on every report.
func TestReportsBounded(t *testing.T) {
	j, err := journal.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	logs := &testlog.Buffer{}
	cfg := Config{Addr: "x:1", Creds: insecure.NewCredentials(), Inventory: inventory(100, 30), Runner: runner.New(runner.Config{Journal: j}),
		Hostname: strings.Repeat("h", 1000), Version: strings.Repeat("v", 1000), Logger: logs.Logger(t, "agent")}
	if err := cfg.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		h := helloMessage(context.Background(), cfg).GetHello()
		containers := 0
		for _, r := range h.GetRuntimes() {
			containers += len(r.GetContainers())
			if len(r.GetImageRepository()) > limits.ImageRef {
				t.Fatalf("image repository of %d bytes", len(r.GetImageRepository()))
			}
			for _, c := range r.GetContainers() {
				if len(c.GetImageRef()) > limits.ImageRef {
					t.Fatalf("image ref of %d bytes", len(c.GetImageRef()))
				}
			}
		}
		if len(h.GetRuntimes()) != limits.Runtimes || containers != limits.Containers {
			t.Errorf("Hello: %d runtimes, %d containers; want %d and %d", len(h.GetRuntimes()), containers, limits.Runtimes, limits.Containers)
		}
		if len(h.GetHostname()) > limits.Hostname || len(h.GetAgentVersion()) > limits.Version {
			t.Errorf("Hello: hostname of %d bytes, version of %d", len(h.GetHostname()), len(h.GetAgentVersion()))
		}
	}
	if n := strings.Count(logs.String(), "report too large"); n != 1 {
		t.Errorf("logged %d times over three reports, want once:\n%s", n, logs.String())
	}
}

func TestHeldCommandsBounded(t *testing.T) {
	ids := func(n int) []string { return make([]string, n) }
	tr := &trimmer{}
	for _, c := range []struct{ running, results, wantRunning, wantResults int }{
		{10, 10, 10, 10},
		{1500, 10, limits.HeldCommands, 0},
		{400, 900, 400, limits.HeldCommands - 400},
	} {
		running, results := tr.held(ids(c.running), ids(c.results))
		if len(running) != c.wantRunning || len(results) != c.wantResults {
			t.Errorf("held(%d, %d) = %d, %d; want %d, %d", c.running, c.results, len(running), len(results), c.wantRunning, c.wantResults)
		}
	}
}
