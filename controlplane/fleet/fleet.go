// Package fleet is the control plane's view of its agents and tenants: what
// each agent last reported, the runtime pins it is compared against, holds
// and denials. It persists every change and streams it to dashboards.
package fleet

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"
	"unique"

	"google.golang.org/protobuf/proto"

	"github.com/molecule-ai/tenant-agent/controlplane/auth"
	"github.com/molecule-ai/tenant-agent/controlplane/cluster"
	"github.com/molecule-ai/tenant-agent/controlplane/pubsub"
	"github.com/molecule-ai/tenant-agent/controlplane/session"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// Store is what the fleet loads at start and persists on each change.
type Store interface {
	ListAgents(ctx context.Context) ([]store.Agent, error)
	GetAgents(ctx context.Context, ids []string) ([]store.Agent, error)
	PutAgents(ctx context.Context, agents []store.Agent) error
	TouchAgents(ctx context.Context, seen []store.AgentSeen) error
	ListPins(ctx context.Context) ([]store.Pin, error)
	ListHolds(ctx context.Context) ([]store.Hold, error)
	PutHold(ctx context.Context, h store.Hold) error
	DeleteHold(ctx context.Context, tenant string) (bool, error)
	ListDenials(ctx context.Context) ([]store.Denial, error)
	PutDenial(ctx context.Context, d store.Denial) error
	DeleteDenial(ctx context.Context, kind store.DenialKind, value string) (bool, error)
}

// Config configures a Fleet.
type Config struct {
	Store    Store
	Sessions *session.Registry
	Deny     *auth.DenyList
	// Cluster tells other replicas what changed and says whether an
	// agent is connected to any replica; the cluster of one by default.
	Cluster cluster.Cluster
	Logger  *slog.Logger
	Now     func() time.Time
	// LastSeenEvery is how often a heartbeat that changes nothing else in
	// an agent's record still stores its last-seen time (1 minute by
	// default). The replica holding the stream shows the session's own
	// time; other replicas read the stored one.
	LastSeenEvery time.Duration
}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Store == nil || c.Sessions == nil || c.Deny == nil {
		return errors.New("fleet: Store, Sessions and Deny are required")
	}
	if c.Cluster == nil {
		c.Cluster = cluster.NewLocal(c.Sessions)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("component", "fleet")
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.LastSeenEvery <= 0 {
		c.LastSeenEvery = time.Minute
	}
	return nil
}

// unstored is what of an agent's record Run has yet to write.
type unstored uint8

const (
	lastSeenOnly unstored = iota + 1 // a heartbeat that changed nothing else
	wholeRecord
)

// Fleet is safe for concurrent use.
type Fleet struct {
	cfg     Config
	watches *pubsub.Hub[struct{}, Change]

	mu     sync.RWMutex
	agents map[string]*store.Agent // by SPIFFE ID
	// dirty agents are written to the store by Run, in batches: a
	// heartbeat from every agent every 15 s is too many transactions to
	// write one by one.
	dirty map[string]unstored
	pins  map[string]store.Pin  // by runtime
	holds map[string]store.Hold // by tenant
	// deniedTenants are the tenant denials last read from the store, so a
	// reload knows which were lifted.
	deniedTenants map[string]bool
	// stateGen counts this replica's own changes of pins, holds and
	// denials, so a reload that read the store before one of them does not
	// put the older state back (ReloadState); denials applies a reload's
	// denials and this replica's own one at a time, so a stale reload can
	// never deny again a tenant allowed meanwhile.
	stateGen uint64
	denials  sync.Mutex
}

