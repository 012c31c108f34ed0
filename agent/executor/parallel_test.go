package executor

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/volume"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// stepRecorder keeps every journaled step and progress report of a
// refresh, in order, across the parallel recreates.
type stepRecorder struct {
	t        *testing.T // logs the timeline: a failure shows where the time went
	mu       sync.Mutex
	steps    []docker.RecreateState
	progress []*Progress
	halt     int
}

func (r *stepRecorder) step(st docker.RecreateState) {
	r.t.Logf("%s %s %s", time.Now().Format("15:04:05.000"), st.Name, st.Step)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.steps = append(r.steps, st)
}

func (r *stepRecorder) report(p *Progress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.progress = append(r.progress, p)
}

// markHalt notes, once, how many steps were recorded when the refresh
// halted; halt is -1 before.
func (r *stepRecorder) markHalt() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.halt < 0 {
		r.halt = len(r.steps)
	}
}

func (r *stepRecorder) halted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.halt
}

// at is the index of the first step s of container name, or -1.
func (r *stepRecorder) at(name string, s docker.Step) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.IndexFunc(r.steps, func(st docker.RecreateState) bool { return st.Name == name && st.Step == s })
}

// maxInFlight is the most containers a progress report named in flight.
func (r *stepRecorder) maxInFlight() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, p := range r.progress {
		n = max(n, len(p.GetInFlight()))
	}
	return n
}

// maxSwapping is the most containers at once between their journaled
// disable-restart and start steps: a recreate journals the first once its
// swap's turn has begun and ends the turn after the start it journaled,
// so with turns no more than swapsAtOnce show at once.
func (r *stepRecorder) maxSwapping() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	swapping, n := map[string]bool{}, 0
	for _, st := range r.steps {
		switch st.Step {
		case docker.StepDisableRestart:
			swapping[st.Name] = true
		case docker.StepStart:
			delete(swapping, st.Name)
		}
		n = max(n, len(swapping))
	}
	return n
}

func (r *stepRecorder) hooks() Hooks {
	return Hooks{Step: func(st docker.RecreateState) error { r.step(st); return nil }, Progress: r.report}
}

// managed creates and (if running) starts a managed container on image
// with a named volume at /data, changed by host, and removes it (by name
// too: a recreated container has a new ID) and its volume at the end.
func (f engineFixture) managed(t *testing.T, ctx context.Context, sel docker.Selector, name, image string, running bool, host func(*container.HostConfig)) {
	t.Helper()
	if _, err := f.cli.VolumeCreate(ctx, volume.CreateOptions{Name: name + "-data"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.cli.VolumeRemove(context.Background(), name+"-data", true) })
	hc := &container.HostConfig{Binds: []string{name + "-data:/data"}}
	if host != nil {
		host(hc)
	}
	c, err := f.cli.ContainerCreate(ctx, &container.Config{Image: image, Labels: sel}, hc, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, ref := range []string{name, c.ID} {
			registrytest.RemoveContainer(f.cli, ref)
		}
	})
	if running {
		if err := f.cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// images serves workspace images of specs from a registry of their own
// (another repository than the fixture's) and removes them at the end.
func (f engineFixture) images(t *testing.T, specs ...registrytest.Image) (repo string, digests []string) {
	t.Helper()
	reg := registrytest.StartRegistry(t)
	for _, spec := range specs {
		r, d := reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, spec))
		repo, digests = r, append(digests, d)
	}
	t.Cleanup(func() { registrytest.RemoveImages(t, f.cli, repo) })
	return repo, digests
}

// seen is what the test knows of a container between refreshes.
type seen struct{ id, startedAt, image string }

