package docker

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
)

// State is the managed containers as the Engine's event stream last told
// the agent (Watch keeps it). Health reports read it instead of listing
// and inspecting every container at every heartbeat.
type State struct {
	mu   sync.Mutex
	byID map[string]Container
	// synced is true from a resync until the stream fails: only then is
	// the view current.
	synced  bool
	changes chan struct{}
}

func newState() *State {
	return &State{byID: map[string]Container{}, changes: make(chan struct{}, 1)}
}

// Changes signals, coalesced, each change of the view, and Docker turning
// reachable again.
func (s *State) Changes() <-chan struct{} { return s.changes }

// Snapshot returns the managed containers, and false while the view is not
// current (before the first resync, or while the stream is down): the
// caller then asks the Engine itself.
func (s *State) Snapshot() ([]Container, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.synced {
		return nil, false
	}
	out := make([]Container, 0, len(s.byID))
	for _, c := range s.byID {
		out = append(out, c)
	}
	return out, true
}

func (s *State) signal() {
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

func (s *State) unsync() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.synced = false
}

func (s *State) get(id string) (Container, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.byID[id]
	return c, ok
}

func (s *State) put(c Container) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byID[c.Inspect.ID] = c
}

// remove drops id and reports whether the view held it.
func (s *State) remove(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.byID[id]
	delete(s.byID, id)
	return ok
}

func (s *State) imagesInUse() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := map[string]bool{}
	for _, c := range s.byID {
		ids[c.Inspect.Image] = true
	}
	return ids
}

// apply brings one event into the view and reports whether it changed.
// What an event says in full (a death, a health status, a new name, a
// removal) is applied without asking the Engine; a new or started
// container, or one the view does not hold, is inspected, once.
func (s *State) apply(ctx context.Context, e *Engine, sel Selector, m events.Message) bool {
	id := m.Actor.ID
	action, detail, _ := strings.Cut(string(m.Action), ": ")
	if events.Action(action) == events.ActionDestroy {
		return s.remove(id)
	}
	c, ok := s.get(id)
	if !ok || !applyEvent(&c, events.Action(action), detail, m) {
		return s.reread(ctx, e, sel, id)
	}
	s.put(c)
	return true
}

// applyEvent changes c as the event says, on copies of the parts it
// changes (snapshots share the rest); false if the event needs a reread.
func applyEvent(c *Container, action events.Action, detail string, m events.Message) bool {
	if c.Inspect.ContainerJSONBase == nil || c.Inspect.State == nil {
		return false
	}
	base, st := *c.Inspect.ContainerJSONBase, *c.Inspect.State
	base.State, c.Inspect.ContainerJSONBase = &st, &base
	switch action {
	case events.ActionDie:
		st.Running, st.Paused, st.Restarting, st.Pid = false, false, false, 0
		st.Status = container.StateExited
		st.ExitCode, _ = strconv.Atoi(m.Actor.Attributes["exitCode"])
		st.FinishedAt = time.Unix(0, m.TimeNano).UTC().Format(time.RFC3339Nano)
	case events.ActionHealthStatus:
		h := container.Health{}
		if st.Health != nil {
			h = *st.Health
		}
		h.Status = container.HealthStatus(detail)
		st.Health = &h
	case events.ActionRename:
		base.Name = "/" + m.Actor.Attributes["name"]
	case events.ActionPause:
		st.Paused, st.Status = true, container.StatePaused
	case events.ActionUnPause:
		st.Paused, st.Status = false, container.StateRunning
	default:
		return false
	}
	return true
}

// reread inspects one container into the view (or out of it, if it is gone
// or not the tenant's) and reports whether the view changed.
func (s *State) reread(ctx context.Context, e *Engine, sel Selector, id string) bool {
	c, err := e.inspect(ctx, id)
	switch {
	case cerrdefs.IsNotFound(err):
		return s.remove(id)
	case err != nil:
		e.logger.Debug("cannot inspect a container after its event", "id", shortID(id), "error", err)
		return false
	case !sel.Matches(c.Inspect.Config.Labels):
		return s.remove(id)
	}
	s.put(c)
	return true
}

// resync brings the view in line with a container list: full inspects
// every container again; otherwise only the containers the list shows new
// or different (state, health, name, image) are inspected, so a resync of
// an unchanged host is one request. It reports whether the view changed.
func (s *State) resync(ctx context.Context, e *Engine, sel Selector, full bool) (bool, error) {
	summaries, err := e.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: sel.Filters()})
	if err != nil {
		return false, err
	}
	s.mu.Lock()
	old, wasSynced := s.byID, s.synced
	s.mu.Unlock()
	next := make(map[string]Container, len(summaries))
	changed := !wasSynced || len(old) != len(summaries)
	for _, sum := range summaries {
		if c, ok := old[sum.ID]; ok && !full && sameAsListed(c, sum) {
			next[sum.ID] = c
			continue
		}
		c, err := e.inspect(ctx, sum.ID)
		if err != nil {
			continue // gone since the list; its destroy event follows
		}
		next[sum.ID], changed = c, true
	}
	s.mu.Lock()
	s.byID, s.synced = next, true
	s.mu.Unlock()
	return changed, nil
}

// sameAsListed reports whether a container list entry shows c as the view
// holds it.
func sameAsListed(c Container, sum container.Summary) bool {
	st := c.Status()
	if sum.State != st.State || sum.ImageID != c.Inspect.Image || !slices.Contains(sum.Names, "/"+st.Name) {
		return false
	}
	return st.State != container.StateRunning || listedHealth(sum.Status) == st.Health
}

// listedHealth reads a running container's health from a list entry's
// status text ("Up 5 minutes (healthy)").
func listedHealth(status string) container.HealthStatus {
	switch {
	case strings.HasSuffix(status, "(healthy)"):
		return container.Healthy
	case strings.HasSuffix(status, "(unhealthy)"):
		return container.Unhealthy
	case strings.HasSuffix(status, "(health: starting)"):
		return container.Starting
	}
	return "" // no healthcheck, as Status says it
}
