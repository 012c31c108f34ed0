package docker_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// other starts a container on v1 that is not the fixture's workspace,
// under name with labels, and removes it (with its volumes) at the end.
func (f *fixture) other(name string, labels map[string]string, running bool) string {
	t, ctx := f.t, f.ctx()
	t.Helper()
	created, err := f.cli.ContainerCreate(ctx, &container.Config{Image: f.repo + "@" + f.v1, Labels: labels}, nil, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		registrytest.RemoveContainer(f.cli, created.ID)
	})
	if running {
		if err := f.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return created.ID
}

// untouched fails unless the container id still exists under name, in the
// same run state.
func (f *fixture) untouched(id, name string, running bool) {
	f.t.Helper()
	in, err := f.cli.ContainerInspect(f.ctx(), id)
	if err != nil {
		f.t.Fatalf("container %s: %v", name, err)
	}
	if in.Name != "/"+name || in.State.Running != running {
		f.t.Errorf("container %s: now named %s, running %v (want %v)", id[:12], in.Name, in.State.Running, running)
	}
}

func tenantB(f *fixture) map[string]string {
	return map[string]string{"molecule.org-id": "tenant-b-" + f.name, "molecule.platform.managed": "true"}
}

// A container of another command under the temporary name, even one with
// this tenant's labels, is not removed: the recreate fails and touches
// nothing.
func TestRecreateRefusesTempNameOfAnotherCommand(t *testing.T) {
	f := newFixture(t)
	f.start(true)
	old := f.container()
	labels := map[string]string{docker.CommandLabel: "c-other"}
	for k, v := range f.sel {
		labels[k] = v
	}
	temp := f.name + "-ta-new-t1"
	id := f.other(temp, labels, false)
	res, _ := f.engine.Recreate(f.ctx(), old, f.target(f.v2), f.opts("t1"), noJournal, noReport)
	if res.Result != docker.ResultNotAttempted ||
		!strings.Contains(res.ErrorText(), `name "`+temp+`" is held by container `+id[:12]+", which this command did not create; nothing was changed") {
		t.Fatalf("outcome %v: %s", res.Result, res.ErrorText())
	}
	f.untouched(id, temp, false)
	f.untouched(old.Inspect.ID, f.name, true)
}

// A leftover of the same command (same command-ID label) is cleared and
// the recreate goes on.
func TestRecreateClearsItsOwnLeftover(t *testing.T) {
	f := newFixture(t)
	f.start(true)
	old := f.container()
	labels := map[string]string{docker.CommandLabel: "c-t1"}
	for k, v := range f.sel {
		labels[k] = v
	}
	id := f.other(f.name+"-ta-new-t1", labels, false)
	// The agent removes a leftover replacement but never volumes (a real
	// one mounts the workspace's own); this stand-in has a volume of its own.
	if in, err := f.cli.ContainerInspect(f.ctx(), id); err == nil {
		t.Cleanup(func() {
			for _, m := range in.Mounts {
				f.cli.VolumeRemove(context.Background(), m.Name, true)
			}
		})
	}
	res, _ := f.engine.Recreate(f.ctx(), old, f.target(f.v2), f.opts("t1"), noJournal, noReport)
	if res.Result != docker.ResultRecreated {
		t.Fatalf("outcome %v: %s", res.Result, res.ErrorText())
	}
	if _, err := f.cli.ContainerInspect(f.ctx(), id); err == nil {
		t.Errorf("the command's own leftover was not removed")
	}
}

// Recover after a crash before the create: whatever holds the temporary
// name then (another tenant's container, an unlabelled one) is left
// alone, and the workspace is rolled back.
func TestRecoverLeavesForeignTempNameAlone(t *testing.T) {
	for name, labels := range map[string]func(*fixture) map[string]string{
		"another tenant": tenantB,
		"unlabelled":     func(*fixture) map[string]string { return nil },
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			f.start(true)
			old := f.container()
			var last docker.RecreateState
			crash := func(s docker.RecreateState) error { last = s; return docker.ErrCrash }
			if _, err := f.engine.Recreate(f.ctx(), old, f.target(f.v2), f.opts("t1"), crash, noReport); !errors.Is(err, docker.ErrCrash) {
				t.Fatalf("crash did not return ErrCrash but %v", err)
			}
			id := f.other(last.TempName, labels(f), true)
			res := f.engine.Recover(f.ctx(), last, f.sel)
			if res.Result != docker.ResultRolledBack {
				t.Fatalf("recover: %v (%s)", res.Result, res.ErrorText())
			}
			f.untouched(id, last.TempName, true)
			f.untouched(old.Inspect.ID, f.name, true)
		})
	}
}

// IDs from the journal are re-checked before anything is removed: a
// replacement or old container ID that names another tenant's container
// (say, a journal edited by hand) leaves that container alone.
func TestRecoverChecksJournaledIDs(t *testing.T) {
	f := newFixture(t)
	f.start(true)
	old := f.container()
	foreign := f.other(f.name+"-b", tenantB(f), true)

	// A rollback whose replacement ID is foreign: refused, old restored.
	var last docker.RecreateState
	crash := func(s docker.RecreateState) error {
		last = s
		if s.Step == docker.StepStop {
			return docker.ErrCrash
		}
		return nil
	}
	if _, err := f.engine.Recreate(f.ctx(), old, f.target(f.v2), f.opts("t1"), crash, noReport); !errors.Is(err, docker.ErrCrash) {
		t.Fatalf("crash did not return ErrCrash but %v", err)
	}
	ours := last.NewID
	last.NewID = foreign
	res := f.engine.Recover(f.ctx(), last, f.sel)
	if res.Result != docker.ResultFailed || !strings.Contains(res.ErrorText(), "does not carry this tenant's labels") {
		t.Fatalf("recover with a foreign replacement ID: %v (%s)", res.Result, res.ErrorText())
	}
	f.untouched(foreign, f.name+"-b", true)
	f.untouched(old.Inspect.ID, f.name, true)
	f.cli.ContainerRemove(f.ctx(), ours, container.RemoveOptions{Force: true})

	// Past the health gate, the old container ID is foreign: not removed.
	last.NewID, last.OldID, last.Step = ours, foreign, docker.StepRemoveOld
	if res := f.engine.Recover(f.ctx(), last, f.sel); res.Result != docker.ResultRecreated {
		t.Fatalf("recover past the gate: %v", res)
	}
	f.untouched(foreign, f.name+"-b", true)
}
