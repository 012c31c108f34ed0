package docker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"
	"github.com/docker/go-units"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// The oracle: after a refresh, a container equals what its own create
// options give directly on the new image. Each case creates a workspace
// with some `docker run` options on v1, recreates it through the agent
// onto v2, creates the oracle with the same options directly on v2 (never
// started: it would collide on ports and addresses), and compares the two
// inspect outputs field by field, after normalize.

// oracleImages differ from each other in every default an image has.
var oracleImages = map[string]v1.Config{
	"v1": {
		Entrypoint: []string{"/workspace"}, Cmd: []string{"serve"},
		Env:          []string{"PATH=/", "WS_VERSION=v1", "WS_DATA_DIRS=/data,/cache", "COMMON=v1", "ONLY_V1=1"},
		WorkingDir:   "/",
		ExposedPorts: map[string]struct{}{"8080/tcp": {}, "9001/tcp": {}},
		Volumes:      map[string]struct{}{"/cache": {}, "/v1vol": {}},
		Labels:       map[string]string{"org.opencontainers.image.version": "v1", "title": "workspace", "only.v1": "yes"},
		StopSignal:   "SIGTERM",
		Healthcheck:  &v1.HealthConfig{Test: []string{"CMD", "/workspace", "health"}, Interval: 500 * time.Millisecond, Timeout: 4 * time.Second, Retries: 6, StartPeriod: 5 * time.Second},
	},
	"v2": {
		Entrypoint: []string{"/workspace", "serve"}, Cmd: []string{"--v2"},
		Env:          []string{"PATH=/", "WS_VERSION=v2", "WS_DATA_DIRS=/data,/cache", "COMMON=v2", "ONLY_V2=1"},
		WorkingDir:   "/v2wd",
		User:         "0:0",
		ExposedPorts: map[string]struct{}{"8080/tcp": {}, "9002/tcp": {}},
		Volumes:      map[string]struct{}{"/cache": {}, "/v2vol": {}},
		Labels:       map[string]string{"org.opencontainers.image.version": "v2", "title": "workspace", "only.v2": "yes"},
		StopSignal:   "SIGINT",
		Healthcheck:  &v1.HealthConfig{Test: []string{"CMD", "/workspace", "health", "--v2"}, Interval: 300 * time.Millisecond, Timeout: 6 * time.Second, Retries: 7, StartPeriod: 5 * time.Second},
	},
}

// oracleCase is a set of create options (what docker run sends).
type oracleCase struct {
	name string
	cfg  func(e *oracleEnv, c *container.Config)
	host func(e *oracleEnv, h *container.HostConfig)
	// net is the primary network's endpoint (NetworkMode names it), and
	// connect the others', connected before the first start.
	net     map[string]*network.EndpointSettings
	connect map[string]*network.EndpointSettings
	// explicit creates the workspace with docker.ExplicitLabel, as a
	// provisioner following the README's rule would.
	explicit bool
	stopped  bool
	// want lists the fields allowed to differ, each documented in the
	// README ("What a recreate keeps").
	want []string
}

