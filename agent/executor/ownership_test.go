package executor

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// A refresh whose temporary name is already held by a container the agent
// does not manage (another tenant's, or one without labels) fails with an
// error that says so, and leaves that container and the workspace exactly
// as they were.
func TestRefreshRefusesTempNameHeldByAnother(t *testing.T) {
	for name, labels := range map[string]func(ws string) map[string]string{
		"another tenant's container": func(ws string) map[string]string {
			return map[string]string{"molecule.org-id": "tenant-b-" + ws, "molecule.platform.managed": "true"}
		},
		"an unlabelled container": func(string) map[string]string { return nil },
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			f := newEngineFixture(t, ctx)
			cli, engine, logger, repo, v1, v2, ws := f.cli, f.engine, f.logger, f.repo, f.v1, f.v2, f.workspace
			sel := docker.Selector{"molecule.org-id": "own-" + ws, "molecule.platform.managed": "true"}
			run := func(name string, labels map[string]string) string {
				c, err := cli.ContainerCreate(ctx, &container.Config{Image: repo + "@" + v1, Labels: labels}, nil, nil, nil, name)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					registrytest.RemoveContainer(cli, c.ID)
				})
				if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
					t.Fatal(err)
				}
				return c.ID
			}
			ours := run(ws, sel)
			const id = "c-ab12cd34ef"
			temp := ws + "-ta-new-" + shortCommand(id)
			theirs := run(temp, labels(ws))

			x, err := New(Config{Engine: engine, Selector: sel, StabilityWindow: time.Second, Logger: logger})
			if err != nil {
				t.Fatal(err)
			}
			hooks := Hooks{Step: func(docker.RecreateState) error { return nil }, Progress: func(*Progress) {}}
			res, err := x.Refresh(ctx, &tenantagentv1.RefreshRuntimeImage{CommandId: id, Runtime: "codex", ImageRepository: repo, ImageDigest: v2}, hooks)
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf(`name %q is held by container %s, which this agent does not manage; nothing was changed`, temp, theirs[:12])
			if res.GetOutcome() == tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED || !strings.Contains(res.GetError(), want) {
				t.Fatalf("refresh: %v, error %q; want a failure saying %q", res.GetOutcome(), res.GetError(), want)
			}
			for _, c := range []struct{ id, name string }{{theirs, temp}, {ours, ws}} {
				in, err := cli.ContainerInspect(ctx, c.id)
				if err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				if in.Name != "/"+c.name || !in.State.Running || in.Config.Image != repo+"@"+v1 {
					t.Errorf("%s: name %s, running %v, image %s; want it untouched", c.name, in.Name, in.State.Running, in.Config.Image)
				}
			}
		})
	}
}