func (f engineFixture) look(t *testing.T, ctx context.Context, name string) seen {
	t.Helper()
	in, err := f.cli.ContainerInspect(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return seen{in.ID, in.State.StartedAt, in.Config.Image}
}

func outcomesByName(res *tenantagentv1.CommandResult) map[string]tenantagentv1.ContainerOutcome {
	out := map[string]tenantagentv1.ContainerOutcome{}
	for _, c := range res.GetContainers() {
		out[c.GetName()] = c.GetOutcome()
	}
	return out
}

const (
	recreated      = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED
	rolledBack     = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ROLLED_BACK
	notAttempted   = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_NOT_ATTEMPTED
	alreadyCurrent = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ALREADY_CURRENT
)

// Twenty containers of one runtime, three refreshes (docs/design.md §6):
//  1. an unhealthy image: the canary rolls back and the other 19 are never
//     touched (same ID, never restarted);
//  2. a healthy image, but one container's replacement dies in its health
//     gate in the parallel phase: it is rolled back to v1, the ones in
//     flight beside it finish their swap or, still waiting for their turn,
//     are left as they were, and no new recreate starts after it;
//  3. the healthy image again, the command asking for 8 at once: every
//     container left moves, never more than the agent's 4 at once, with
//     its data volume.
func TestRefreshTwentyContainersCanaryThenParallel(t *testing.T) {
	t.Parallel()
	// Three refreshes of twenty containers with their swaps in turn took
	// over 6 minutes in CI on a slow daemon: the package's 10 minutes
	// bound it, not a context that cancels the last refresh mid-way.
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	f := newEngineFixture(t, ctx)
	// v1 and v2 without a healthcheck, gated by a short stability window:
	// twenty containers probed every 500 ms kept both cores busy with the
	// daemon's execs, and a container's start took seconds.
	repo, digests := f.images(t, registrytest.Image{Version: "v1", NoHealthcheck: true}, registrytest.Image{Version: "v2", NoHealthcheck: true},
		registrytest.Image{Version: "bad", Unhealthy: true})
	v1, v2, bad := digests[0], digests[1], digests[2]
	if _, err := f.engine.Pull(ctx, repo+"@"+v1, docker.PullOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	sel := docker.Selector{"molecule.org-id": "twenty-" + f.workspace, "molecule.platform.managed": "true"}
	names := make([]string, 20)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%02d", f.workspace, i)
		f.managed(t, ctx, sel, names[i], repo+"@"+v1, true, nil)
	}
	x, err := New(Config{Engine: f.engine, Selector: sel, AllowRepositories: []string{repo}, MaxParallel: 4, StabilityWindow: time.Second, Logger: f.logger})
	if err != nil {
		t.Fatal(err)
	}
	refresh := func(id, repo, digest string, parallel uint32, hooks Hooks) *tenantagentv1.CommandResult {
		t.Helper()
		res, err := x.Refresh(ctx, &tenantagentv1.RefreshRuntimeImage{CommandId: id, Runtime: "codex", ImageRepository: repo, ImageDigest: digest,
			Options: &tenantagentv1.RefreshOptions{MaxParallelContainers: parallel}}, hooks)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(res.GetContainers()); n != 20 {
			t.Fatalf("%s: %d container outcomes, want 20", id, n)
		}
		return res
	}
	before := map[string]seen{}
	for _, n := range names {
		before[n] = f.look(t, ctx, n)
	}
	untouched := func(step string, names []string) {
		t.Helper()
		for _, n := range names {
			if now := f.look(t, ctx, n); now != before[n] {
				t.Errorf("%s: %s was touched: %+v, was %+v", step, n, now, before[n])
			}
		}
	}

	// 1. The canary rolls back; nothing else is touched.
	rec := &stepRecorder{t: t}
	res := refresh("c-bad", repo, bad, 0, rec.hooks())
	got := outcomesByName(res)
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_ROLLED_BACK || got[names[0]] != rolledBack {
		t.Fatalf("unhealthy image: %v, canary %v (%s); want ROLLED_BACK", res.GetOutcome(), got[names[0]], res.GetError())
	}
	for _, n := range names[1:] {
		if got[n] != notAttempted || rec.at(n, docker.StepCreate) >= 0 {
			t.Errorf("unhealthy image: %s %v, want untouched", n, got[n])
		}
	}
	untouched("unhealthy image", names[1:])

	// 2. names[1]'s replacement dies in the parallel phase. Recreates
	// beside it may have begun before the agent saw the failure (a
	// container in its stability window holds no slot); none may begin
	// after it.
	rec = &stepRecorder{t: t, halt: -1}
	hooks := Hooks{
		Step: func(st docker.RecreateState) error {
			rec.step(st)
			if st.Name == names[1] && st.Step == docker.StepHealthGate {
				if err := f.cli.ContainerKill(ctx, st.NewID, "SIGKILL"); err != nil {
					t.Errorf("kill %s's replacement: %v", st.Name, err)
				}
			}
			return nil
		},
		Progress: func(p *Progress) {
			rec.report(p)
			if p.GetContainer() == names[1] && p.GetPhase() == tenantagentv1.CommandPhase_COMMAND_PHASE_ROLLING_BACK {
				rec.markHalt()
			}
		},
	}
	res = refresh("c-partial", repo, v2, 0, hooks)
	got = outcomesByName(res)
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_PARTIAL {
		t.Errorf("failure in the parallel phase: %v (%s), want PARTIAL", res.GetOutcome(), res.GetError())
	}
	if now := f.look(t, ctx, names[1]); got[names[1]] != rolledBack || now.id != before[names[1]].id || now.image != repo+"@"+v1 {
		t.Errorf("failure in the parallel phase: %s %v %+v, want rolled back to its v1 container", names[1], got[names[1]], now)
	}
	// names[0] moved before; of those begun beside names[1], the ones whose
	// swap had begun finish and move, the ones still waiting for their
	// turn are refused it and left as they were; the others never begin.
	moved, neverBegun := []string{names[0]}, 0
	if got[names[0]] != recreated || f.look(t, ctx, names[0]).image != repo+"@"+v2 {
		t.Errorf("failure in the parallel phase: %s %v, want moved to v2", names[0], got[names[0]])
	}
	halted := rec.halted()
	for _, n := range names[2:] {
		created := rec.at(n, docker.StepCreate)
		switch {
		case created < 0:
			neverBegun++
			if got[n] != notAttempted {
				t.Errorf("failure in the parallel phase: %s %v, never begun, want NOT_ATTEMPTED", n, got[n])
			}
			untouched("failure in the parallel phase (never begun)", []string{n})
		case halted < 0 || created > halted:
			t.Errorf("failure in the parallel phase: %s begun after the failure (step %d, rollback at %d)", n, created, halted)
		case got[n] == recreated:
			if f.look(t, ctx, n).image != repo+"@"+v2 {
				t.Errorf("failure in the parallel phase: %s recreated, but not on v2", n)
			}
			moved = append(moved, n)
		case got[n] == notAttempted:
			untouched("failure in the parallel phase (waited for its turn)", []string{n})
		default:
			t.Errorf("failure in the parallel phase: %s %v, want moved to v2 or left untouched", n, got[n])
		}
	}
	if neverBegun == 0 {
		t.Errorf("failure in the parallel phase: every container had begun before it, so the test shows nothing about stopping")
	}

	// 3. The rest move; the command cannot raise the agent's 4.
	rec = &stepRecorder{t: t}
	res = refresh("c-rest", repo, v2, 8, rec.hooks())
	got = outcomesByName(res)
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Errorf("the rest: %v (%s), want SUCCEEDED", res.GetOutcome(), res.GetError())
	}
	for _, n := range names {
		want := recreated
		if slices.Contains(moved, n) {
			want = alreadyCurrent
		}
		in, err := f.cli.ContainerInspect(ctx, n)
		if err != nil || got[n] != want || in.Config.Image != repo+"@"+v2 || !in.State.Running || mountNamed(in, "/data") != n+"-data" {
			t.Errorf("the rest: %s %v (%v), want %v, running v2 with its volume", n, got[n], err, want)
		}
	}
	if n := rec.maxInFlight(); n < 2 || n > 4 {
		t.Errorf("the rest: at most %d containers in flight, want 2 to 4 (the agent's 4, not the command's 8)", n)
	}
	if n := rec.maxSwapping(); n < 1 || n > swapsAtOnce {
		t.Errorf("the rest: %d containers stopped and started at once, want 1 to %d (their swaps take turns)", n, swapsAtOnce)
	}
	canaryDone := rec.at(names[1], docker.StepDone) // names[0] is current: names[1] is the canary
	for _, n := range names[2:] {
		if i := rec.at(n, docker.StepCreate); i >= 0 && i < canaryDone {
			t.Errorf("the rest: %s started before the canary was done", n)
		}
	}
}