func oracleCases() []oracleCase {
	cfg := func(f func(c *container.Config)) func(*oracleEnv, *container.Config) {
		return func(_ *oracleEnv, c *container.Config) { f(c) }
	}
	host := func(f func(h *container.HostConfig)) func(*oracleEnv, *container.HostConfig) {
		return func(_ *oracleEnv, h *container.HostConfig) { f(h) }
	}
	tru := true
	return []oracleCase{
		{name: "defaults"},
		{name: "env", cfg: cfg(func(c *container.Config) { c.Env = []string{"SECRET=s3cr3t", "COMMON=mine", "EMPTY="} })},
		{name: "env equal to the old image's, labelled", explicit: true, cfg: cfg(func(c *container.Config) { c.Env = []string{"COMMON=v1", "A=b"} })},
		{name: "env equal to the old image's, unlabelled", stopped: true, cfg: cfg(func(c *container.Config) { c.Env = []string{"COMMON=v1", "A=b"} }), want: []string{"Config.Env"}},
		{name: "labels", stopped: true, cfg: cfg(func(c *container.Config) {
			c.Labels["team"] = "a"
			c.Labels["org.opencontainers.image.version"] = "custom"
		})},
		{name: "labels equal to the old image's, labelled", stopped: true, explicit: true, cfg: cfg(func(c *container.Config) { c.Labels["only.v1"] = "yes" })},
		{name: "entrypoint and cmd", cfg: cfg(func(c *container.Config) {
			c.Entrypoint = []string{"/workspace", "serve"}
			c.Cmd = []string{"--mine"}
		})},
		{name: "cmd only", stopped: true, cfg: cfg(func(c *container.Config) { c.Cmd = []string{"serve", "--mine"} })},
		{name: "entrypoint equal to the old image's, labelled", stopped: true, explicit: true, cfg: cfg(func(c *container.Config) { c.Entrypoint = []string{"/workspace"} })},
		{name: "workdir", stopped: true, cfg: cfg(func(c *container.Config) { c.WorkingDir = "/data" })},
		{name: "workdir equal to the old image's, labelled", stopped: true, explicit: true, cfg: cfg(func(c *container.Config) { c.WorkingDir = "/" })},
		{name: "user", stopped: true, cfg: cfg(func(c *container.Config) { c.User = "0:0" })},
		{name: "hostname and domainname", stopped: true, cfg: cfg(func(c *container.Config) { c.Hostname, c.Domainname = "ws-host", "example.org" })},
		{name: "ports", cfg: func(e *oracleEnv, c *container.Config) {
			c.ExposedPorts = nat.PortSet{"8080/tcp": {}, "9001/tcp": {}, "7000/udp": {}, "7001/udp": {}}
		}, host: func(e *oracleEnv, h *container.HostConfig) {
			h.PortBindings = nat.PortMap{
				"8080/tcp": {{HostIP: "127.0.0.1", HostPort: e.port("8080")}},
				"9001/tcp": {{HostPort: e.port("9001")}},
				"7000/udp": {{HostIP: "127.0.0.1", HostPort: e.port("7000")}},
				"7001/udp": {{HostIP: "127.0.0.1", HostPort: e.port("7001")}},
			}
		}},
		{name: "expose", stopped: true, cfg: cfg(func(c *container.Config) { c.ExposedPorts = nat.PortSet{"5555/tcp": {}} })},
		{name: "publish all", host: host(func(h *container.HostConfig) { h.PublishAllPorts = true })},
		{name: "named volumes", host: func(e *oracleEnv, h *container.HostConfig) {
			h.Binds = []string{e.named("data") + ":/data", e.named("ro") + ":/ro:ro"}
			h.Mounts = []mount.Mount{{Type: mount.TypeVolume, Source: e.named("m"), Target: "/m"}}
		}},
		{name: "anonymous volume -v", cfg: cfg(func(c *container.Config) { c.Volumes = map[string]struct{}{"/anon": {}} })},
		{name: "anonymous volume --mount", host: host(func(h *container.HostConfig) {
			h.Mounts = []mount.Mount{{Type: mount.TypeVolume, Target: "/anonm"}}
		})},
		{name: "bind", host: func(e *oracleEnv, h *container.HostConfig) {
			h.Binds = []string{e.dir + ":/bind:ro"}
			h.Mounts = []mount.Mount{{Type: mount.TypeBind, Source: e.dir, Target: "/bindm"}}
		}},
		{name: "tmpfs", host: host(func(h *container.HostConfig) {
			h.Tmpfs = map[string]string{"/tmpfs": "size=1m"}
			h.Mounts = []mount.Mount{{Type: mount.TypeTmpfs, Target: "/tmpfsm", TmpfsOptions: &mount.TmpfsOptions{SizeBytes: 1 << 20}}}
		})},
		{name: "read-only rootfs", host: host(func(h *container.HostConfig) {
			h.ReadonlyRootfs = true
			h.Tmpfs = map[string]string{"/data": ""}
		})},
		{name: "network with alias and static IP", host: func(e *oracleEnv, h *container.HostConfig) { h.NetworkMode = container.NetworkMode(e.nets[0]) },
			net: map[string]*network.EndpointSettings{"0": {Aliases: []string{"ws-a"}, IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: "static"}}}},
		{name: "two networks", host: func(e *oracleEnv, h *container.HostConfig) { h.NetworkMode = container.NetworkMode(e.nets[0]) },
			net:     map[string]*network.EndpointSettings{"0": {Aliases: []string{"ws-a"}}},
			connect: map[string]*network.EndpointSettings{"1": {Aliases: []string{"ws-b"}}}},
		{name: "network host", stopped: true, host: host(func(h *container.HostConfig) { h.NetworkMode = "host" })},
		{name: "network none", host: host(func(h *container.HostConfig) { h.NetworkMode = "none" })},
		{name: "network container", stopped: true, host: func(e *oracleEnv, h *container.HostConfig) {
			h.NetworkMode = container.NetworkMode("container:" + e.other)
		}},
		{name: "dns", stopped: true, host: host(func(h *container.HostConfig) {
			h.DNS, h.DNSSearch, h.DNSOptions = []string{"10.0.0.2"}, []string{"example.org"}, []string{"ndots:2"}
		})},
		{name: "extra hosts", stopped: true, host: host(func(h *container.HostConfig) { h.ExtraHosts = []string{"db:10.0.0.3"} })},
		{name: "restart on-failure", host: host(func(h *container.HostConfig) {
			h.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyOnFailure, MaximumRetryCount: 3}
		})},
		{name: "restart unless-stopped", stopped: true, host: host(func(h *container.HostConfig) {
			h.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyUnlessStopped}
		})},
		{name: "restart always", stopped: true, host: host(func(h *container.HostConfig) {
			h.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyAlways}
		})},
		{name: "resources", stopped: true, host: host(func(h *container.HostConfig) {
			h.Memory, h.MemoryReservation, h.NanoCPUs, h.CPUShares = 128<<20, 64<<20, 500_000_000, 512
			pids := int64(100)
			h.PidsLimit = &pids
			h.Ulimits = []*units.Ulimit{{Name: "nofile", Soft: 1024, Hard: 2048}}
			h.ShmSize = 16 << 20
		})},
		{name: "capabilities", stopped: true, host: host(func(h *container.HostConfig) { h.CapAdd, h.CapDrop = []string{"NET_ADMIN"}, []string{"MKNOD"} })},
		{name: "security opts", stopped: true, host: host(func(h *container.HostConfig) { h.SecurityOpt = []string{"no-new-privileges:true"} })},
		{name: "init", host: host(func(h *container.HostConfig) { h.Init = &tru })},
		{name: "stop signal and timeout", cfg: cfg(func(c *container.Config) {
			timeout := 3
			c.StopSignal, c.StopTimeout = "SIGINT", &timeout
		})},
		{name: "healthcheck full", cfg: cfg(func(c *container.Config) {
			c.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "/workspace", "health", "--full"}, Interval: 400 * time.Millisecond, Timeout: 5 * time.Second, StartPeriod: 5 * time.Second, Retries: 8}
		})},
		{name: "healthcheck interval only", cfg: cfg(func(c *container.Config) { c.Healthcheck = &container.HealthConfig{Interval: 400 * time.Millisecond} })},
		{name: "healthcheck test only", cfg: cfg(func(c *container.Config) {
			c.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "/workspace", "health", "--mine"}}
		})},
		{name: "healthcheck interval equal to the old image's, labelled", explicit: true, cfg: cfg(func(c *container.Config) {
			c.Healthcheck = &container.HealthConfig{Interval: 500 * time.Millisecond}
		})},
		{name: "healthcheck disabled", cfg: cfg(func(c *container.Config) { c.Healthcheck = &container.HealthConfig{Test: []string{"NONE"}} })},
		{name: "log config", stopped: true, host: host(func(h *container.HostConfig) {
			h.LogConfig = container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "1m", "max-file": "2"}}
		})},
		{name: "tty and stdin", cfg: cfg(func(c *container.Config) {
			c.Tty, c.OpenStdin, c.AttachStdin, c.AttachStdout, c.AttachStderr = true, true, true, true, true
		})},
		{name: "devices", stopped: true, host: host(func(h *container.HostConfig) {
			h.Devices = []container.DeviceMapping{{PathOnHost: "/dev/null", PathInContainer: "/dev/xnull", CgroupPermissions: "rwm"}}
		})},
		{name: "sysctls", stopped: true, host: host(func(h *container.HostConfig) {
			h.Sysctls = map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"}
		})},
		{name: "group-add", stopped: true, host: host(func(h *container.HostConfig) { h.GroupAdd = []string{"1234"} })},
		{name: "ipc and pid modes", stopped: true, host: host(func(h *container.HostConfig) { h.IpcMode, h.PidMode = "shareable", "host" })},
		{name: "auto-remove", host: host(func(h *container.HostConfig) { h.AutoRemove = true })},
		{name: "stopped", stopped: true, cfg: cfg(func(c *container.Config) { c.Env = []string{"SECRET=x"} })},
	}
}

