package server

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// filler is n bytes of "Z". No test input but over-limit fields uses it,
// so a run of Zs longer than a quote in a log or a listing means
// over-limit input was kept or echoed.
func filler(n int) string { return strings.Repeat("Z", n) }

// longRun must never appear in a log or a listing.
var longRun = filler(limits.Quote + 1)

// dialRefused dials a fake agent with these Hello fields and runtimes,
// waits for the control plane to end the stream and returns how it ended.
func dialRefused(t *testing.T, h *harness, stem string, hello *tenantagentv1.Hello, runtimes []*tenantagentv1.RuntimeStatus) error {
	t.Helper()
	a, err := cptest.Dial(t, h.srv.AgentAddr(), h.pki.Files(stem), cptest.Options{Hello: hello, Runtimes: runtimes})
	if err != nil {
		return err
	}
	select {
	case <-a.Done():
	case <-time.After(wait):
		t.Fatalf("the control plane did not end the stream of an over-limit Hello")
	}
	for _, m := range a.Received() {
		if m.GetWelcome() != nil {
			t.Errorf("an over-limit Hello was welcomed")
		}
	}
	return a.Err()
}

// listedAgents is every agent ListAgents returns, page after page.
func listedAgents(t *testing.T, admin controlplanev1.AdminServiceClient, req *controlplanev1.ListAgentsRequest) []*controlplanev1.Agent {
	t.Helper()
	var out []*controlplanev1.Agent
	for {
		page, err := admin.ListAgents(ctx(t), req)
		if err != nil {
			t.Fatalf("ListAgents after %d agents: %v", len(out), err)
		}
		out = append(out, page.GetAgents()...)
		if page.GetNextPageToken() == "" {
			return out
		}
		req.PageToken = page.GetNextPageToken()
	}
}

// containersNamed is one codex runtime with n containers, small enough
// that 5000 of them fit the agent listener's 1 MiB message.
func containersNamed(n int, name func(i int) string) []*tenantagentv1.RuntimeStatus {
	rt := &tenantagentv1.RuntimeStatus{Runtime: "codex", ImageRepository: repo}
	for i := range n {
		rt.Containers = append(rt.Containers, &tenantagentv1.ContainerStatus{
			Name: name(i), Id: fmt.Sprintf("id-%d", i), ImageDigest: digestV1,
			State: tenantagentv1.ContainerState_CONTAINER_STATE_RUNNING,
		})
	}
	return []*tenantagentv1.RuntimeStatus{rt}
}

// atTheLimits is a Hello with every string field and every count at its
// limit that still fits the agent listener's 1 MiB message: 64 runtimes,
// 1000 containers with names and IDs at their limits, a few with image
// references and digests at theirs, 1000 held command IDs.
func atTheLimits() (*tenantagentv1.Hello, []*tenantagentv1.RuntimeStatus) {
	hello := &tenantagentv1.Hello{
		Tenant: "acme", Hostname: strings.Repeat("h", limits.Hostname),
		AgentVersion: strings.Repeat("v", limits.Version), DockerVersion: strings.Repeat("d", limits.Version),
	}
	for i := range limits.HeldCommands {
		id := fmt.Sprintf("c-%d-", i)
		hello.ResultCommandIds = append(hello.ResultCommandIds, id+strings.Repeat("c", limits.ID-len(id)))
	}
	var rts []*tenantagentv1.RuntimeStatus
	perRuntime := limits.Containers / limits.Runtimes
	for r := range limits.Runtimes {
		name := fmt.Sprintf("rt%d-", r)
		rt := &tenantagentv1.RuntimeStatus{Runtime: name + strings.Repeat("r", limits.Name-len(name)), ImageRepository: strings.Repeat("i", limits.ImageRef)}
		n := perRuntime
		if r == 0 {
			n += limits.Containers - perRuntime*limits.Runtimes
		}
		for c := range n {
			cname := fmt.Sprintf("ws-%d-%d-", r, c)
			ct := &tenantagentv1.ContainerStatus{Name: cname + strings.Repeat("n", limits.Name-len(cname)), Id: strings.Repeat("0", limits.ID), ImageDigest: digestV1}
			if c == 0 {
				ct.ImageRef, ct.ImageDigest = strings.Repeat("i", limits.ImageRef), strings.Repeat("s", limits.ImageRef)
			}
			rt.Containers = append(rt.Containers, ct)
		}
		rts = append(rts, rt)
	}
	return hello, rts
}

