package docker_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// fixture is a workspace container on v1 with everything a real one has.
type fixture struct {
	t        *testing.T
	cli      *client.Client
	engine   *docker.Engine
	reg      *registrytest.Registry
	repo     string
	v1, v2   string // digests
	bad      string // digest of an image whose healthcheck fails
	name     string
	hostPort string
	volume   string
	bindDir  string
	nets     []string
	sel      docker.Selector
}

func randomSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}

func newFixture(t *testing.T) *fixture {
	cli := registrytest.Docker(t)
	engine, err := docker.New("", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, cli: cli, engine: engine, reg: registrytest.StartRegistry(t), name: "ws-" + randomSuffix()}
	f.repo, f.v1 = f.reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v1"}))
	_, f.v2 = f.reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v2", Padding: 3 << 20}))
	_, f.bad = f.reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "bad", Unhealthy: true}))
	f.sel = docker.Selector{"molecule.org-id": "test-" + f.name, "molecule.platform.managed": "true"}
	t.Cleanup(f.cleanup)
	return f
}

func (f *fixture) ctx() context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	f.t.Cleanup(cancel)
	return c
}

// start runs the v1 container: a named volume, the image's anonymous
// volume, a bind mount, a published port, two networks with aliases, env
// set at run time, a custom restart policy and labels.
func (f *fixture) start(running bool) {
	t, ctx := f.t, f.ctx()
	if _, err := f.engine.Pull(ctx, f.repo+"@"+f.v1, docker.PullOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		name := f.name + "-net-" + n
		if _, err := f.cli.NetworkCreate(ctx, name, network.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		f.nets = append(f.nets, name)
	}
	f.volume = f.name + "-data"
	if _, err := f.cli.VolumeCreate(ctx, volume.CreateOptions{Name: f.volume}); err != nil {
		t.Fatal(err)
	}
	f.bindDir = t.TempDir()
	os.WriteFile(filepath.Join(f.bindDir, "host-file"), []byte("from the host"), 0o644)
	f.hostPort = registrytest.FreePort(t)
	labels := map[string]string{"molecule.workspace": "ws-1"}
	for k, v := range f.sel {
		labels[k] = v
	}
	cfg := &container.Config{
		Image:        f.repo + "@" + f.v1,
		Env:          []string{"SECRET_TOKEN=s3cr3t", "WORKSPACE_ID=ws-1"},
		Labels:       labels,
		ExposedPorts: nat.PortSet{"8080/tcp": {}},
	}
	host := &container.HostConfig{
		Binds:         []string{f.volume + ":/data", f.bindDir + ":/bind:ro"},
		PortBindings:  nat.PortMap{"8080/tcp": {{HostIP: "127.0.0.1", HostPort: f.hostPort}}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyOnFailure, MaximumRetryCount: 3},
		NetworkMode:   container.NetworkMode(f.nets[0]),
	}
	netCfg := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{f.nets[0]: {Aliases: []string{"ws-alias-a"}}}}
	created, err := f.cli.ContainerCreate(ctx, cfg, host, netCfg, nil, f.name)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cli.NetworkConnect(ctx, f.nets[1], created.ID, &network.EndpointSettings{Aliases: []string{"ws-alias-b"}}); err != nil {
		t.Fatal(err)
	}
	if !running {
		return
	}
	if err := f.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	f.waitHTTP("/version", "v1")
}

func (f *fixture) get(path string) (string, error) { return registrytest.Get(f.hostPort, path) }