// New loads the fleet's state from the store and fills the deny list.
func New(ctx context.Context, cfg Config) (*Fleet, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	f := &Fleet{cfg: cfg, watches: pubsub.NewHub[struct{}, Change](4096),
		agents: map[string]*store.Agent{}, dirty: map[string]unstored{}, pins: map[string]store.Pin{}, holds: map[string]store.Hold{}, deniedTenants: map[string]bool{}}
	agents, err := cfg.Store.ListAgents(ctx)
	if err != nil {
		return nil, err
	}
	for i := range agents {
		intern(agents[i].Runtimes)
		f.agents[agents[i].Identity] = &agents[i]
	}
	if err := f.ReloadState(ctx); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *Fleet) applyDenial(d store.Denial) {
	switch d.Kind {
	case store.DenyTenant:
		f.cfg.Deny.DenyTenant(d.Value, d.Reason)
	case store.DenySerial:
		f.cfg.Deny.DenySerial(d.Value, d.Reason)
	}
}

// Connected records an agent's Hello. A report is the agent's claim about
// its own host only: it is keyed by the session's identity and tenant
// (from the certificate), never by anything in the report, and replaces
// only that agent's record. agentsvc has checked it against pkg/limits.
func (f *Fleet) Connected(s *session.Session, hello *tenantagentv1.Hello) store.Agent {
	now := f.cfg.Now()
	a := store.Agent{
		Identity: s.Identity.ID, Tenant: s.Identity.Tenant, Name: s.Identity.Name,
		ConnectedAt: s.ConnectedAt, LastSeen: now,
		Hostname: hello.GetHostname(), AgentVersion: hello.GetAgentVersion(), DockerVersion: hello.GetDockerVersion(),
		DockerReachable: hello.GetDockerReachable(), Runtimes: hello.GetRuntimes(),
	}
	intern(a.Runtimes)
	f.put(a, controlplanev1.AgentEventKind_AGENT_EVENT_KIND_CONNECTED)
	return a
}

// Health records a heartbeat, under the reporting agent only (see
// Connected). A report whose runtimes are unchanged (the agent's previous
// report on this stream said them) keeps the record's. A heartbeat that
// says what the record already does stores only its time, and only once
// LastSeenEvery has passed: at 10,000 agents, storing every one was 667
// records a second to write (and, with replicas, to read again on every
// other replica) to move a time.
func (f *Fleet) Health(s *session.Session, h *tenantagentv1.HealthReport) store.Agent {
	now := f.cfg.Now()
	a, ok := f.Agent(s.Identity.ID)
	runtimes := h.GetRuntimes()
	if h.GetRuntimesUnchanged() {
		runtimes = a.Runtimes
	}
	if ok && a.ConnectedAt.Equal(s.ConnectedAt) && sameHealth(a, h, runtimes) {
		if now.Sub(a.LastSeen) >= f.cfg.LastSeenEvery {
			a.LastSeen = now
			f.keep(a, lastSeenOnly)
		}
		f.publish(controlplanev1.AgentEventKind_AGENT_EVENT_KIND_HEALTH, a)
		return a
	}
	a.Identity, a.Tenant, a.Name, a.ConnectedAt = s.Identity.ID, s.Identity.Tenant, s.Identity.Name, s.ConnectedAt
	a.LastSeen, a.DockerReachable, a.Runtimes = now, h.GetDockerReachable(), runtimes
	if !h.GetRuntimesUnchanged() {
		intern(a.Runtimes)
	}
	if h.GetAgentVersion() != "" {
		a.AgentVersion = h.GetAgentVersion()
	}
	f.put(a, controlplanev1.AgentEventKind_AGENT_EVENT_KIND_HEALTH)
	return a
}

// intern makes the names and image strings of reported runtimes share
// one copy each (unique.Make): every agent's containers name the same few
// runtimes, repositories and digests.
func intern(rs []*tenantagentv1.RuntimeStatus) {
	for _, r := range rs {
		r.Runtime, r.ImageRepository = unique.Make(r.Runtime).Value(), unique.Make(r.ImageRepository).Value()
		for _, c := range r.Containers {
			c.ImageRef, c.ImageDigest = unique.Make(c.ImageRef).Value(), unique.Make(c.ImageDigest).Value()
		}
	}
}

