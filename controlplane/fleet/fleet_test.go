package fleet

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/molecule-ai/tenant-agent/controlplane/auth"
	"github.com/molecule-ai/tenant-agent/controlplane/session"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/teststore"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

type env struct {
	f        *Fleet
	st       store.Store
	sessions *session.Registry
	deny     *auth.DenyList
}

func newEnv(t testing.TB, st store.Store) *env {
	t.Helper()
	e := &env{st: st, sessions: session.NewRegistry(8), deny: auth.NewDenyList()}
	var err error
	e.f, err = New(context.Background(), Config{Store: st, Sessions: e.sessions, Deny: e.deny,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return time.Unix(1000, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func openStore(t *testing.T) store.Store {
	t.Helper()
	st := teststore.Open(t)
	return st
}

func (e *env) connect(tenant, name, serial string) *session.Session {
	id := identity.Identity{ID: "spiffe://td/tenant/" + tenant + "/agent/" + name, Kind: identity.KindAgent, Tenant: tenant, Name: name}
	s, _ := e.sessions.Register(id, serial, time.Unix(1000, 0))
	return s
}

func TestDenyClosesOnlyMatchingSessionsAndPersists(t *testing.T) {
	st := openStore(t)
	e := newEnv(t, st)
	acme1, acme2 := e.connect("acme", "a1", "01"), e.connect("acme", "a2", "02")
	globex := e.connect("globex", "g1", "03")

	n, err := e.f.Deny(context.Background(), store.Denial{Kind: store.DenyTenant, Value: "acme", Reason: "incident 42", DeniedBy: "op"})
	if err != nil || n != 2 {
		t.Fatalf("Deny(acme) = %d, %v; want 2 sessions closed", n, err)
	}
	for _, s := range []*session.Session{acme1, acme2} {
		if err := s.Err(); err == nil || !strings.Contains(err.Error(), "incident 42") {
			t.Errorf("%s: session error %v, want closed with the reason", s.Identity.ID, err)
		}
	}
	if globex.Err() != nil {
		t.Errorf("another tenant's session was closed: %v", globex.Err())
	}

	n, err = e.f.Deny(context.Background(), store.Denial{Kind: store.DenySerial, Value: "03", Reason: "key leaked", DeniedBy: "op"})
	if err != nil || n != 1 || globex.Err() == nil {
		t.Fatalf("Deny(serial 03) = %d, %v, session err %v; want globex's one session closed", n, err, globex.Err())
	}

	// A fleet loaded from the store applies the denials again.
	again := newEnv(t, st)
	if err := again.deny.Denied("acme", ""); err == nil {
		t.Error("denial of acme lost across a restart")
	}
	if ok, err := again.f.Allow(context.Background(), "acme"); !ok || err != nil || again.deny.Denied("acme", "") != nil {
		t.Errorf("Allow(acme) = %v, %v; tenant still denied: %v", ok, err, again.deny.Denied("acme", ""))
	}
}

func TestReportsAreKeptUnderTheSessionsIdentityAndViewComparesWithThePin(t *testing.T) {
	e := newEnv(t, openStore(t))
	s := e.connect("acme", "a1", "01")
	e.f.Connected(s, &tenantagentv1.Hello{Tenant: "globex", Runtimes: []*tenantagentv1.RuntimeStatus{{Runtime: "codex", Containers: []*tenantagentv1.ContainerStatus{
		{Name: "ws-1", ImageDigest: "sha256:new"}, {Name: "ws-2", ImageDigest: "sha256:old"},
	}}}})
	if len(e.f.Agents("globex")) != 0 || len(e.f.Agents("acme")) != 1 {
		t.Fatalf("a Hello naming another tenant was filed under it: acme %v, globex %v", e.f.Agents("acme"), e.f.Agents("globex"))
	}
	e.f.SetPin(store.Pin{Runtime: "codex", Digest: "sha256:new"})
	if err := e.f.Hold(context.Background(), store.Hold{Tenant: "acme", Reason: "canary"}); err != nil {
		t.Fatal(err)
	}
	v := e.f.View(e.f.Agents("acme")[0])
	rt := v.Runtimes[0]
	if !v.Connected || !v.Held || rt.OnPin != 1 || rt.OffPin != 1 || rt.PinnedDigest != "sha256:new" {
		t.Errorf("view = %+v; want connected, held, 1 on and 1 off the pin", v)
	}
	// Flush persists what Run would write.
	e.f.Flush(context.Background())
	stored, err := e.st.ListAgents(context.Background())
	if err != nil || len(stored) != 1 || stored[0].Tenant != "acme" {
		t.Errorf("stored agents = %+v, %v", stored, err)
	}
}

// PinCounts, read in place for /metrics, says what the agents' views add
// up to.
func TestPinCountsAddUpTheViews(t *testing.T) {
	e := newEnv(t, openStore(t))
	e.f.SetPin(store.Pin{Runtime: "codex", Digest: "sha256:new"})
	e.f.SetPin(store.Pin{Runtime: "claude", Digest: "sha256:c2"})
	rt := func(runtime string, digests ...string) *tenantagentv1.RuntimeStatus {
		r := &tenantagentv1.RuntimeStatus{Runtime: runtime}
		for i, d := range digests {
			r.Containers = append(r.Containers, &tenantagentv1.ContainerStatus{Name: fmt.Sprintf("ws-%d", i), ImageDigest: d})
		}
		return r
	}
	e.f.Connected(e.connect("acme", "a1", "01"), &tenantagentv1.Hello{Runtimes: []*tenantagentv1.RuntimeStatus{
		rt("codex", "sha256:new", "sha256:old", "sha256:old"), rt("unpinned", "sha256:x")}})
	e.f.Connected(e.connect("globex", "g1", "02"), &tenantagentv1.Hello{Runtimes: []*tenantagentv1.RuntimeStatus{
		rt("codex", "sha256:new"), rt("claude", "sha256:c1")}})
	want := map[string]PinCount{}
	for _, a := range e.f.Agents("") {
		for _, r := range e.f.View(a).Runtimes {
			if r.PinnedDigest != "" {
				n := want[r.Status.GetRuntime()]
				n.On, n.Off = n.On+int(r.OnPin), n.Off+int(r.OffPin)
				want[r.Status.GetRuntime()] = n
			}
		}
	}
	if got := e.f.PinCounts(); !maps.Equal(got, want) || got["codex"] != (PinCount{On: 2, Off: 2}) {
		t.Errorf("PinCounts() = %v; want %v, the views' sums (codex 2 on, 2 off)", got, want)
	}
}

// Records hold one copy of the image strings every agent repeats, from a
// Hello or from a heartbeat.
func TestRecordsShareImageStrings(t *testing.T) {
	e := newEnv(t, openStore(t))
	report := func() []*tenantagentv1.RuntimeStatus { // fresh strings, as decoded
		return []*tenantagentv1.RuntimeStatus{{Runtime: strings.Clone("codex"), ImageRepository: strings.Clone("registry.example/codex"),
			Containers: []*tenantagentv1.ContainerStatus{{Name: "ws-1", ImageRef: strings.Clone("registry.example/codex@sha256:aa"), ImageDigest: strings.Clone("sha256:aa")}}}}
	}
	e.f.Connected(e.connect("acme", "a1", "01"), &tenantagentv1.Hello{Runtimes: report()})
	globex := e.connect("globex", "g1", "02")
	e.f.Connected(globex, &tenantagentv1.Hello{})
	e.f.Health(globex, &tenantagentv1.HealthReport{Runtimes: report()})
	agents := e.f.Agents("")
	x, y := agents[0].Runtimes[0], agents[1].Runtimes[0]
	for _, pair := range [][2]string{{x.Runtime, y.Runtime}, {x.ImageRepository, y.ImageRepository},
		{x.Containers[0].ImageRef, y.Containers[0].ImageRef}, {x.Containers[0].ImageDigest, y.Containers[0].ImageDigest}} {
		if unsafe.StringData(pair[0]) != unsafe.StringData(pair[1]) {
			t.Errorf("%q is held twice", pair[0])
		}
	}
}

// A heartbeat builds a view only for watchers; one who starts watching
// between two heartbeats gets the next one, compared with the pin.
func TestHealthReachesWatchersWhoStartBetweenHeartbeats(t *testing.T) {
	e := newEnv(t, openStore(t))
	e.f.SetPin(store.Pin{Runtime: "codex", Digest: "sha256:new"})
	s := e.connect("acme", "a1", "01")
	e.f.Connected(s, &tenantagentv1.Hello{})
	report := func(digest string) {
		e.f.Health(s, &tenantagentv1.HealthReport{DockerReachable: true, Runtimes: []*tenantagentv1.RuntimeStatus{{Runtime: "codex", Containers: []*tenantagentv1.ContainerStatus{
			{Name: "ws-1", ImageDigest: digest}}}}})
	}
	report("sha256:old") // nobody watches
	sub := e.f.Watch()
	defer sub.Close()
	report("sha256:new")
	select {
	case ch := <-sub.C:
		if len(ch.Agent.Runtimes) != 1 || ch.Agent.Runtimes[0].OnPin != 1 || ch.Agent.Agent.Identity != s.Identity.ID {
			t.Fatalf("change %+v; want acme's runtime on the pin", ch)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a watcher got no change for a heartbeat")
	}
}

// BenchmarkHealth is one heartbeat's handling in the fleet with nobody
// watching, a fleet's usual state: a report like the last one (each
// unmarshaled afresh, as from the stream), or one that changed.
func BenchmarkHealth(b *testing.B) {
	report := func(digest string) *tenantagentv1.HealthReport {
		return &tenantagentv1.HealthReport{DockerReachable: true, Runtimes: []*tenantagentv1.RuntimeStatus{{Runtime: "codex", Containers: []*tenantagentv1.ContainerStatus{
			{Name: "ws-1", ImageDigest: "sha256:old", Id: "0123456789ab", State: tenantagentv1.ContainerState_CONTAINER_STATE_RUNNING}, {Name: "ws-2", ImageDigest: digest, Id: "ba9876543210", State: tenantagentv1.ContainerState_CONTAINER_STATE_RUNNING}}}}}
	}
	for _, changed := range []bool{false, true} {
		b.Run(map[bool]string{false: "unchanged", true: "changed"}[changed], func(b *testing.B) {
			e := newEnv(b, teststore.Open(b))
			e.f.SetPin(store.Pin{Runtime: "codex", Digest: "sha256:new"})
			s := e.connect("acme", "a1", "01")
			e.f.Connected(s, &tenantagentv1.Hello{})
			reports := [2]*tenantagentv1.HealthReport{report("sha256:new"), report("sha256:new")}
			if changed {
				reports[1] = report("sha256:newer")
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				e.f.Health(s, reports[i%2])
				i++
			}
		})
	}
}

// A heartbeat that changes nothing but the time is stored once a minute
// (LastSeenEvery); one that changes the agent's health is stored at
// once. Watchers here hear of every heartbeat.
// recordingStore counts the agent records written whole.
type recordingStore struct {
	store.Store
	whole int
}

func (r *recordingStore) PutAgents(ctx context.Context, agents []store.Agent) error {
	r.whole += len(agents)
	return r.Store.PutAgents(ctx, agents)
}

func TestUnchangedHeartbeatsStoreTheirTimeOnlyEveryLastSeenEvery(t *testing.T) {
	st := &recordingStore{Store: openStore(t)}
	sessions := session.NewRegistry(8)
	now := time.Unix(1000, 0)
	f, err := New(context.Background(), Config{Store: st, Sessions: sessions, Deny: auth.NewDenyList(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	id := identity.Identity{ID: "spiffe://td/tenant/acme/agent/a1", Kind: identity.KindAgent, Tenant: "acme", Name: "a1"}
	s, _ := sessions.Register(id, "01", now)
	health := func(digest string) *tenantagentv1.HealthReport {
		return &tenantagentv1.HealthReport{DockerReachable: true, Runtimes: []*tenantagentv1.RuntimeStatus{{Runtime: "codex", Containers: []*tenantagentv1.ContainerStatus{
			{Name: "ws-1", ImageDigest: digest}}}}}
	}
	f.Connected(s, &tenantagentv1.Hello{DockerReachable: true, Runtimes: health("sha256:old").Runtimes})
	stored := func() store.Agent {
		t.Helper()
		f.Flush(context.Background())
		agents, err := st.ListAgents(context.Background())
		if err != nil || len(agents) != 1 {
			t.Fatalf("stored agents %v, %v", agents, err)
		}
		return agents[0]
	}
	connectedAt := stored().LastSeen
	sub := f.Watch()
	defer sub.Close()

	now = now.Add(30 * time.Second)
	f.Health(s, health("sha256:old"))
	if got := stored(); !got.LastSeen.Equal(connectedAt) {
		t.Errorf("an unchanged heartbeat 30 s on stored last seen %v; want %v kept", got.LastSeen, connectedAt)
	}
	select {
	case ch := <-sub.C:
		if ch.Kind != controlplanev1.AgentEventKind_AGENT_EVENT_KIND_HEALTH {
			t.Errorf("watchers got %v for a heartbeat; want HEALTH", ch.Kind)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watchers did not hear of an unchanged heartbeat")
	}

	now = now.Add(31 * time.Second)
	st.whole = 0
	f.Health(s, health("sha256:old"))
	if got := stored(); !got.LastSeen.Equal(now) || len(got.Runtimes) != 1 {
		t.Errorf("an unchanged heartbeat a minute on stored last seen %v with %v; want %v and the runtimes kept", got.LastSeen, got.Runtimes, now)
	}
	if st.whole != 0 {
		t.Errorf("an unchanged heartbeat rewrote %d whole records; want only its time stored", st.whole)
	}

	now = now.Add(time.Second)
	f.Health(s, health("sha256:new"))
	got := stored()
	if !got.LastSeen.Equal(now) || got.Runtimes[0].GetContainers()[0].GetImageDigest() != "sha256:new" {
		t.Errorf("a changed heartbeat a second on stored %v with %v; want it at once", got.LastSeen, got.Runtimes)
	}
	if st.whole != 1 {
		t.Errorf("a changed heartbeat wrote %d whole records; want 1", st.whole)
	}
}
