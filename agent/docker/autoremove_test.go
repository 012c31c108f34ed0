package docker_test

import (
	"context"
	"errors"
	"maps"
	"testing"

	"github.com/docker/docker/api/types/container"

	"github.com/molecule-ai/tenant-agent/agent/docker"
)

// startAutoRemove runs the workspace on v1 with AutoRemove (docker run
// --rm), which the Engine removes when it stops.
func (f *fixture) startAutoRemove() docker.Container {
	t, ctx := f.t, f.ctx()
	if _, err := f.engine.Pull(ctx, f.repo+"@"+f.v1, docker.PullOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	f.hostPort = "0"
	cfg := &container.Config{Image: f.repo + "@" + f.v1, Labels: maps.Clone(f.sel), Env: []string{"SECRET_TOKEN=s3cr3t"}}
	created, err := f.cli.ContainerCreate(ctx, cfg, &container.HostConfig{AutoRemove: true}, nil, nil, f.name)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	return f.container()
}

// An AutoRemove container that fails the health gate is back under its
// name, running v1 with its config and its anonymous volume: created again
// from its own inspect output, because its stop removed it.
func TestAutoRemoveRollsBack(t *testing.T) {
	f := newFixture(t)
	old := f.startAutoRemove()
	cache := mountNamed(old.Inspect, "/cache")
	res, _ := f.engine.Recreate(f.ctx(), old, f.target(f.bad), f.opts("t1"), noJournal, noReport)
	if res.Result != docker.ResultRolledBack {
		t.Fatalf("outcome %v (%s), want ROLLED_BACK", res.Result, res.ErrorText())
	}
	now := f.container()
	in := now.Inspect
	if now.Name() != f.name || !in.State.Running || now.DigestFor(f.repo) != f.v1 || !in.HostConfig.AutoRemove || res.NewID != in.ID {
		t.Errorf("after rollback: name %s running %v digest %s autoremove %v id %s (result says %s)", now.Name(), in.State.Running, now.DigestFor(f.repo), in.HostConfig.AutoRemove, in.ID, res.NewID)
	}
	if got := mountNamed(in, "/cache"); got != cache {
		t.Errorf("anonymous volume %q, was %q", got, cache)
	}
	if _, err := f.cli.VolumeInspect(context.Background(), cache); err != nil {
		t.Errorf("anonymous volume gone: %v", err)
	}
}

// A crash right after the stop of an AutoRemove container: the old one
// is gone, so recovery keeps the replacement under the name, running,
// and says so; nothing is lost.
func TestAutoRemoveCrashAfterStopKeepsReplacement(t *testing.T) {
	f := newFixture(t)
	old := f.startAutoRemove()
	var last docker.RecreateState
	journal := func(s docker.RecreateState) error {
		last = s
		if s.Step == docker.StepRenameNew {
			return docker.ErrCrash
		}
		return nil
	}
	if _, err := f.engine.Recreate(f.ctx(), old, f.target(f.v2), f.opts("t1"), journal, noReport); !errors.Is(err, docker.ErrCrash) {
		t.Fatalf("crash did not return ErrCrash but %v", err)
	}
	res := f.engine.Recover(f.ctx(), last, f.sel)
	if res.Result != docker.ResultFailed || res.NewDigest != f.v2 {
		t.Fatalf("recover: %v", res)
	}
	now := f.container()
	if now.Name() != f.name || !now.Inspect.State.Running || now.DigestFor(f.repo) != f.v2 || mountNamed(now.Inspect, "/cache") != mountNamed(old.Inspect, "/cache") {
		t.Errorf("after recover: name %s running %v digest %s", now.Name(), now.Inspect.State.Running, now.DigestFor(f.repo))
	}
}
