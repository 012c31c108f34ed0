package executor

import (
	"context"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// Health reports read the watched view: a container killed behind the
// agent's back shows in the next report with no request to the Engine.
func TestInventoryReadsTheWatchedState(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newEngineFixture(t, ctx)
	requests := &docker.RequestCounter{}
	engine, err := docker.NewWithOptions(docker.Options{Requests: requests, Logger: f.logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { engine.Close() })
	sel := docker.Selector{"molecule.org-id": "inventory-" + f.workspace, "molecule.platform.managed": "true"}
	name := f.workspace + "-a"
	f.managed(t, ctx, sel, name, f.repo+"@"+f.v1, true, nil)
	state := engine.Watch(ctx, sel, docker.WatchOptions{})
	x, err := New(Config{Engine: engine, Selector: sel, State: state, Logger: f.logger})
	if err != nil {
		t.Fatal(err)
	}
	report := func(want tenantagentv1.ContainerState) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, ok := state.Snapshot(); ok {
				rts, err := x.Inventory(ctx)
				if err == nil && len(rts) == 1 && len(rts[0].GetContainers()) == 1 && rts[0].GetContainers()[0].GetState() == want {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("the health report never said %s %v", name, want)
			}
		}
	}
	report(tenantagentv1.ContainerState_CONTAINER_STATE_RUNNING)
	requests.Reset()
	if err := f.cli.ContainerKill(ctx, name, "SIGKILL"); err != nil {
		t.Fatal(err)
	}
	report(tenantagentv1.ContainerState_CONTAINER_STATE_EXITED)
	if n := requests.Counts(); len(n) != 0 {
		t.Errorf("reporting a kill cost Engine requests %v, want none", n)
	}
}