// sameHealth reports whether h, with these runtimes, says what a's
// record already does.
func sameHealth(a store.Agent, h *tenantagentv1.HealthReport, runtimes []*tenantagentv1.RuntimeStatus) bool {
	if a.DockerReachable != h.GetDockerReachable() || (h.GetAgentVersion() != "" && h.GetAgentVersion() != a.AgentVersion) {
		return false
	}
	return h.GetRuntimesUnchanged() || slices.EqualFunc(runtimes, a.Runtimes, func(x, y *tenantagentv1.RuntimeStatus) bool { return proto.Equal(x, y) })
}

// Disconnected records that an agent's stream closed.
func (f *Fleet) Disconnected(s *session.Session) {
	a, ok := f.Agent(s.Identity.ID)
	if !ok {
		return
	}
	a.LastSeen = s.LastSeen()
	f.put(a, controlplanev1.AgentEventKind_AGENT_EVENT_KIND_DISCONNECTED)
}

// put records an agent in memory, for Run to store, and tells watchers.
func (f *Fleet) put(a store.Agent, kind controlplanev1.AgentEventKind) {
	f.keep(a, wholeRecord)
	f.publish(kind, a)
}

// keep records an agent in memory and marks what of it Run must store.
func (f *Fleet) keep(a store.Agent, w unstored) {
	f.mu.Lock()
	f.agents[a.Identity] = &a
	f.dirty[a.Identity] = max(f.dirty[a.Identity], w)
	f.mu.Unlock()
}

// publish tells watchers of a change of a's. Every heartbeat of every
// agent comes through here, and a view is built only for watchers: one
// who starts watching after the check subscribes before reading its
// snapshot (Watch), which has the record already.
func (f *Fleet) publish(kind controlplanev1.AgentEventKind, a store.Agent) {
	if f.watched() {
		f.watches.Publish(struct{}{}, Change{Kind: kind, Agent: f.View(a)})
	}
}

// watched reports whether anyone watches the fleet.
func (f *Fleet) watched() bool { return f.watches.Watched(struct{}{}) }

// Run writes changed agent records to the store every interval, in one
// transaction, until ctx ends; then it writes what is left. A crash loses
// at most the last interval of health and LastSeenEvery of last-seen
// times, which the agents report again when they reconnect.
func (f *Fleet) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			f.Flush(context.WithoutCancel(ctx))
			return
		case <-t.C:
			f.Flush(ctx)
		}
	}
}

// Flush writes the changed agent records now: whole records, then the
// last-seen times of those whose heartbeats changed nothing else.
func (f *Fleet) Flush(ctx context.Context) {
	f.mu.Lock()
	pending := f.dirty
	f.dirty = map[string]unstored{}
	var whole []store.Agent
	var seen []store.AgentSeen
	ids := make([]string, 0, len(pending))
	for id, w := range pending {
		ids = append(ids, id)
		a := f.agents[id]
		if w == wholeRecord {
			whole = append(whole, *a)
		} else {
			seen = append(seen, store.AgentSeen{Identity: id, At: a.LastSeen})
		}
	}
	f.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	var err error
	if len(whole) > 0 {
		err = f.cfg.Store.PutAgents(ctx, whole)
	}
	if err == nil {
		err = f.cfg.Store.TouchAgents(ctx, seen)
	}
	if err != nil {
		f.cfg.Logger.Error("cannot record agents; will retry", "agents", len(ids), "error", err)
		f.mu.Lock()
		for id, w := range pending {
			f.dirty[id] = max(f.dirty[id], w)
		}
		f.mu.Unlock()
		return
	}
	f.cfg.Cluster.AgentsChanged(ids...)
}

// Agent returns an agent's record.
func (f *Fleet) Agent(id string) (store.Agent, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	a, ok := f.agents[id]
	if !ok {
		return store.Agent{}, false
	}
	return *a, true
}