func (f *fixture) waitHTTP(path, want string) {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := f.get(path)
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("GET %s = %q, %v; want %q", path, got, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (f *fixture) waitContains(path, want string) {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := f.get(path)
		if err == nil && strings.Contains(got, want) {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("GET %s = %q, %v; want it to contain %q", path, got, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (f *fixture) container() docker.Container {
	f.t.Helper()
	cs, err := f.engine.List(f.ctx(), f.sel)
	if err != nil || len(cs) != 1 {
		f.t.Fatalf("managed containers: %d, %v; want 1", len(cs), err)
	}
	return cs[0]
}

func (f *fixture) cleanup() {
	ctx := context.Background()
	cs, _ := f.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f.sel.Filters()})
	volumes := []string{f.volume}
	for _, c := range cs {
		for _, m := range c.Mounts {
			volumes = append(volumes, m.Name)
		}
		f.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	}
	for _, v := range volumes {
		if v != "" {
			f.cli.VolumeRemove(ctx, v, true)
		}
	}
	for _, n := range f.nets {
		f.cli.NetworkRemove(ctx, n)
	}
	registrytest.RemoveImages(f.t, f.cli, f.repo)
}

func (f *fixture) target(digest string) docker.Target {
	f.t.Helper()
	res, err := f.engine.Pull(f.ctx(), f.repo+"@"+digest, docker.PullOptions{}, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return docker.Target{Repository: f.repo, Digest: digest, ImageID: res.ImageID}
}

// opts are a recreate's options for the command with ID id, its suffix
// made from id as the executor makes it.
func (f *fixture) opts(id string) docker.RecreateOptions {
	return docker.RecreateOptions{HealthGateTimeout: 30 * time.Second, StabilityWindow: time.Second, Suffix: id, Selector: f.sel, CommandID: "c-" + id}
}

func noJournal(docker.RecreateState) error { return nil }
func noReport(docker.Step, string)         {}

func TestRecreateKeepsEverything(t *testing.T) {
	f := newFixture(t)
	f.start(true)
	old := f.container()
	oldCache := mountNamed(old.Inspect, "/cache")

	var steps []docker.Step
	res, _ := f.engine.Recreate(f.ctx(), old, f.target(f.v2), f.opts("t1"), func(s docker.RecreateState) error { steps = append(steps, s.Step); return nil }, noReport)
	if res.Result != docker.ResultRecreated {
		t.Fatalf("outcome %v: %s", res.Result, res.ErrorText())
	}
	if res.Downtime <= 0 || res.NewDigest != f.v2 || res.OldDigest != f.v1 {
		t.Errorf("result = %v", res)
	}
	if want := []docker.Step{"create", "connect", "disable-restart", "stop", "rename-old", "rename-new", "start", "health-gate", "remove-old", "done"}; !slices.Equal(steps, want) {
		t.Errorf("journaled steps %v, want %v", steps, want)
	}

	f.waitHTTP("/version", "v2") // same name, same host port, new image
	now := f.container()
	if now.Name() != f.name || now.Inspect.ID == old.Inspect.ID || now.DigestFor(f.repo) != f.v2 {
		t.Errorf("after: name %s id %s digest %s", now.Name(), now.Inspect.ID, now.DigestFor(f.repo))
	}
	if _, err := f.cli.ContainerInspect(f.ctx(), old.Inspect.ID); err == nil {
		t.Errorf("old container still exists")
	}
	// Both volumes kept their data: the history written by v1 is there,
	// and v2 appended to it.
	for _, dir := range []string{"/data", "/cache"} {
		hist, err := f.get("/file?path=" + dir + "/history")
		if err != nil || !strings.Contains(hist, " v1 ") || !strings.Contains(hist, " v2 ") {
			t.Errorf("%s/history = %q, %v; want lines from v1 and v2", dir, hist, err)
		}
	}
	if got := mountNamed(now.Inspect, "/cache"); got != oldCache || got == "" {
		t.Errorf("anonymous volume: %q, was %q", got, oldCache)
	}
	if got, _ := f.get("/file?path=/bind/host-file"); got != "from the host" {
		t.Errorf("bind mount: %q", got)
	}
	if got, _ := f.get("/env?name=SECRET_TOKEN"); got != "s3cr3t" {
		t.Errorf("run-time env lost: %q", got)
	}
	if got, _ := f.get("/env?name=WS_VERSION"); got != "v2" {
		t.Errorf("image env not from the new image: %q", got)
	}
	in := now.Inspect
	if in.HostConfig.RestartPolicy.Name != container.RestartPolicyOnFailure || in.HostConfig.RestartPolicy.MaximumRetryCount != 3 {
		t.Errorf("restart policy = %+v", in.HostConfig.RestartPolicy)
	}
	if in.Config.Labels["molecule.workspace"] != "ws-1" || in.Config.Labels["org.opencontainers.image.version"] != "v2" {
		t.Errorf("labels = %v", in.Config.Labels)
	}
	if !f.sel.Matches(in.Config.Labels) || in.Config.Labels[docker.CommandLabel] != "c-t1" {
		t.Errorf("labels = %v, want the selector's and %s=c-t1", in.Config.Labels, docker.CommandLabel)
	}
	for i, alias := range []string{"ws-alias-a", "ws-alias-b"} {
		ep := in.NetworkSettings.Networks[f.nets[i]]
		if ep == nil || !slices.Contains(ep.Aliases, alias) {
			t.Errorf("network %s: %+v, want alias %s", f.nets[i], ep, alias)
		}
		if ep != nil && slices.Contains(ep.Aliases, old.Inspect.ID[:12]) {
			t.Errorf("network %s kept the old short-ID alias", f.nets[i])
		}
	}
	if in.Config.Hostname == old.Inspect.Config.Hostname {
		t.Errorf("hostname kept the old short ID %s", in.Config.Hostname)
	}
	for _, v := range []string{f.volume} {
		if _, err := f.cli.VolumeInspect(f.ctx(), v); err != nil {
			t.Errorf("volume %s gone: %v", v, err)
		}
	}
	if _, err := f.cli.VolumeInspect(f.ctx(), oldCache); err != nil {
		t.Errorf("anonymous volume %s gone: %v", oldCache, err)
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

func TestUnhealthyImageRollsBack(t *testing.T) {
	f := newFixture(t)
	f.start(true)
	old := f.container()
	res, _ := f.engine.Recreate(f.ctx(), old, f.target(f.bad), f.opts("t1"), noJournal, noReport)
	if res.Result != docker.ResultRolledBack || !strings.Contains(res.ErrorText(), "unhealthy") {
		t.Fatalf("outcome %v (%s), want ROLLED_BACK because unhealthy", res.Result, res.ErrorText())
	}
	f.waitHTTP("/version", "v1")
	now := f.container()
	if now.Inspect.ID != old.Inspect.ID || now.Name() != f.name || !now.Inspect.State.Running {
		t.Errorf("after rollback: id %s name %s running %v", now.Inspect.ID, now.Name(), now.Inspect.State.Running)
	}
	if now.Inspect.HostConfig.RestartPolicy.Name != container.RestartPolicyOnFailure {
		t.Errorf("restart policy not restored: %+v", now.Inspect.HostConfig.RestartPolicy)
	}
	if hist, _ := f.get("/file?path=/data/history"); !strings.Contains(hist, " v1 ") {
		t.Errorf("data lost: %q", hist)
	}
}

// A rollback removes the anonymous volume the Engine made for the
// replacement (a VOLUME the bad image declares and the old container
// lacks) and keeps every volume of the old container.
func TestRollbackRemovesOnlyTheReplacementsOwnVolume(t *testing.T) {
	f := newFixture(t)
	_, bad := f.reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "bad", Unhealthy: true, Volume: "/fresh"}))
	f.start(true)
	old := f.container()
	volumeAt := func(in container.InspectResponse, dest string) string {
		for _, m := range in.Mounts {
			if m.Destination == dest {
				return m.Name
			}
		}
		return ""
	}
	var fresh, cache string
	journal := func(st docker.RecreateState) error {
		if st.Step == docker.StepHealthGate {
			in, err := f.cli.ContainerInspect(context.Background(), st.NewID)
			if err != nil {
				return err
			}
			fresh, cache = volumeAt(in, "/fresh"), volumeAt(in, "/cache")
		}
		return nil
	}
	res, _ := f.engine.Recreate(f.ctx(), old, f.target(bad), f.opts("t1"), journal, noReport)
	if res.Result != docker.ResultRolledBack {
		t.Fatalf("outcome %v (%s), want ROLLED_BACK", res.Result, res.ErrorText())
	}
	if fresh == "" || cache != volumeAt(old.Inspect, "/cache") {
		t.Fatalf("replacement's volumes: /fresh %q, /cache %q (old's %q)", fresh, cache, volumeAt(old.Inspect, "/cache"))
	}
	if _, err := f.cli.VolumeInspect(context.Background(), fresh); !cerrdefs.IsNotFound(err) {
		t.Errorf("the replacement's own volume %s: %v, want removed with it", fresh, err)
		f.cli.VolumeRemove(context.Background(), fresh, true)
	}
	f.waitHTTP("/version", "v1")
	now := f.container()
	for _, m := range old.Inspect.Mounts {
		if m.Type != mount.TypeVolume {
			continue
		}
		if _, err := f.cli.VolumeInspect(context.Background(), m.Name); err != nil || volumeAt(now.Inspect, m.Destination) != m.Name {
			t.Errorf("old container's volume %s at %s: %v, mounted now: %q", m.Name, m.Destination, err, volumeAt(now.Inspect, m.Destination))
		}
	}
	if hist, _ := f.get("/file?path=/data/history"); !strings.Contains(hist, " v1 ") {
		t.Errorf("data lost: %q", hist)
	}
}

func TestStoppedContainerStaysStopped(t *testing.T) {
	f := newFixture(t)
	f.start(false)
	old := f.container()
	res, _ := f.engine.Recreate(f.ctx(), old, f.target(f.v2), f.opts("t1"), noJournal, noReport)
	if res.Result != docker.ResultRecreated || res.WasRunning {
		t.Fatalf("result %v", res)
	}
	now := f.container()
	if now.Inspect.State.Running || now.DigestFor(f.repo) != f.v2 || now.Name() != f.name {
		t.Errorf("stopped container: running %v digest %s name %s", now.Inspect.State.Running, now.DigestFor(f.repo), now.Name())
	}
}

// A crash at any step between stop and start leaves the container
// recoverable: Recover brings it back running, on old or new, never missing.
func TestCrashAtEveryStepRecovers(t *testing.T) {
	f := newFixture(t)
	f.start(true)
	target := f.target(f.v2)
	for _, at := range []docker.Step{"create", "connect", "disable-restart", "stop", "rename-old", "rename-new", "start", "health-gate", "remove-old"} {
		t.Run(string(at), func(t *testing.T) {
			old := f.container()
			var last docker.RecreateState
			journal := func(s docker.RecreateState) error {
				last = s
				if s.Step == at {
					return docker.ErrCrash
				}
				return nil
			}
			o := f.opts(string(at))
			if _, err := f.engine.Recreate(f.ctx(), old, target, o, journal, noReport); !errors.Is(err, docker.ErrCrash) {
				t.Fatalf("crash at %s did not return ErrCrash but %v", at, err)
			}
			res := f.engine.Recover(f.ctx(), last, f.sel)
			want := docker.ResultRolledBack
			if at == "remove-old" {
				want = docker.ResultRecreated
			}
			if res.Result != want {
				t.Fatalf("recover after %s: %v (%s), want %v", at, res.Result, res.ErrorText(), want)
			}
			now := f.container() // exactly one managed container: none left half-made
			if now.Name() != f.name || !now.Inspect.State.Running {
				t.Fatalf("after recover: name %s running %v", now.Name(), now.Inspect.State.Running)
			}
			f.waitContains("/file?path=/data/history", " v1 ")
			if at == "remove-old" {
				// Back to v1 for the next case.
				back, _ := f.engine.Recreate(f.ctx(), now, f.target(f.v1), f.opts("back"), noJournal, noReport)
				if back.Result != docker.ResultRecreated {
					t.Fatalf("back to v1: %v", back)
				}
			}
		})
	}
}

func TestPullReportsProgressAndVerifiesDigest(t *testing.T) {
	f := newFixture(t)
	var reports []docker.PullProgress
	res, err := f.engine.Pull(f.ctx(), f.repo+"@"+f.v2, docker.PullOptions{Every: time.Nanosecond}, func(p docker.PullProgress) { reports = append(reports, p) })
	if err != nil {
		t.Fatal(err)
	}
	last := reports[len(reports)-1]
	if res.Duration <= 0 || res.Bytes < 3<<20 || last.TotalBytes < 3<<20 || len(last.Layers) < 2 {
		t.Errorf("pull result %+v, last progress %d/%d bytes over %d layers", res, last.CurrentBytes, last.TotalBytes, len(last.Layers))
	}
	// Present already: no pull, no time.
	again, err := f.engine.Pull(f.ctx(), f.repo+"@"+f.v2, docker.PullOptions{}, nil)
	if err != nil || again.Duration != 0 || again.ImageID != res.ImageID {
		t.Errorf("second pull: %+v, %v", again, err)
	}
	// A digest the registry does not have fails fast, without retries.
	missing := "sha256:" + strings.Repeat("0", 64)
	if _, err := f.engine.Pull(f.ctx(), f.repo+"@"+missing, docker.PullOptions{Attempts: 3, Backoff: time.Hour}, nil); err == nil {
		t.Errorf("pull of a missing digest succeeded")
	}
}

// A registry that is down when the pull starts and back a moment later:
// the pull retries and succeeds.
func TestPullRetriesTransientFailures(t *testing.T) {
	f := newFixture(t)
	f.reg.Stop()
	go func() {
		time.Sleep(1500 * time.Millisecond)
		f.reg.Restart(t)
	}()
	res, err := f.engine.Pull(f.ctx(), f.repo+"@"+f.v1, docker.PullOptions{Attempts: 6, Backoff: 500 * time.Millisecond}, nil)
	if err != nil || res.ImageID == "" {
		t.Fatalf("pull across a registry outage: %+v, %v", res, err)
	}
}

// A recreate whose swap turn is refused (the refresh halted while it
// waited) removes its replacement and leaves the old container as it was,
// running, never stopped: NotAttempted.
func TestRefusedTurnLeavesTheOldContainerUntouched(t *testing.T) {
	f := newFixture(t)
	f.start(true)
	old := f.container()
	opts := f.opts("t1")
	opts.Turn = func() (func(), bool) { return nil, false }
	res, _ := f.engine.Recreate(f.ctx(), old, f.target(f.v2), opts, noJournal, noReport)
	if res.Result != docker.ResultNotAttempted || !strings.Contains(res.ErrorText(), "nothing was changed") {
		t.Fatalf("outcome %v (%s), want NOT_ATTEMPTED, nothing changed", res.Result, res.ErrorText())
	}
	now := f.container()
	if now.Inspect.ID != old.Inspect.ID || now.Name() != f.name || !now.Inspect.State.Running || now.Inspect.State.StartedAt != old.Inspect.State.StartedAt {
		t.Errorf("old container touched: id %s name %s running %v started %s (was %s)", now.Inspect.ID, now.Name(), now.Inspect.State.Running, now.Inspect.State.StartedAt, old.Inspect.State.StartedAt)
	}
	if res.NewID != old.Inspect.ID {
		t.Errorf("outcome's new ID %s, want the old one %s", res.NewID, old.Inspect.ID)
	}
	all, err := f.cli.ContainerList(f.ctx(), container.ListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range all {
		// Other tests run beside this one: only this fixture's names.
		if _, ours := c.Labels[docker.CommandLabel]; ours && len(c.Names) > 0 && strings.HasPrefix(c.Names[0], "/"+f.name+"-ta-") {
			t.Errorf("replacement %s %v left behind", c.ID[:12], c.Names)
		}
	}
}