func mountNamed(in container.InspectResponse, dest string) string {
	for _, m := range in.Mounts {
		if m.Destination == dest {
			return m.Name
		}
	}
	return ""
}

// Containers that others depend on are recreated first, never beside
// their dependants, whatever their names: --volumes-from, --link and
// --network container: (that one stopped: two workspaces cannot share a
// network namespace's port). The dependant of the network namespace is
// created on the base's new container.
func TestRefreshRecreatesDependenciesFirst(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newEngineFixture(t, ctx)
	sel := docker.Selector{"molecule.org-id": "deps-" + f.workspace, "molecule.platform.managed": "true"}
	image := f.repo + "@" + f.v1
	base := f.workspace + "-zz-base"
	f.managed(t, ctx, sel, base, image, true, nil)
	dependants := map[string]func(*container.HostConfig){
		f.workspace + "-aa-volumes": func(h *container.HostConfig) { h.Binds = nil; h.VolumesFrom = []string{base} },
		f.workspace + "-ab-link":    func(h *container.HostConfig) { h.Links = []string{base + ":base"} },
		f.workspace + "-ac-net":     func(h *container.HostConfig) { h.NetworkMode = container.NetworkMode("container:" + base) },
	}
	for name, host := range dependants {
		f.managed(t, ctx, sel, name, image, name != f.workspace+"-ac-net", host)
	}
	f.managed(t, ctx, sel, f.workspace+"-mm-solo", image, true, nil)
	// Already on v2, but in the base's namespace: it must follow the base.
	if _, err := f.engine.Pull(ctx, f.repo+"@"+f.v2, docker.PullOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	current := f.workspace + "-ad-net-current"
	dependants[current] = nil
	f.managed(t, ctx, sel, current, f.repo+"@"+f.v2, false, func(h *container.HostConfig) { h.NetworkMode = container.NetworkMode("container:" + base) })

	x, err := New(Config{Engine: f.engine, Selector: sel, MaxParallel: 4, Logger: f.logger})
	if err != nil {
		t.Fatal(err)
	}
	rec := &stepRecorder{t: t}
	res, err := x.Refresh(ctx, &tenantagentv1.RefreshRuntimeImage{CommandId: "c-deps", Runtime: "codex", ImageRepository: f.repo, ImageDigest: f.v2}, rec.hooks())
	if err != nil {
		t.Fatal(err)
	}
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("refresh: %v (%s), want SUCCEEDED", res.GetOutcome(), res.GetError())
	}
	baseDone := rec.at(base, docker.StepDone)
	for name := range dependants {
		if i := rec.at(name, docker.StepCreate); i < baseDone {
			t.Errorf("%s's recreate began (step %d) before %s's was done (step %d)", name, i, base, baseDone)
		}
	}
	if got := outcomesByName(res)[current]; got != recreated {
		t.Errorf("%s, on v2 already in the base's namespace: %v, want recreated on the new base", current, got)
	}
	newBase := f.look(t, ctx, base).id
	for _, name := range []string{f.workspace + "-ac-net", current} {
		in, err := f.cli.ContainerInspect(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if mode := string(in.HostConfig.NetworkMode); in.Config.Image != f.repo+"@"+f.v2 || mode != "container:"+newBase && mode != "container:"+base {
			t.Errorf("%s: %s in %s, want on v2 in the new %s's namespace", name, in.Config.Image, mode, base)
		}
	}
}

// Without a healthcheck, a container gives up its slot once it runs and
// only its stability window is left: with two slots, the fourth
// container's recreate begins while the windows of the two before it run.
// The canary waits out its whole window first; one slot is one at a time.
func TestRefreshOverlapsStabilityWindows(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newEngineFixture(t, ctx)
	repo, digests := f.images(t, registrytest.Image{Version: "v1", NoHealthcheck: true}, registrytest.Image{Version: "v2", NoHealthcheck: true})
	v1, v2 := digests[0], digests[1]
	if _, err := f.engine.Pull(ctx, repo+"@"+v1, docker.PullOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	sel := docker.Selector{"molecule.org-id": "windows-" + f.workspace, "molecule.platform.managed": "true"}
	names := []string{f.workspace + "-a", f.workspace + "-b", f.workspace + "-c", f.workspace + "-d"}
	for _, n := range names {
		f.managed(t, ctx, sel, n, repo+"@"+v1, true, nil)
	}
	x, err := New(Config{Engine: f.engine, Selector: sel, MaxParallel: 2, StabilityWindow: 2 * time.Second, Logger: f.logger})
	if err != nil {
		t.Fatal(err)
	}
	refresh := func(id, digest string, parallel uint32) *stepRecorder {
		rec := &stepRecorder{t: t}
		res, err := x.Refresh(ctx, &tenantagentv1.RefreshRuntimeImage{CommandId: id, Runtime: "codex", ImageRepository: repo, ImageDigest: digest,
			Options: &tenantagentv1.RefreshOptions{MaxParallelContainers: parallel}}, rec.hooks())
		if err != nil || res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
			t.Fatalf("refresh %s: %v, %v (%s)", id, err, res.GetOutcome(), res.GetError())
		}
		if n := rec.maxInFlight(); n > int(max(parallel, 2)) {
			t.Errorf("refresh %s: %d containers in flight at once", id, n)
		}
		if rec.at(names[1], docker.StepCreate) < rec.at(names[0], docker.StepDone) {
			t.Errorf("refresh %s: the canary's window was not waited out before the rest began", id)
		}
		return rec
	}
	rec := refresh("c-windows", v2, 0)
	for _, n := range names[1:3] {
		if rec.at(names[3], docker.StepCreate) > rec.at(n, docker.StepDone) {
			t.Errorf("%s began after %s's stability window ended; want the windows to overlap", names[3], n)
		}
	}
	rec = refresh("c-one", v1, 1)
	for i := 2; i < len(names); i++ {
		if rec.at(names[i], docker.StepCreate) < rec.at(names[i-1], docker.StepDone) {
			t.Errorf("one at a time: %s began before %s was done", names[i], names[i-1])
		}
	}
}
