package executor

import (
	"context"
	"slices"
	"testing"

	"github.com/docker/docker/api/types/container"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

func fakeContainer(name, id string, host container.HostConfig) docker.Container {
	return docker.Container{Inspect: container.InspectResponse{ContainerJSONBase: &container.ContainerJSONBase{ID: id, Name: "/" + name, HostConfig: &host}}}
}

// Dependencies come first, whichever way they are named (a name, an ID
// prefix, the Engine's "/x:/dependant/alias" link form); one outside the
// set is left alone; otherwise the given order stands.
func TestOrderPutsDependenciesFirst(t *testing.T) {
	base := fakeContainer("zz-base", "0123456789abcdef0123", container.HostConfig{})
	todo := []docker.Container{
		fakeContainer("aa-net", "a1", container.HostConfig{NetworkMode: "container:0123456789abcdef"}),
		fakeContainer("ab-link", "a2", container.HostConfig{Links: []string{"/zz-base:/ab-link/base"}}),
		fakeContainer("ac-outside", "a3", container.HostConfig{VolumesFrom: []string{"elsewhere:ro"}}),
		fakeContainer("ad-chain", "a4", container.HostConfig{VolumesFrom: []string{"aa-net:ro"}}),
		base,
	}
	cs, deps := order(todo)
	if got, want := names(cs), []string{"ac-outside", "zz-base", "aa-net", "ab-link", "ad-chain"}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	if want := [][]int{nil, nil, {1}, {1}, {2}}; !slices.EqualFunc(deps, want, slices.Equal) {
		t.Errorf("dependencies %v, want %v", deps, want)
	}
}

// A command may lower the agent's parallelism, never raise it.
func TestParallelOnlyLowered(t *testing.T) {
	x := &Executor{cfg: Config{MaxParallel: 4}}
	for asked, want := range map[uint32]int{0: 4, 1: 1, 2: 2, 4: 4, 8: 4} {
		cmd := &tenantagentv1.RefreshRuntimeImage{Options: &tenantagentv1.RefreshOptions{MaxParallelContainers: asked}}
		if got := x.parallel(cmd); got != want {
			t.Errorf("command asks %d: %d at once, want %d", asked, got, want)
		}
	}
}

// A container already on the digest that shares the namespace of one
// that moves (directly or through another) moves too; others stay.
func TestWithNamespaceSharers(t *testing.T) {
	x := fakeContainer("x", "0123456789abcdef0123", container.HostConfig{})
	joined := fakeContainer("joined", "j1", container.HostConfig{NetworkMode: "container:x"})
	chained := fakeContainer("chained", "c1", container.HostConfig{NetworkMode: "container:joined"})
	alone := fakeContainer("alone", "a1", container.HostConfig{VolumesFrom: []string{"x"}})
	todo, current := withNamespaceSharers([]docker.Container{x}, []docker.Container{chained, alone, joined})
	if got := names(todo); !slices.Equal(got, []string{"x", "joined", "chained"}) {
		t.Errorf("todo %v", got)
	}
	if got := names(current); !slices.Equal(got, []string{"alone"}) {
		t.Errorf("current %v", got)
	}
}

func names(cs []docker.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name())
	}
	return out
}

// Swaps take turns; a recreate that waited for its turn while the refresh
// halted is refused it (its old container is left untouched), and the
// refusal does not hold the turn.
func TestTurnRefusedOnceHalted(t *testing.T) {
	s := &schedule{ctx: context.Background(), turns: make(chan struct{}, 1)}
	end, ok := s.turn()
	if !ok {
		t.Fatal("first turn refused before any halt")
	}
	waited := make(chan bool)
	go func() {
		_, ok := s.turn() // waits: the first turn is held
		waited <- ok
	}()
	s.halt()
	end()
	if ok := <-waited; ok {
		t.Error("a turn waited for through a halt was given")
	}
	if len(s.turns) != 0 {
		t.Errorf("%d turns held after the refusal; want none", len(s.turns))
	}
}
