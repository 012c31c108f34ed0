package executor

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

func TestSummarizeFromTypedOutcomes(t *testing.T) {
	const (
		recreated = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED
		current   = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ALREADY_CURRENT
		rolled    = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ROLLED_BACK
		failed    = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_FAILED
		skipped   = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_NOT_ATTEMPTED
		creating  = tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING
	)
	type c = tenantagentv1.ContainerResult
	alone := &c{Outcome: skipped, FailedPhase: creating, Error: "create replacement: bad config"}
	for _, tc := range []struct {
		name       string
		containers []*c
		want       tenantagentv1.CommandOutcome
	}{
		{"all moved", []*c{{Outcome: recreated}, {Outcome: current}}, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED},
		{"one moved, one failed alone", []*c{{Outcome: recreated}, alone}, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_PARTIAL},
		{"one moved, one rolled back", []*c{{Outcome: recreated}, {Outcome: rolled}, {Outcome: skipped}}, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_PARTIAL},
		{"none moved, one failed alone", []*c{{Outcome: current}, alone}, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED},
		{"none moved, rolled back", []*c{alone, {Outcome: rolled}, {Outcome: skipped, Error: "not attempted"}}, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_ROLLED_BACK},
		{"none moved, rollback failed", []*c{{Outcome: failed}}, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_ROLLED_BACK},
		// An error text never decides: a skipped container is skipped
		// whatever its message says.
		{"only skipped", []*c{{Outcome: skipped, Error: "some other words"}}, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED},
	} {
		if got := summarize(&tenantagentv1.CommandResult{Containers: tc.containers}).GetOutcome(); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Two workspaces; one cannot be recreated for its own reason, found
// before anything stops (here its temporary name is held by a container
// the agent does not manage). The other still moves, the first is left as
// it was, and the command reports PARTIAL.
func TestRefreshGoesOnAfterOneContainerFailsAlone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newEngineFixture(t, ctx)
	cli, engine, logger, repo, v1, v2, ws := f.cli, f.engine, f.logger, f.repo, f.v1, f.v2, f.workspace
	sel := docker.Selector{"molecule.org-id": "partial-" + ws, "molecule.platform.managed": "true"}
	run := func(name string) string {
		c, err := cli.ContainerCreate(ctx, &container.Config{Image: repo + "@" + v1, Labels: sel}, nil, nil, nil, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// By name too: a recreated container has a new ID.
			for _, ref := range []string{c.ID, name} {
				registrytest.RemoveContainer(cli, ref)
			}
		})
		if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		return c.ID
	}
	good, bad := run(ws+"-a"), run(ws+"-b")
	// The temporary name of b's replacement is held by a container the
	// agent does not manage: b's own reason, found before anything stops.
	const id = "c-partial1"
	holder, err := cli.ContainerCreate(ctx, &container.Config{Image: repo + "@" + v1}, nil, nil, nil, ws+"-b-ta-new-"+shortCommand(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { registrytest.RemoveContainer(cli, holder.ID) })

	x, err := New(Config{Engine: engine, Selector: sel, StabilityWindow: 300 * time.Millisecond, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	hooks := Hooks{Step: func(docker.RecreateState) error { return nil }, Progress: func(*Progress) {}}
	res, err := x.Refresh(ctx, &tenantagentv1.RefreshRuntimeImage{CommandId: id, Runtime: "codex", ImageRepository: repo, ImageDigest: v2}, hooks)
	if err != nil {
		t.Fatal(err)
	}
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_PARTIAL || !strings.Contains(res.GetError(), ws+"-b") {
		t.Fatalf("refresh: %v (%s), want PARTIAL naming %s-b", res.GetOutcome(), res.GetError(), ws)
	}
	outcomes := map[string]tenantagentv1.ContainerOutcome{}
	for _, c := range res.GetContainers() {
		outcomes[c.GetName()] = c.GetOutcome()
	}
	if outcomes[ws+"-a"] != tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED || outcomes[ws+"-b"] != tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_NOT_ATTEMPTED {
		t.Errorf("container outcomes %v", outcomes)
	}
	if in, err := cli.ContainerInspect(ctx, bad); err != nil || !in.State.Running || in.Config.Image != repo+"@"+v1 {
		t.Errorf("the container that failed alone: %v; want it untouched, running v1", err)
	}
	if _, err := cli.ContainerInspect(ctx, good); err == nil {
		t.Errorf("the old container of the one that moved is still there")
	}
}
