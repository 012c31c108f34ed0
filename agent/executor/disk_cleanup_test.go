package executor

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

// runtimeFixture is a registry holding versions of the codex runtime's
// image and one managed container of it, running.
type runtimeFixture struct {
	t       *testing.T
	ctx     context.Context
	cli     *client.Client
	engine  *docker.Engine
	reg     *registrytest.Registry
	repo    string
	digest  map[string]string // by version
	sel     docker.Selector
	logs    *testlog.Buffer
	managed string // the managed container's name
}

// newRuntimeFixture pushes the versions, each built a day after the one
// before, except those in builtLast, built after all of them.
func newRuntimeFixture(t *testing.T, versions []string, builtLast ...string) *runtimeFixture {
	f := &runtimeFixture{t: t, cli: registrytest.Docker(t), reg: registrytest.StartRegistry(t), digest: map[string]string{}, logs: &testlog.Buffer{}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	f.ctx = ctx
	var err error
	if f.engine, err = docker.New("", f.logs.Logger(t, "docker")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	f.managed = fmt.Sprintf("ws-%x", b)
	for i, v := range versions {
		created := time.Date(2026, 1, 1+i, 0, 0, 0, 0, time.UTC)
		if slices.Contains(builtLast, v) {
			created = created.AddDate(1, 0, 0)
		}
		// Images of this test's own: the same build elsewhere would share
		// the image ID, and cleanup leaves an image another repository names.
		img := registrytest.WorkspaceImage(t, registrytest.Image{Version: v + "-" + f.managed, Created: created})
		f.repo, f.digest[v] = f.reg.Push(t, "molecule-ai/workspace-template-codex", img)
	}
	t.Cleanup(func() { registrytest.RemoveImages(t, f.cli, f.repo) })
	f.sel = docker.Selector{"molecule.org-id": "test-" + f.managed, "molecule.platform.managed": "true"}
	return f
}

// run creates a container on version (pulled first), started or not.
func (f *runtimeFixture) run(name, version string, labels map[string]string, start bool) string {
	f.t.Helper()
	if _, err := f.engine.Pull(f.ctx, f.ref(version), docker.PullOptions{}, nil); err != nil {
		f.t.Fatal(err)
	}
	c, err := f.cli.ContainerCreate(f.ctx, &container.Config{Image: f.ref(version), Labels: labels}, nil, nil, nil, name)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() {
		// The managed one was replaced under the same name.
		for _, id := range []string{c.ID, name} {
			registrytest.RemoveContainer(f.cli, id)
		}
	})
	if start {
		if err := f.cli.ContainerStart(f.ctx, c.ID, container.StartOptions{}); err != nil {
			f.t.Fatal(err)
		}
	}
	return c.ID
}

func (f *runtimeFixture) ref(version string) string { return f.repo + "@" + f.digest[version] }

func (f *runtimeFixture) present(version string) bool {
	_, err := f.cli.ImageInspect(f.ctx, f.ref(version))
	return err == nil
}

func (f *runtimeFixture) executor(cfg Config) *Executor {
	f.t.Helper()
	cfg.Engine, cfg.Selector, cfg.StabilityWindow, cfg.Logger = f.engine, f.sel, time.Second, f.logs.Logger(f.t, "executor")
	x, err := New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return x
}

// recorder collects a command's progress and fails the test if a
// recreate step is taken when none may be.
type recorder struct {
	mu     sync.Mutex
	phases []tenantagentv1.CommandPhase
	msgs   []string
	steps  int
}

func (r *recorder) hooks() Hooks {
	return Hooks{
		Step: func(docker.RecreateState) error { r.mu.Lock(); r.steps++; r.mu.Unlock(); return nil },
		Progress: func(p *Progress) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.phases, r.msgs = append(r.phases, p.GetPhase()), append(r.msgs, p.GetMessage())
		},
	}
}

// With --min-free-disk far above what this machine has, a refresh and a
// prefetch are refused before anything is touched: no recreate step, the
// container as it was, the image not pulled, and an error that names the
// free space, the image's size and the flag.
func TestPullRefusedWhenDiskWouldRunShort(t *testing.T) {
	f := newRuntimeFixture(t, []string{"v1", "v2"})
	id := f.run(f.managed, "v1", f.sel, true)
	x := f.executor(Config{MinFreeDisk: 1 << 60})
	var rec recorder
	res, err := x.Refresh(f.ctx, &tenantagentv1.RefreshRuntimeImage{CommandId: "c-disk", Runtime: "codex", ImageRepository: f.repo, ImageDigest: f.digest["v2"]}, rec.hooks())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("refresh: %s", res.GetError())
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED || res.GetFailedPhase() != tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING {
		t.Fatalf("refresh: %v in %v; want FAILED while pulling", res.GetOutcome(), res.GetFailedPhase())
	}
	for _, want := range []string{"refused", "free", "the image is", "(compressed)", "--min-free-disk asks for 1.0 EiB", "nothing was changed"} {
		if !strings.Contains(res.GetError(), want) {
			t.Errorf("error %q does not say %q", res.GetError(), want)
		}
	}
	if strings.Contains(res.GetError(), "the image is 0 B") {
		t.Errorf("the image's size was not read from its manifest: %s", res.GetError())
	}
	if rec.steps != 0 || slices.Contains(rec.phases, tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING) {
		t.Errorf("%d recreate steps taken, phases %v; want none and no pull", rec.steps, rec.phases)
	}
	in, err := f.cli.ContainerInspect(f.ctx, f.managed)
	if err != nil || in.ID != id || !in.State.Running || in.Config.Image != f.ref("v1") {
		t.Errorf("container after the refusal: %v, %+v; want it untouched", err, in.State)
	}
	pre := x.Prefetch(f.ctx, &tenantagentv1.PrefetchRuntimeImage{CommandId: "c-disk2", Runtime: "codex", ImageRepository: f.repo, ImageDigest: f.digest["v2"]}, rec.hooks())
	if pre.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED || !strings.Contains(pre.GetError(), "--min-free-disk") {
		t.Errorf("prefetch: %v %q; want refused", pre.GetOutcome(), pre.GetError())
	}
	if f.present("v2") {
		t.Errorf("the image was pulled")
	}
}

