package fleet

import (
	"context"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

// What other replicas ask of the fleet (cluster.Handler, through the
// server): re-read what they changed in the store.

// ReloadState re-reads pins, holds and denials: another replica changed
// them. A new denial closes the matching streams here too; a lifted
// tenant denial is lifted here.
func (f *Fleet) ReloadState(ctx context.Context) error {
	// A change made here while the store was read is not in what was
	// read: read again (the change is stored before it is made here).
	for {
		f.mu.RLock()
		gen := f.stateGen
		f.mu.RUnlock()
		pins, err := f.cfg.Store.ListPins(ctx)
		if err != nil {
			return err
		}
		holds, err := f.cfg.Store.ListHolds(ctx)
		if err != nil {
			return err
		}
		denials, err := f.cfg.Store.ListDenials(ctx)
		if err != nil {
			return err
		}
		if f.applyState(gen, pins, holds, denials) {
			return nil
		}
	}
}

// applyState replaces pins, holds and denials with what was read, unless
// this replica changed them since gen; it reports whether it did.
func (f *Fleet) applyState(gen uint64, pins []store.Pin, holds []store.Hold, denials []store.Denial) bool {
	f.denials.Lock()
	defer f.denials.Unlock()
	f.mu.Lock()
	if f.stateGen != gen {
		f.mu.Unlock()
		return false
	}
	f.pins = make(map[string]store.Pin, len(pins))
	for _, p := range pins {
		f.pins[p.Runtime] = p
	}
	f.holds = make(map[string]store.Hold, len(holds))
	for _, h := range holds {
		f.holds[h.Tenant] = h
	}
	lifted := f.deniedTenants
	f.deniedTenants = map[string]bool{}
	for _, d := range denials {
		if d.Kind == store.DenyTenant {
			f.deniedTenants[d.Value] = true
			delete(lifted, d.Value)
		}
	}
	f.mu.Unlock()
	for _, d := range denials {
		if n := f.enforce(d); n > 0 {
			f.cfg.Logger.Warn("denied on another replica; streams closed here", "kind", d.Kind, "value", d.Value, "disconnected", n)
		}
	}
	for tenant := range lifted {
		f.cfg.Deny.AllowTenant(tenant)
	}
	return true
}

// ReloadAgents re-reads agent records another replica stored (all of
// them when all is set) and tells watchers here. Records of agents whose
// stream is here are newer in memory and kept.
func (f *Fleet) ReloadAgents(ctx context.Context, ids []string, all bool) error {
	var agents []store.Agent
	var err error
	if all {
		agents, err = f.cfg.Store.ListAgents(ctx)
	} else {
		agents, err = f.cfg.Store.GetAgents(ctx, ids)
	}
	if err != nil {
		return err
	}
	for _, a := range agents {
		if f.cfg.Sessions.Online(a.Identity) {
			continue
		}
		f.mu.Lock()
		old, known := f.agents[a.Identity]
		if f.dirty[a.Identity] != 0 || (known && old.LastSeen.Equal(a.LastSeen) && old.ConnectedAt.Equal(a.ConnectedAt)) {
			// Dirty: the stream was here a moment ago and ours is newer.
			// Unchanged: nothing to tell (a full reload reads them all).
			f.mu.Unlock()
			continue
		}
		intern(a.Runtimes)
		f.agents[a.Identity] = &a
		f.mu.Unlock()
		if !f.watched() {
			continue
		}
		kind := controlplanev1.AgentEventKind_AGENT_EVENT_KIND_HEALTH
		switch {
		case !f.cfg.Cluster.Online(a.Identity):
			kind = controlplanev1.AgentEventKind_AGENT_EVENT_KIND_DISCONNECTED
		case !known || !old.ConnectedAt.Equal(a.ConnectedAt):
			kind = controlplanev1.AgentEventKind_AGENT_EVENT_KIND_CONNECTED
		}
		f.watches.Publish(struct{}{}, Change{Kind: kind, Agent: f.View(a)})
	}
	return nil
}