func TestOverLimitHelloIsRefusedAndNeverStored(t *testing.T) {
	h := newHarness(t, "acme", "bulk", "exact")
	admin := h.operator()

	huge := dialRefused(t, h, "agent-acme", &tenantagentv1.Hello{Hostname: filler(2 << 20)}, codex(digestV1).Runtimes)
	// The agent listener's 1 MiB message limit refuses it before our
	// check can; either way the stream ends and nothing is kept.
	if c := status.Code(huge); c != codes.ResourceExhausted && c != codes.InvalidArgument {
		t.Errorf("2 MiB hostname: stream ended with %v, want ResourceExhausted or InvalidArgument", huge)
	}
	over := dialRefused(t, h, "agent-acme", &tenantagentv1.Hello{Hostname: filler(limits.Hostname + 1)}, codex(digestV1).Runtimes)
	wantRefusal(t, over, "hello.hostname is 254 bytes, at most 253")
	many := dialRefused(t, h, "agent-bulk", nil, containersNamed(5000, func(i int) string { return fmt.Sprintf("ws-%d", i) }))
	wantRefusal(t, many, "hello.runtimes[*].containers has 5000 entries, at most 1000")

	for _, a := range listedAgents(t, admin, &controlplanev1.ListAgentsRequest{}) {
		t.Errorf("a refused agent is listed: %s", a.GetIdentity())
	}
	if n := h.srv.sessions.Len(); n != 0 {
		t.Errorf("%d sessions registered for refused agents", n)
	}
	logs := h.logs.String()
	if strings.Contains(logs, longRun) {
		t.Errorf("the log holds more of an over-limit value than a quote")
	}
	if got := strings.Count(logs, "agent message refused"); got != 2 {
		t.Errorf("refusals logged %d times, want once each for the two our check saw", got)
	}

	// At every limit at once: accepted and listed whole.
	hello, rts := atTheLimits()
	whole := proto.Clone(hello).(*tenantagentv1.Hello)
	whole.Runtimes = rts
	if size := proto.Size(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Hello{Hello: whole}}); size < 512<<10 {
		t.Fatalf("the Hello at the limits is only %d bytes; the test no longer tests much", size)
	}
	hello.Tenant = "exact"
	h.agent("exact", cptest.Options{Hello: hello, Runtimes: rts})
	listed := listedAgents(t, admin, &controlplanev1.ListAgentsRequest{})
	if len(listed) != 1 || listed[0].GetHostname() != hello.GetHostname() || len(listed[0].GetRuntimes()) != limits.Runtimes {
		t.Fatalf("the agent at the limits is not listed whole: %d agents", len(listed))
	}
	total := 0
	for _, rt := range listed[0].GetRuntimes() {
		total += len(rt.GetStatus().GetContainers())
	}
	if total != limits.Containers {
		t.Errorf("listed %d containers, want %d", total, limits.Containers)
	}
}

func TestOverLimitReportAfterHelloIsRefusedAndNeverStored(t *testing.T) {
	h := newHarness(t, "acme")
	admin := h.operator()
	a := h.agent("acme", codex(digestV1))
	watch, err := admin.WatchAgents(ctx(t), &controlplanev1.WatchAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev.GetKind() == controlplanev1.AgentEventKind_AGENT_EVENT_KIND_SYNCED {
			break
		}
	}
	bad := containersNamed(2, func(i int) string { return filler(limits.Name + 1 + i) })
	if err := a.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Health{Health: &tenantagentv1.HealthReport{Runtimes: bad}}}); err != nil {
		t.Fatal(err)
	}
	<-a.Done()
	wantRefusal(t, a.Err(), "health.runtimes[0].containers[0].name is 256 bytes, at most 255")

	// The next event is the disconnect, with the report as it was.
	for {
		ev, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(ev.String(), longRun) {
			t.Fatalf("WatchAgents streamed the over-limit report: %v", ev.GetKind())
		}
		if ev.GetKind() == controlplanev1.AgentEventKind_AGENT_EVENT_KIND_DISCONNECTED {
			break
		}
	}
	listed := listedAgents(t, admin, &controlplanev1.ListAgentsRequest{})
	if len(listed) != 1 || strings.Contains(listed[0].String(), longRun) {
		t.Fatalf("ListAgents shows the over-limit report")
	}
	if got := listed[0].GetRuntimes()[0].GetStatus().GetContainers()[0].GetName(); got != "codex-a" {
		t.Errorf("container name %q, want the last report within limits (codex-a)", got)
	}
	if strings.Contains(h.logs.String(), longRun) {
		t.Errorf("the log holds more of an over-limit value than a quote")
	}
}

// wantRefusal checks a stream ended with InvalidArgument naming the field
// and limit, quoting a short prefix only.
func wantRefusal(t *testing.T, err error, want string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), want) {
		t.Errorf("stream ended with %v, want InvalidArgument with %q", err, want)
	}
	if len(st.Message()) > 300 {
		t.Errorf("the refusal is %d bytes: it repeats the input", len(st.Message()))
	}
}
