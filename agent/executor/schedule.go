package executor

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/molecule-ai/tenant-agent/agent/docker"
)

// A refresh recreates one runtime's containers in two phases
// (docs/design.md §6). The canary, the first container (a running one if
// there is one, for it proves the image), is recreated alone through its
// whole health gate. Once it is stable, the rest follow, at most parallel
// at once, each through its own health gate. A container never starts
// before the containers it depends on (DependsOn) are done, so it is
// never recreated beside them. A rollback anywhere stops new recreates at
// once: it is a signal about the image. A container that fails alone
// before anything changed (its config, its name) stops nothing.

// schedule is one refresh's recreates under way.
type schedule struct {
	x        *Executor
	ctx      context.Context
	target   docker.Target
	opts     docker.RecreateOptions
	hooks    Hooks
	parallel int
	cs       []docker.Container
	// deps[i] are the indexes of the containers cs[i] depends on.
	deps [][]int

	mu       sync.Mutex
	outcomes []docker.Outcome
	started  []bool
	finished []bool
	inFlight []string
	// turns holds a token for each swap (stop, renames, start) under way
	// in the parallel phase; see swapsAtOnce.
	turns chan struct{}
	// halted: a rollback, a crash or a cancel; nothing new starts.
	halted bool
	crash  error
}

func newSchedule(x *Executor, ctx context.Context, todo []docker.Container, target docker.Target, opts docker.RecreateOptions, parallel int, hooks Hooks) *schedule {
	cs, deps := order(todo)
	return &schedule{x: x, ctx: ctx, target: target, opts: opts, hooks: hooks, parallel: max(parallel, 1), cs: cs, deps: deps,
		outcomes: make([]docker.Outcome, len(cs)), started: make([]bool, len(cs)), finished: make([]bool, len(cs)), turns: make(chan struct{}, swapsAtOnce)}
}

// swapsAtOnce bounds the swaps (stop, renames, start) of the parallel
// phase under way at once, however many recreates are in flight: the
// daemon's stops and starts of other containers are what lengthen a
// container's downtime (bench/hostbench splits the window), so the
// recreates in flight create their replacements at once but take their
// swaps in turn, each waiting before its old container is touched, while
// it still serves.
const swapsAtOnce = 1

// turn waits for a swap's turn and returns what ends it; false if the
// refresh halted meanwhile: the old container, not yet touched, is left
// as it is, since nothing new starts after a halt.
func (s *schedule) turn() (func(), bool) {
	s.turns <- struct{}{}
	end := sync.OnceFunc(func() { <-s.turns })
	if s.stopped() {
		end()
		return nil, false
	}
	return end, true
}

// run recreates every container it may and returns every container's
// outcome, in dependency order; the error is a simulated crash.
func (s *schedule) run() ([]docker.Outcome, error) {
	for !s.stopped() {
		i := s.next(true)
		if i < 0 {
			break
		}
		s.hooks.Progress(&Progress{Phase: phaseOf(docker.StepCreate), Container: s.cs[i].Name(),
			Message: fmt.Sprintf("canary: %s first, alone; the other %d follow once it is stable", s.cs[i].Name(), s.pending()-1)})
		s.begin(i)
		s.recreate(i, nil) // the canary keeps its slot through its whole window
		if s.outcomes[i].Result == docker.ResultRecreated {
			break
		}
		// Failed alone: the image is not proven yet; the next is the canary.
	}
	s.fanOut()
	for i := range s.cs {
		if !s.started[i] {
			s.outcomes[i] = skipped(s.cs[i])
		}
	}
	return s.outcomes, s.crash
}

// fanOut recreates the rest, at most parallel at once, each as soon as a
// slot is free and its dependencies are done. With more than one slot, a
// container without a healthcheck gives its slot up once it runs and only
// its stability window is left: the windows overlap, so twenty containers
// do not wait out twenty windows in fives. One slot is one at a time,
// each container through its whole window, as a cautious operator asks.
func (s *schedule) fanOut() {
	type event struct{ finished bool }
	events := make(chan event)
	holding, active := 0, 0
	for {
		for holding < s.parallel && !s.stopped() {
			i := s.next(false)
			if i < 0 {
				break
			}
			s.begin(i)
			holding, active = holding+1, active+1
			go func() {
				release := sync.OnceFunc(func() {
					s.settling(i)
					events <- event{}
				})
				settling := release
				if s.parallel == 1 {
					settling = nil // one at a time: each through its whole window
				}
				s.recreate(i, settling)
				release()
				events <- event{finished: true}
			}()
		}
		if active == 0 {
			return
		}
		if ev := <-events; ev.finished {
			active--
		} else {
			holding--
		}
	}
}

// next is the first container not started whose dependencies are done
// (a canary must be running if any such is), or -1.
func (s *schedule) next(canary bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	first := -1
	for i := range s.cs {
		if s.started[i] || !s.ready(i) {
			continue
		}
		if !canary || s.cs[i].Inspect.State != nil && s.cs[i].Inspect.State.Running {
			return i
		}
		if first < 0 {
			first = i
		}
	}
	return first
}