// Agents returns every agent record, by tenant then identity; a non-empty
// tenant filters.
func (f *Fleet) Agents(tenant string) []store.Agent {
	f.mu.RLock()
	out := make([]store.Agent, 0, len(f.agents))
	for _, a := range f.agents {
		if tenant == "" || a.Tenant == tenant {
			out = append(out, *a)
		}
	}
	f.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Tenant != out[j].Tenant {
			return out[i].Tenant < out[j].Tenant
		}
		return out[i].Identity < out[j].Identity
	})
	return out
}

// KnownTenant reports whether any agent of tenant ever connected.
func (f *Fleet) KnownTenant(tenant string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, a := range f.agents {
		if a.Tenant == tenant {
			return true
		}
	}
	return false
}

// Pin returns a runtime's current pin.
func (f *Fleet) Pin(runtime string) (store.Pin, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p, ok := f.pins[runtime]
	return p, ok
}

// SetPin makes p the runtime's current pin in the fleet's view; the caller
// has stored it.
func (f *Fleet) SetPin(p store.Pin) {
	f.mu.Lock()
	f.pins[p.Runtime] = p
	f.stateGen++
	f.mu.Unlock()
	f.cfg.Cluster.StateChanged()
}

// Held returns a tenant's hold, if any.
func (f *Fleet) Held(tenant string) (store.Hold, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	h, ok := f.holds[tenant]
	return h, ok
}

// Hold stores a hold on a tenant.
func (f *Fleet) Hold(ctx context.Context, h store.Hold) error {
	if err := f.cfg.Store.PutHold(ctx, h); err != nil {
		return err
	}
	f.mu.Lock()
	f.holds[h.Tenant] = h
	f.stateGen++
	f.mu.Unlock()
	f.cfg.Cluster.StateChanged()
	f.cfg.Logger.Info("tenant held", "tenant", h.Tenant, "by", h.HeldBy, "reason", h.Reason)
	return nil
}

// Release lifts a hold; it reports whether there was one.
func (f *Fleet) Release(ctx context.Context, tenant string) (bool, error) {
	ok, err := f.cfg.Store.DeleteHold(ctx, tenant)
	if err != nil {
		return false, err
	}
	f.mu.Lock()
	delete(f.holds, tenant)
	f.stateGen++
	f.mu.Unlock()
	f.cfg.Cluster.StateChanged()
	f.cfg.Logger.Info("tenant released", "tenant", tenant)
	return ok, nil
}

// Deny stores a denial, applies it to new handshakes and calls, and
// closes the matching streams at once. It returns how many it closed.
func (f *Fleet) Deny(ctx context.Context, d store.Denial) (int, error) {
	if err := f.cfg.Store.PutDenial(ctx, d); err != nil {
		return 0, err
	}
	f.denials.Lock()
	n := f.enforce(d)
	f.bumpState()
	f.denials.Unlock()
	f.cfg.Cluster.StateChanged()
	f.cfg.Logger.Warn("denied", "kind", d.Kind, "value", d.Value, "by", d.DeniedBy, "reason", d.Reason, "disconnected", n)
	return n, nil
}

func (f *Fleet) bumpState() {
	f.mu.Lock()
	f.stateGen++
	f.mu.Unlock()
}

// enforce applies a denial to new handshakes and calls and closes the
// matching streams here; it returns how many it closed.
func (f *Fleet) enforce(d store.Denial) int {
	f.applyDenial(d)
	return f.cfg.Sessions.CloseMatching(func(s *session.Session) bool {
		return (d.Kind == store.DenyTenant && s.Identity.Tenant == d.Value) || (d.Kind == store.DenySerial && s.Serial == d.Value)
	}, session.ErrDenied(d.Reason))
}

