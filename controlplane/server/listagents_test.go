package server

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/controlplane/store/sqlite"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// defaultClientRecvLimit is what every gRPC client accepts by default.
const defaultClientRecvLimit = 4 << 20

// newHarnessWithAgents starts a control plane whose SQLite file already
// holds these agent records, as if they had connected before: tests of
// listing a large fleet need its records, not ten thousand connections.
func newHarnessWithAgents(t *testing.T, agents []store.Agent) *harness {
	t.Helper()
	h := &harness{t: t, pki: pkitest.New(t), storePath: filepath.Join(t.TempDir(), "cp.db"), logs: &testlog.Buffer{}}
	st, err := sqlite.Open(context.Background(), h.storePath)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutAgents(context.Background(), agents); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	h.start(nil)
	return h
}

func fleetOf(tenants, perTenant int) []store.Agent {
	var out []store.Agent
	now := time.Now()
	for i := range tenants {
		tenant := fmt.Sprintf("t-%04d", i)
		for j := range perTenant {
			out = append(out, store.Agent{
				Identity: fmt.Sprintf("spiffe://molecule.local/tenant/%s/agent/a-%03d", tenant, j), Tenant: tenant, Name: fmt.Sprintf("a-%03d", j),
				ConnectedAt: now, LastSeen: now, Hostname: "host", AgentVersion: "v1", DockerVersion: "27", DockerReachable: true,
				Runtimes: []*tenantagentv1.RuntimeStatus{{Runtime: "codex", ImageRepository: repo, Containers: []*tenantagentv1.ContainerStatus{
					{Name: "ws-1", Id: "id-1", ImageRef: repo + "@" + digestV1, ImageDigest: digestV1},
				}}},
			})
		}
	}
	return out
}

// biggestAgent fills every field an agent reports to its limit: the most
// one agent's record can hold once the agent service has checked it.
func biggestAgent(a store.Agent) store.Agent {
	a.Hostname = strings.Repeat("h", limits.Hostname)
	a.AgentVersion, a.DockerVersion = strings.Repeat("v", limits.Version), strings.Repeat("d", limits.Version)
	a.Runtimes = nil
	perRuntime := limits.Containers / limits.Runtimes
	for r := range limits.Runtimes {
		rt := &tenantagentv1.RuntimeStatus{Runtime: fmt.Sprintf("%03d", r) + strings.Repeat("r", limits.Name-3), ImageRepository: strings.Repeat("i", limits.ImageRef)}
		n := perRuntime
		if r == 0 {
			n += limits.Containers - perRuntime*limits.Runtimes
		}
		for range n {
			rt.Containers = append(rt.Containers, &tenantagentv1.ContainerStatus{
				Name: strings.Repeat("n", limits.Name), Id: strings.Repeat("0", limits.ID),
				ImageRef: strings.Repeat("i", limits.ImageRef), ImageDigest: strings.Repeat("s", limits.ImageRef),
				State: tenantagentv1.ContainerState_CONTAINER_STATE_RESTARTING, Health: tenantagentv1.ContainerHealth_CONTAINER_HEALTH_UNHEALTHY,
				RestartCount: 1 << 31,
			})
		}
		a.Runtimes = append(a.Runtimes, rt)
	}
	return a
}

// pageThrough lists every agent page by page through a client with the
// default receive limit, checking each page's size and order.
func pageThrough(t *testing.T, admin controlplanev1.AdminServiceClient, req *controlplanev1.ListAgentsRequest) (ids []string, pages int) {
	t.Helper()
	for {
		page, err := admin.ListAgents(ctx(t), req)
		if err != nil {
			t.Fatalf("page %d: %v", pages+1, err)
		}
		pages++
		if size := proto.Size(page); size >= defaultClientRecvLimit {
			t.Fatalf("page %d is %d bytes, over a default client's limit", pages, size)
		}
		if len(page.GetAgents()) == 0 {
			t.Fatalf("page %d is empty", pages)
		}
		for _, a := range page.GetAgents() {
			ids = append(ids, a.GetIdentity())
		}
		if req.PageToken = page.GetNextPageToken(); req.PageToken == "" {
			return ids, pages
		}
	}
}

func wantEachOnceInOrder(t *testing.T, got []string, agents []store.Agent) {
	t.Helper()
	if len(got) != len(agents) {
		t.Fatalf("listed %d agents, want %d", len(got), len(agents))
	}
	seen := map[string]bool{}
	for i, id := range got {
		if seen[id] {
			t.Fatalf("%s listed twice", id)
		}
		seen[id] = true
		if id != agents[i].Identity {
			t.Fatalf("agent %d is %s, want %s (order by tenant, identity)", i, id, agents[i].Identity)
		}
	}
}

func TestListAgentsPagesTenThousandAgents(t *testing.T) {
	agents := fleetOf(100, 100) // in (tenant, identity) order
	h := newHarnessWithAgents(t, agents)
	admin := h.operator() // the default receive limit: 4 MiB

	ids, pages := pageThrough(t, admin, &controlplanev1.ListAgentsRequest{})
	wantEachOnceInOrder(t, ids, agents)
	if pages != 100 {
		t.Errorf("%d pages, want 100 of the default 100 agents", pages)
	}
	ids, pages = pageThrough(t, admin, &controlplanev1.ListAgentsRequest{PageSize: 1000})
	wantEachOnceInOrder(t, ids, agents)
	if pages != 10 {
		t.Errorf("%d pages, want 10 of 1000", pages)
	}
	// A tenant filter pages within the tenant.
	ids, _ = pageThrough(t, admin, &controlplanev1.ListAgentsRequest{Tenant: "t-0042", PageSize: 7})
	wantEachOnceInOrder(t, ids, agents[4200:4300])

	for name, req := range map[string]*controlplanev1.ListAgentsRequest{
		"page_size over 1000":    {PageSize: 1001},
		"garbage page_token":     {PageToken: "garbage"},
		"another list's token":   {PageToken: "c2VxOjQy"}, // ListCommands' "seq:42"
		"a 200 KiB page_token":   {PageToken: strings.Repeat("A", 200<<10)},
		"a 200 KiB tenant":       {Tenant: strings.Repeat("t", 200<<10)},
		"a tenant with capitals": {Tenant: "T-0001"},
	} {
		_, err := admin.ListAgents(ctx(t), req)
		if status.Code(err) != codes.InvalidArgument || len(status.Convert(err).Message()) > 300 {
			t.Errorf("%s: %v, want a short InvalidArgument", name, err)
		}
	}
}

func TestListAgentsPagesFitWithAgentsAtTheirMaximumSize(t *testing.T) {
	agents := fleetOf(10, 50)
	// Five agents at the per-agent maximum, three of them side by side.
	for _, i := range []int{0, 1, 2, 250, 499} {
		agents[i] = biggestAgent(agents[i])
	}
	h := newHarnessWithAgents(t, agents)
	one, err := h.operator().ListAgents(ctx(t), &controlplanev1.ListAgentsRequest{PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	if size := proto.Size(one); size < 1<<20 {
		t.Fatalf("an agent at its maximum lists as only %d bytes; the test no longer tests much", size)
	}
	for _, size := range []uint32{0, 1000} {
		ids, pages := pageThrough(t, h.operator(), &controlplanev1.ListAgentsRequest{PageSize: size})
		wantEachOnceInOrder(t, ids, agents)
		t.Logf("page_size %d: %d pages", size, pages)
	}
}