// oracleEnv is what the cases share: images, networks, a container to
// share a network namespace with.
type oracleEnv struct {
	t       *testing.T
	cli     *client.Client
	engine  *docker.Engine
	repo    string
	digests map[string]string
	target  docker.Target
	nets    []string
	subnet  string
	other   string
	dir     string
	suffix  string

	mu      sync.Mutex
	ports   map[string]string
	volumes []string
	ips     int
}

// port is a free host port for a case's published container port, the
// same for the workspace and its oracle.
func (e *oracleEnv) port(key string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.ports[key]; ok {
		return p
	}
	p := registrytest.FreePort(e.t)
	e.ports[key] = p
	return p
}

// named is a named volume, removed at the end.
func (e *oracleEnv) named(name string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	v := "oracle-" + e.suffix + "-" + name
	if !slices.Contains(e.volumes, v) {
		e.volumes = append(e.volumes, v)
	}
	return v
}

func newOracleEnv(t *testing.T) *oracleEnv {
	cli := registrytest.Docker(t)
	engine, err := docker.New("", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	e := &oracleEnv{t: t, cli: cli, engine: engine, digests: map[string]string{}, ports: map[string]string{}, suffix: randomSuffix(), dir: t.TempDir()}
	reg := registrytest.StartRegistry(t)
	ctx := context.Background()
	for _, v := range []string{"v1", "v2"} {
		img, err := mutate.Config(registrytest.WorkspaceImage(t, registrytest.Image{Version: v}), oracleImages[v])
		if err != nil {
			t.Fatal(err)
		}
		e.repo, e.digests[v] = reg.Push(t, "oracle/workspace-template-codex", img)
		res, err := engine.Pull(ctx, e.repo+"@"+e.digests[v], docker.PullOptions{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		e.target = docker.Target{Repository: e.repo, Digest: e.digests[v], ImageID: res.ImageID}
	}
	t.Cleanup(e.cleanup)
	e.createNetworks()
	other, err := cli.ContainerCreate(ctx, &container.Config{Image: e.ref("v1")}, nil, nil, nil, "oracle-"+e.suffix+"-netns")
	if err != nil {
		t.Fatal(err)
	}
	e.other = other.ID
	if err := cli.ContainerStart(ctx, other.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *oracleEnv) ref(v string) string { return e.repo + "@" + e.digests[v] }

// createNetworks makes two user networks, the first with a subnet of its
// own for static addresses (a few tries, in case one is taken).
func (e *oracleEnv) createNetworks() {
	ctx := context.Background()
	for try := 0; ; try++ {
		e.subnet = fmt.Sprintf("10.%d.%d", 200+try, time.Now().Nanosecond()%250)
		_, err := e.cli.NetworkCreate(ctx, "oracle-"+e.suffix+"-0", network.CreateOptions{IPAM: &network.IPAM{Config: []network.IPAMConfig{{Subnet: e.subnet + ".0/24"}}}})
		if err == nil {
			break
		}
		if try == 5 {
			e.t.Fatal(err)
		}
	}
	if _, err := e.cli.NetworkCreate(ctx, "oracle-"+e.suffix+"-1", network.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.nets = []string{"oracle-" + e.suffix + "-0", "oracle-" + e.suffix + "-1"}
}

func (e *oracleEnv) cleanup() {
	ctx := context.Background()
	cs, _ := e.cli.ContainerList(ctx, container.ListOptions{All: true})
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, c := range cs {
		if slices.ContainsFunc(c.Names, func(n string) bool { return strings.HasPrefix(n, "/oracle-"+e.suffix) }) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				registrytest.RemoveContainer(e.cli, c.ID)
			}()
		}
	}
	wg.Wait()
	for _, v := range e.volumes {
		e.cli.VolumeRemove(ctx, v, true)
	}
	for _, n := range e.nets {
		e.cli.NetworkRemove(ctx, n)
	}
	registrytest.RemoveImages(e.t, e.cli, e.repo)
}

// options are a case's create options on image v.
func (e *oracleEnv) options(c oracleCase, i int, v string, sel docker.Selector) (*container.Config, *container.HostConfig, *network.NetworkingConfig, map[string]*network.EndpointSettings) {
	cfg := &container.Config{Image: e.ref(v), Labels: maps.Clone(sel)}
	host := &container.HostConfig{}
	if c.cfg != nil {
		c.cfg(e, cfg)
	}
	if c.host != nil {
		c.host(e, host)
	}
	endpoints := func(in map[string]*network.EndpointSettings) map[string]*network.EndpointSettings {
		out := map[string]*network.EndpointSettings{}
		for k, ep := range in {
			ep := *ep
			if ep.IPAMConfig != nil && ep.IPAMConfig.IPv4Address == "static" {
				ep.IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: fmt.Sprintf("%s.%d", e.subnet, 10+i)}
			}
			out[e.nets[k[0]-'0']] = &ep
		}
		return out
	}
	var netCfg *network.NetworkingConfig
	if c.net != nil {
		netCfg = &network.NetworkingConfig{EndpointsConfig: endpoints(c.net)}
	}
	return cfg, host, netCfg, endpoints(c.connect)
}

// oracleRun is one case's outcome.
type oracleRun struct {
	took  time.Duration
	err   error
	diffs []string
	notes []string
}

func (e *oracleEnv) run(c oracleCase, i int) oracleRun {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := fmt.Sprintf("oracle-%s-%d", e.suffix, i)
	sel := docker.Selector{"molecule.org-id": base, "molecule.platform.managed": "true"}

	cfg, host, netCfg, connect := e.options(c, i, "v1", sel)
	if c.explicit {
		cfg.Labels[docker.ExplicitLabel] = docker.Explicit(cfg)
	}
	id, err := e.create(ctx, cfg, host, netCfg, connect, base+"-ws", !c.stopped)
	if err != nil {
		return oracleRun{err: fmt.Errorf("create the workspace on v1: %w", err)}
	}
	cs, err := e.engine.List(ctx, sel)
	if err != nil || len(cs) != 1 {
		return oracleRun{err: fmt.Errorf("list: %d containers, %v", len(cs), err)}
	}
	opts := docker.RecreateOptions{HealthGateTimeout: 30 * time.Second, StabilityWindow: 300 * time.Millisecond, Suffix: "o", Selector: sel, CommandID: "c-oracle"}
	res, _ := e.engine.Recreate(ctx, cs[0], e.target, opts, noJournal, noReport)
	if res.Result != docker.ResultRecreated {
		return oracleRun{err: fmt.Errorf("recreate: %v: %s", res.Result, res.ErrorText())}
	}
	got, err := e.cli.ContainerInspect(ctx, base+"-ws")
	if err != nil {
		return oracleRun{err: err}
	}
	run := oracleRun{notes: e.checkCarried(cs[0].Inspect, got)}

	cfg, host, netCfg, connect = e.options(c, i, "v2", sel)
	oid, err := e.create(ctx, cfg, host, netCfg, connect, base+"-oracle", false)
	if err != nil {
		return oracleRun{err: fmt.Errorf("create the oracle on v2: %w", err)}
	}
	want, err := e.cli.ContainerInspect(ctx, oid)
	if err != nil {
		return oracleRun{err: err}
	}
	_ = id
	run.diffs = diff(flatten(normalize(want, nil)), flatten(normalize(got, oracleImages["v1"].Volumes)))
	return run
}

// checkCarried checks what the oracle cannot: the replacement mounts old's
// anonymous volumes (same names, so the same data), and old is gone.
func (e *oracleEnv) checkCarried(old, now container.InspectResponse) []string {
	var notes []string
	for _, m := range old.Mounts {
		if m.Type != mount.TypeVolume {
			continue
		}
		found := false
		for _, n := range now.Mounts {
			found = found || (n.Destination == m.Destination && n.Name == m.Name)
		}
		if !found {
			notes = append(notes, fmt.Sprintf("volume %s at %s not carried", m.Name, m.Destination))
		}
	}
	if _, err := e.cli.ContainerInspect(context.Background(), old.ID); err == nil {
		notes = append(notes, "the old container still exists")
	}
	return notes
}

func (e *oracleEnv) create(ctx context.Context, cfg *container.Config, host *container.HostConfig, netCfg *network.NetworkingConfig, connect map[string]*network.EndpointSettings, name string, start bool) (string, error) {
	created, err := e.cli.ContainerCreate(ctx, cfg, host, netCfg, nil, name)
	if err != nil {
		return "", err
	}
	for n, ep := range connect {
		if err := e.cli.NetworkConnect(ctx, n, created.ID, ep); err != nil {
			return "", err
		}
	}
	if start {
		return created.ID, e.cli.ContainerStart(ctx, created.ID, container.StartOptions{})
	}
	return created.ID, nil
}

// oracleView is what must match: Config, HostConfig, each endpoint's
// settings, and the mounts.
type oracleView struct {
	Config     *container.Config
	HostConfig *container.HostConfig
	Networks   map[string]endpointView
	Mounts     map[string]mountView
}

type endpointView struct {
	Aliases    []string
	IPAMConfig *network.EndpointIPAMConfig
	Links      []string
	DriverOpts map[string]string
}

type mountView struct {
	Type   mount.Type
	Volume string // "named:<name>" or "anonymous"
	Source string // a bind's
	RW     bool
	Mode   string
	Driver string
}

var anonymousName = regexp.MustCompile(`^[0-9a-f]{64}$`)

// normalize sets aside what differs by nature: names, IDs, the automatic
// hostname, the agent's own labels, anonymous volumes' names. dropMounts
// are the old image's VOLUMEs: a recreate keeps them mounted (their data
// is not left behind) where the oracle has none (README).
func normalize(in container.InspectResponse, dropMounts map[string]struct{}) oracleView {
	cfg := *in.Config
	if cfg.Hostname == in.ID[:12] {
		cfg.Hostname = "<automatic>"
	}
	cfg.Labels = maps.Clone(cfg.Labels)
	for k := range cfg.Labels {
		if strings.HasPrefix(k, "tenant-agent.") {
			delete(cfg.Labels, k)
		}
	}
	host := *in.HostConfig
	host.Mounts = nil
	for _, m := range in.HostConfig.Mounts {
		// An anonymous volume is named only in the replacement, which
		// must mount the existing volume; Mounts below compares them.
		if m.Type == mount.TypeVolume && (m.Source == "" || anonymousName.MatchString(m.Source)) {
			continue
		}
		host.Mounts = append(host.Mounts, m)
	}
	v := oracleView{Config: &cfg, HostConfig: &host, Networks: map[string]endpointView{}, Mounts: map[string]mountView{}}
	for name, ep := range in.NetworkSettings.Networks {
		var aliases []string
		for _, a := range ep.Aliases {
			if a != in.ID[:12] {
				aliases = append(aliases, a)
			}
		}
		sort.Strings(aliases)
		v.Networks[name] = endpointView{Aliases: aliases, IPAMConfig: ep.IPAMConfig, Links: ep.Links, DriverOpts: ep.DriverOpts}
	}
	for _, m := range in.Mounts {
		if _, drop := dropMounts[m.Destination]; drop && anonymousName.MatchString(m.Name) {
			if _, inNew := oracleImages["v2"].Volumes[m.Destination]; !inNew {
				continue
			}
		}
		mv := mountView{Type: m.Type, RW: m.RW, Mode: m.Mode, Driver: m.Driver}
		switch {
		case m.Type == mount.TypeVolume && anonymousName.MatchString(m.Name):
			// Mounted by name, the Engine shows the default relabel
			// mode "z" (README).
			mv.Volume, mv.Mode = "anonymous", ""
		case m.Type == mount.TypeVolume:
			mv.Volume = "named:" + m.Name
		case m.Type == mount.TypeBind:
			mv.Source = m.Source
		}
		v.Mounts[m.Destination] = mv
	}
	return v
}

// flatten turns v into field paths and their JSON values.
func flatten(v any) map[string]string {
	b, _ := json.Marshal(v)
	var tree any
	json.Unmarshal(b, &tree)
	out := map[string]string{}
	var walk func(path string, x any)
	walk = func(path string, x any) {
		if m, ok := x.(map[string]any); ok && len(m) > 0 {
			for k, c := range m {
				walk(strings.TrimPrefix(path+"."+k, "."), c)
			}
			return
		}
		if x == nil {
			return
		}
		if m, ok := x.(map[string]any); ok && len(m) == 0 {
			return
		}
		if l, ok := x.([]any); ok && len(l) == 0 {
			return
		}
		if s, ok := x.(string); ok && s == "" {
			return
		}
		j, _ := json.Marshal(x)
		out[path] = string(j)
	}
	walk("", tree)
	return out
}

// diff lists the paths whose values differ: "path: oracle X, recreated Y".
func diff(want, got map[string]string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if got[k] != want[k] {
			out = append(out, fmt.Sprintf("%s: oracle %s, recreated %s", k, want[k], orNone(got[k])))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			out = append(out, fmt.Sprintf("%s: oracle (none), recreated %s", k, got[k]))
		}
	}
	return out
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// TestOracle: a recreated container equals the oracle, case by case. The
// cases run at once, a few at a time (the Engine, not the CPU, is the
// bottleneck); each reports as its own subtest.
func TestOracle(t *testing.T) {
	begin := time.Now()
	e := newOracleEnv(t)
	t.Logf("setup took %s", time.Since(begin))
	cases := oracleCases()
	runs := make([]oracleRun, len(cases))
	sem := make(chan struct{}, 6)
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			start := time.Now()
			runs[i] = e.run(c, i)
			runs[i].took = time.Since(start)
		}()
	}
	wg.Wait()
	t.Logf("cases took %s", time.Since(begin))
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runs[i]
			t.Logf("took %s", r.took)
			if r.err != nil {
				t.Fatal(r.err)
			}
			for _, n := range r.notes {
				t.Error(n)
			}
			var unexpected []string
			for _, d := range r.diffs {
				field, _, _ := strings.Cut(d, ":")
				if !slices.ContainsFunc(c.want, func(w string) bool { return field == w || strings.HasPrefix(field, w+".") }) {
					unexpected = append(unexpected, d)
				}
			}
			if len(unexpected) > 0 {
				t.Errorf("recreated container differs from the oracle:\n  %s", strings.Join(unexpected, "\n  "))
			}
			for _, w := range c.want {
				if !slices.ContainsFunc(r.diffs, func(d string) bool { return strings.HasPrefix(d, w) }) {
					t.Errorf("expected a documented difference in %s, found none", w)
				}
			}
		})
	}
}