// Allow lifts a tenant's denial; it reports whether there was one.
func (f *Fleet) Allow(ctx context.Context, tenant string) (bool, error) {
	ok, err := f.cfg.Store.DeleteDenial(ctx, store.DenyTenant, tenant)
	if err != nil {
		return false, err
	}
	f.denials.Lock()
	f.cfg.Deny.AllowTenant(tenant)
	f.bumpState()
	f.denials.Unlock()
	f.cfg.Cluster.StateChanged()
	f.cfg.Logger.Info("tenant allowed", "tenant", tenant)
	return ok, nil
}

// CheckSession re-checks an open session against the deny list (on each
// heartbeat), closing it if it is denied.
func (f *Fleet) CheckSession(s *session.Session) error {
	if err := f.cfg.Deny.Denied(s.Identity.Tenant, s.Serial); err != nil {
		s.Close(session.ErrDenied(err.Error()))
		return err
	}
	return nil
}

// AgentView is an agent as operators see it: its last report, whether it
// is connected, held or denied, and each runtime compared with its pin.
type AgentView struct {
	// Agent is the record; its LastSeen is the session's while connected.
	store.Agent
	Connected, Held, Denied bool
	// Runtimes are Agent.Runtimes, each with its pin.
	Runtimes []RuntimeView
}

// RuntimeView is one runtime of an agent against its pin.
type RuntimeView struct {
	Status *tenantagentv1.RuntimeStatus
	// PinnedDigest is empty when the runtime has no pin; OnPin and OffPin
	// count its containers then only against a pin.
	PinnedDigest  string
	OnPin, OffPin uint32
}

// Change is one change to an agent, for watchers. Kind is the API's enum.
type Change struct {
	Kind  controlplanev1.AgentEventKind
	Agent AgentView
}

// PinCount is how many containers of a runtime run its pin, and how many
// do not.
type PinCount struct{ On, Off int }

// PinCounts counts the containers of every agent's pinned runtimes, by
// runtime, in place: a /metrics scrape at 10,000 agents copied, sorted and
// viewed every record for these few numbers.
func (f *Fleet) PinCounts() map[string]PinCount {
	f.mu.RLock()
	defer f.mu.RUnlock()
	counts := map[string]PinCount{}
	for _, a := range f.agents {
		for _, r := range a.Runtimes {
			p, ok := f.pins[r.GetRuntime()]
			if !ok {
				continue
			}
			n := counts[r.GetRuntime()]
			for _, c := range r.GetContainers() {
				if c.GetImageDigest() == p.Digest {
					n.On++
				} else {
					n.Off++
				}
			}
			counts[r.GetRuntime()] = n
		}
	}
	return counts
}

// View is an agent compared with the pins, holds and denials.
func (f *Fleet) View(a store.Agent) AgentView {
	f.mu.RLock()
	_, held := f.holds[a.Tenant]
	pins := make(map[string]store.Pin, len(a.Runtimes))
	for _, r := range a.Runtimes {
		if p, ok := f.pins[r.GetRuntime()]; ok {
			pins[r.GetRuntime()] = p
		}
	}
	f.mu.RUnlock()
	v := AgentView{Agent: a, Held: held, Denied: f.cfg.Deny.Denied(a.Tenant, "") != nil}
	if s := f.cfg.Sessions.Get(a.Identity); s != nil {
		v.Connected, v.LastSeen = true, s.LastSeen()
	} else {
		v.Connected = f.cfg.Cluster.Online(a.Identity)
	}
	for _, r := range a.Runtimes {
		rv := RuntimeView{Status: r}
		if p, ok := pins[r.GetRuntime()]; ok {
			rv.PinnedDigest = p.Digest
			for _, c := range r.GetContainers() {
				if c.GetImageDigest() == p.Digest {
					rv.OnPin++
				} else {
					rv.OffPin++
				}
			}
		}
		v.Runtimes = append(v.Runtimes, rv)
	}
	return v
}

// Watch streams agent changes; see WatchAgents for the snapshot.
func (f *Fleet) Watch() *pubsub.Subscription[Change] {
	return f.watches.Subscribe(struct{}{})
}