// v1 -> v2 -> v3 with one image kept: v1 is removed, v2 (the rollback
// target, though v1 was built later) and v3 stay, v0 stays because a
// stopped container nobody manages uses it, and another repository's
// image is never touched.
func TestRefreshRemovesUnusedImages(t *testing.T) {
	f := newRuntimeFixture(t, []string{"v0", "v1", "v2", "v3"}, "v1")
	otherRepo, other := f.reg.Push(t, "molecule-ai/workspace-template-other", registrytest.WorkspaceImage(t, registrytest.Image{Version: "other-" + f.managed}))
	t.Cleanup(func() { registrytest.RemoveImages(t, f.cli, otherRepo) })
	if _, err := f.engine.Pull(f.ctx, otherRepo+"@"+other, docker.PullOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	f.run(f.managed+"-stopped", "v0", nil, false)
	f.run(f.managed, "v1", f.sel, true)
	x := f.executor(Config{CleanupImages: true, KeepImages: 1})

	refresh := func(version string) (*tenantagentv1.CommandResult, *recorder) {
		var rec recorder
		res, err := x.Refresh(f.ctx, &tenantagentv1.RefreshRuntimeImage{CommandId: "c-" + version, Runtime: "codex", ImageRepository: f.repo, ImageDigest: f.digest[version]}, rec.hooks())
		if err != nil {
			t.Fatal(err)
		}
		if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
			t.Fatalf("refresh to %s: %v %s", version, res.GetOutcome(), res.GetError())
		}
		return res, &rec
	}
	res, _ := refresh("v2")
	if len(res.GetRemovedImages()) != 0 {
		t.Errorf("refresh to v2 removed %v; want nothing (v1 is the rollback target, v0 in use)", res.GetRemovedImages())
	}
	res, rec := refresh("v3")
	if want := []string{f.ref("v1")}; !slices.Equal(res.GetRemovedImages(), want) || res.GetReclaimedBytes() == 0 {
		t.Errorf("refresh to v3 removed %v (%d bytes); want %v and some bytes", res.GetRemovedImages(), res.GetReclaimedBytes(), want)
	}
	if !slices.Contains(rec.phases, tenantagentv1.CommandPhase_COMMAND_PHASE_CLEANING_UP) || !strings.Contains(strings.Join(rec.msgs, "\n"), "removed 1 unused image(s)") {
		t.Errorf("progress %v %q; want CLEANING_UP saying what was removed", rec.phases, rec.msgs)
	}
	for version, want := range map[string]bool{"v0": true, "v1": false, "v2": true, "v3": true} {
		if got := f.present(version); got != want {
			t.Errorf("%s present: %v, want %v", version, got, want)
		}
	}
	if _, err := f.cli.ImageInspect(f.ctx, otherRepo+"@"+other); err != nil {
		t.Errorf("another repository's image: %v", err)
	}
}

// The executor asks for credentials at every pull: two prefetches from a
// registry whose password rotates between them (a credential helper
// returning the current one) both work, and without credentials the
// prefetch fails saying the registry refused them.
func TestPullsResolveCredentialsEachTime(t *testing.T) {
	f := newRuntimeFixture(t, []string{"v1", "v2"})
	f.run(f.managed, "v1", f.sel, false) // pulled before the registry wants credentials
	pwFile, calls := registrytest.CredentialHelper(t, "test", "robot", "first")
	f.reg.RequireBasicAuth("robot", registrytest.ReadPassword(pwFile))
	config := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(config, []byte(`{"credsStore": "test"}`), 0o600)
	creds, err := docker.NewCredentials(config, f.logs.Logger(t, "credentials"))
	if err != nil {
		t.Fatal(err)
	}
	prefetch := func(x *Executor, version string) *tenantagentv1.CommandResult {
		var rec recorder
		return x.Prefetch(f.ctx, &tenantagentv1.PrefetchRuntimeImage{CommandId: "c-" + version, Runtime: "codex", ImageRepository: f.repo, ImageDigest: f.digest[version]}, rec.hooks())
	}
	anonymous := f.executor(Config{})
	if res := prefetch(anonymous, "v2"); res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED || !strings.Contains(res.GetError(), "refused the credentials") {
		t.Fatalf("without credentials: %v %q; want a failure saying the registry refused them", res.GetOutcome(), res.GetError())
	}
	x := f.executor(Config{Credentials: creds.For})
	if res := prefetch(x, "v2"); res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("with the first password: %v %s", res.GetOutcome(), res.GetError())
	}
	f.cli.ImageRemove(f.ctx, f.ref("v2"), image.RemoveOptions{})
	os.WriteFile(pwFile, []byte("second"), 0o600) // rotated: the registry takes only this one now
	if res := prefetch(x, "v2"); res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("after the rotation: %v %s", res.GetOutcome(), res.GetError())
	}
	if b, _ := os.ReadFile(calls); strings.Count(string(b), f.reg.Host) < 2 {
		t.Errorf("the helper was asked %q; want at every pull", b)
	}
}