// ready reports whether every container cs[i] depends on is done. One
// that failed alone is done too: it was left as it was.
func (s *schedule) ready(i int) bool {
	for _, d := range s.deps[i] {
		if !s.finished[d] {
			return false
		}
	}
	return true
}

func (s *schedule) pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, st := range s.started {
		if !st {
			n++
		}
	}
	return n
}

func (s *schedule) begin(i int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.started[i] = true
	s.inFlight = append(s.inFlight, s.cs[i].Name())
}

// stopped reports whether nothing new may start.
func (s *schedule) stopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.halted || s.ctx.Err() != nil
}

func (s *schedule) halt() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.halted = true
}

// recreate recreates cs[i], pointed at the new containers of its
// dependencies, and records its outcome; settling, if set, is called when
// only its stability window is left.
func (s *schedule) recreate(i int, settling func()) {
	c := s.withMovedDependencies(i)
	opts := s.opts
	opts.Settling = settling
	if settling != nil {
		opts.Turn = s.turn // the parallel phase
	}
	report := func(step docker.Step, msg string) {
		if step == docker.StepRollBack {
			s.halt() // at once, not when the rollback is over
		}
		s.hooks.Progress(&Progress{Phase: phaseOf(step), Container: c.Name(), Message: msg, InFlight: s.flying()})
	}
	o, err := s.x.cfg.Engine.Recreate(s.ctx, c, s.target, opts, s.hooks.Step, report)
	s.settling(i)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outcomes[i], s.finished[i] = o, true
	switch {
	case err != nil:
		s.crash, s.halted = err, true
	case o.Result != docker.ResultRecreated:
		s.halted = s.halted || !failedAlone(o)
		s.x.cfg.Logger.Warn("container not recreated", "container", c.Name(), "outcome", o.Result, "error", o.Err)
	}
}

// withMovedDependencies is cs[i] with references by ID to a dependency
// that was recreated pointing at its replacement.
func (s *schedule) withMovedDependencies(i int) docker.Container {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.cs[i]
	for _, d := range s.deps[i] {
		if o := s.outcomes[d]; o.Result == docker.ResultRecreated {
			c = c.Repoint(o.OldID, o.NewID)
		}
	}
	return c
}

// settling takes cs[i] off the containers in flight: it runs, and only
// its stability window is left (or it is done).
func (s *schedule) settling(i int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inFlight = slices.DeleteFunc(s.inFlight, func(n string) bool { return n == s.cs[i].Name() })
}

// flying names the containers being recreated now (not those only
// waiting out their stability window), for progress.
func (s *schedule) flying() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(slices.Values(s.inFlight))
}

// withNamespaceSharers moves from current to todo every container that
// shares the network namespace of one in todo (--network container:X),
// directly or through another. Recreating X ends the namespace it joined,
// and the Engine cannot move a container to another: it stays without a
// network, and cannot even start again, until it is recreated on X's
// replacement. Docker Compose does the same (network_mode: service:X
// resolves to X's container ID, so a new X makes the dependant's config
// differ and Compose recreates it).
func withNamespaceSharers(todo, current []docker.Container) (_, _ []docker.Container) {
	for moved := true; moved; {
		moved = false
		for i := 0; i < len(current); i++ {
			h := current[i].Inspect.HostConfig
			if h == nil || !h.NetworkMode.IsContainer() {
				continue
			}
			owner := h.NetworkMode.ConnectedContainer()
			if slices.ContainsFunc(todo, func(c docker.Container) bool { return c.Is(owner) }) {
				todo, current = append(todo, current[i]), slices.Delete(current, i, i+1)
				i, moved = i-1, true
			}
		}
	}
	return todo, current
}

// order sorts containers so that each follows the ones it depends on
// among them (a dependency outside them is left alone), keeping the
// given order otherwise, and returns each one's dependencies by index.
// A cycle, which the Engine does not allow, would be broken in the given
// order.
func order(todo []docker.Container) ([]docker.Container, [][]int) {
	needs := make([][]int, len(todo))
	for i, c := range todo {
		for _, ref := range c.DependsOn() {
			if j := slices.IndexFunc(todo, func(d docker.Container) bool { return d.Is(ref) }); j >= 0 && j != i && !slices.Contains(needs[i], j) {
				needs[i] = append(needs[i], j)
			}
		}
	}
	placed := make([]int, len(todo)) // old index → new index + 1
	var out []int
	for len(out) < len(todo) {
		progressed := false
		for i := range todo {
			if placed[i] == 0 && all(needs[i], func(j int) bool { return placed[j] != 0 }) {
				out, placed[i], progressed = append(out, i), len(out)+1, true
			}
		}
		if !progressed { // a cycle: take the first left
			i := slices.Index(placed, 0)
			out, placed[i] = append(out, i), len(out)+1
		}
	}
	cs, deps := make([]docker.Container, len(out)), make([][]int, len(out))
	for n, i := range out {
		cs[n] = todo[i]
		for _, j := range needs[i] {
			if placed[j] < placed[i] { // not the back edge of a cycle
				deps[n] = append(deps[n], placed[j]-1)
			}
		}
	}
	return cs, deps
}

func all(xs []int, f func(int) bool) bool {
	for _, x := range xs {
		if !f(x) {
			return false
		}
	}
	return true
}
