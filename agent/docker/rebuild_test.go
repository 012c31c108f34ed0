package docker

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
)

const oldID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func oldContainer() container.InspectResponse {
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{
			ID: oldID,
			HostConfig: &container.HostConfig{
				Binds:         []string{"data:/data", "/srv/bind:/bind:ro"},
				NetworkMode:   "net-a",
				RestartPolicy: container.RestartPolicy{Name: "unless-stopped"},
				PortBindings:  nat.PortMap{"8080/tcp": {{HostPort: "18080"}}},
				Links:         []string{"/db:/ws/database"},
			},
		},
		Mounts: []container.MountPoint{
			{Type: mount.TypeVolume, Name: "data", Destination: "/data", RW: true},
			{Type: mount.TypeVolume, Name: "f00dcafe", Destination: "/cache", RW: true},
			{Type: mount.TypeVolume, Name: "beefbeef", Destination: "/ro-cache", RW: false},
			{Type: mount.TypeBind, Source: "/srv/bind", Destination: "/bind"},
		},
		Config: &container.Config{
			Hostname:     oldID[:12],
			Image:        "reg/ws@sha256:old",
			Env:          []string{"PATH=/usr/bin", "WS_VERSION=v1", "SECRET=x", "EXTRA=set-at-run"},
			Labels:       map[string]string{"org.opencontainers.image.version": "v1", "molecule.org-id": "acme", "com.docker.compose.image": "sha256:oldimage"},
			Cmd:          []string{"serve"},
			Entrypoint:   []string{"/workspace"},
			ExposedPorts: nat.PortSet{"8080/tcp": {}, "9000/tcp": {}},
			Volumes:      map[string]struct{}{"/cache": {}},
			WorkingDir:   "/",
			Healthcheck:  &container.HealthConfig{Test: []string{"CMD", "/workspace", "health"}},
		},
		NetworkSettings: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
			"net-a":  {Aliases: []string{"ws", oldID[:12]}, IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: "10.9.0.5"}, IPAddress: "10.9.0.5", NetworkID: "n1", EndpointID: "e1"},
			"net-b":  {Aliases: []string{oldID[:12], "ws-b"}},
			"bridge": {Aliases: []string{"ignored"}},
		}},
	}
}

var oldImage = &container.Config{
	Env:          []string{"PATH=/usr/bin", "WS_VERSION=v1"},
	Labels:       map[string]string{"org.opencontainers.image.version": "v1"},
	Cmd:          []string{"serve"},
	Entrypoint:   []string{"/workspace"},
	ExposedPorts: nat.PortSet{"8080/tcp": {}},
	Volumes:      map[string]struct{}{"/cache": {}},
	WorkingDir:   "/",
	Healthcheck:  &container.HealthConfig{Test: []string{"CMD", "/workspace", "health"}},
}

func TestRebuildSubtractsImageDefaults(t *testing.T) {
	spec := Rebuild(oldContainer(), oldImage, nil, "reg/ws@sha256:new", "sha256:newimage")
	c := spec.Config
	if c.Image != "reg/ws@sha256:new" {
		t.Errorf("Image = %s", c.Image)
	}
	if !slices.Equal(c.Env, []string{"SECRET=x", "EXTRA=set-at-run"}) {
		t.Errorf("Env = %v: want only what was set at run time (the new image brings its own)", c.Env)
	}
	if len(c.Labels) != 3 || c.Labels["molecule.org-id"] != "acme" || c.Labels["com.docker.compose.image"] != "sha256:newimage" || c.Labels[ExplicitLabel] == "" {
		t.Errorf("Labels = %v", c.Labels)
	}
	if c.Cmd != nil || c.Entrypoint != nil || c.Healthcheck != nil || c.WorkingDir != "" || c.Volumes != nil {
		t.Errorf("image defaults kept: cmd %v entrypoint %v healthcheck %v workdir %q volumes %v", c.Cmd, c.Entrypoint, c.Healthcheck, c.WorkingDir, c.Volumes)
	}
	if _, ok := c.ExposedPorts["9000/tcp"]; !ok || len(c.ExposedPorts) != 2 {
		t.Errorf("ExposedPorts = %v, want the run-time 9000/tcp and the published 8080/tcp", c.ExposedPorts)
	}
	if c.Hostname != "" {
		t.Errorf("Hostname = %q: the old short ID must be dropped", c.Hostname)
	}
}

func TestRebuildKeepsRunTimeOverrides(t *testing.T) {
	old := oldContainer()
	old.Config.Hostname = "my-workspace"
	old.Config.Cmd = []string{"serve", "--debug"}
	old.Config.Healthcheck = &container.HealthConfig{Test: []string{"NONE"}}
	c := Rebuild(old, oldImage, nil, "r@sha256:n", "").Config
	if c.Hostname != "my-workspace" || !slices.Equal(c.Cmd, []string{"serve", "--debug"}) || c.Healthcheck == nil {
		t.Errorf("overrides lost: hostname %q cmd %v healthcheck %v", c.Hostname, c.Cmd, c.Healthcheck)
	}
}

func TestRebuildHostConfigVolumesAndNetworks(t *testing.T) {
	spec := Rebuild(oldContainer(), oldImage, nil, "r@sha256:n", "")
	h := spec.HostConfig
	if wantBinds := []string{"data:/data", "/srv/bind:/bind:ro"}; !slices.Equal(h.Binds, wantBinds) {
		t.Errorf("Binds = %v, want %v", h.Binds, wantBinds)
	}
	wantMounts := []mount.Mount{{Type: mount.TypeVolume, Source: "f00dcafe", Target: "/cache"}, {Type: mount.TypeVolume, Source: "beefbeef", Target: "/ro-cache", ReadOnly: true}}
	if !reflect.DeepEqual(h.Mounts, wantMounts) {
		t.Errorf("Mounts = %+v, want %+v (anonymous volumes as volumes, by name)", h.Mounts, wantMounts)
	}
	if h.RestartPolicy.Name != "unless-stopped" || h.PortBindings["8080/tcp"][0].HostPort != "18080" {
		t.Errorf("host config not kept: %+v", h)
	}
	if !slices.Equal(h.Links, []string{"db:database"}) {
		t.Errorf("Links = %v", h.Links)
	}
	a := spec.Network.EndpointsConfig["net-a"]
	if a == nil || !slices.Equal(a.Aliases, []string{"ws"}) || a.IPAMConfig.IPv4Address != "10.9.0.5" || a.IPAddress != "" || a.EndpointID != "" {
		t.Errorf("primary endpoint = %+v", a)
	}
	if b := spec.Connect["net-b"]; b == nil || !slices.Equal(b.Aliases, []string{"ws-b"}) {
		t.Errorf("second endpoint = %+v", b)
	}
	if br := spec.Connect["bridge"]; br == nil || len(br.Aliases) != 0 {
		t.Errorf("default bridge endpoint = %+v: it refuses aliases", br)
	}
	if len(spec.Network.EndpointsConfig) != 1 {
		t.Errorf("create gets %d endpoints; API 1.41 takes one", len(spec.Network.EndpointsConfig))
	}
}

func TestRebuildHostNetworkHasNoEndpoints(t *testing.T) {
	old := oldContainer()
	old.HostConfig.NetworkMode = "host"
	spec := Rebuild(old, oldImage, nil, "r@sha256:n", "")
	if spec.Network != nil || len(spec.Connect) != 0 {
		t.Errorf("host network: %+v %+v", spec.Network, spec.Connect)
	}
}

// A container sharing another's network may not set a hostname or expose
// ports: the Engine refuses the create.
func TestRebuildContainerNetworkMode(t *testing.T) {
	old := oldContainer()
	old.HostConfig.NetworkMode = "container:" + oldID
	old.HostConfig.PortBindings = nil
	old.Config.Hostname, old.Config.Domainname = "inherited", "example.org"
	c := Rebuild(old, oldImage, nil, "r@sha256:n", "").Config
	if c.Hostname != "" || c.Domainname != "" || c.ExposedPorts != nil {
		t.Errorf("container network mode: hostname %q domainname %q ports %v", c.Hostname, c.Domainname, c.ExposedPorts)
	}
}

// A healthcheck override keeps only the fields that differ from the old
// image's (or that ExplicitLabel lists); the Engine fills in the rest from
// the new image.
func TestRebuildPartialHealthcheck(t *testing.T) {
	old := oldContainer()
	old.Config.Healthcheck = &container.HealthConfig{Test: oldImage.Healthcheck.Test, Interval: time.Second}
	if h := Rebuild(old, oldImage, nil, "r@sha256:n", "").Config.Healthcheck; h == nil || h.Test != nil || h.Interval != time.Second {
		t.Errorf("interval override = %+v, want the interval alone", h)
	}
	old.Config.Labels[ExplicitLabel] = `{"f":["Healthcheck.Test"]}`
	if h := Rebuild(old, oldImage, nil, "r@sha256:n", "").Config.Healthcheck; h == nil || !slices.Equal(h.Test, oldImage.Healthcheck.Test) {
		t.Errorf("labelled test = %+v, want it kept", h)
	}
}

// Values equal to the old image's defaults are the new image's to set,
// unless ExplicitLabel lists them; the replacement's label lists its
// explicit values equal to the new image's defaults.
func TestRebuildExplicitLabel(t *testing.T) {
	old := oldContainer()
	old.Config.Labels[ExplicitLabel] = Explicit(&container.Config{Env: []string{"WS_VERSION=v1"}, WorkingDir: "/"})
	newImage := &container.Config{Env: []string{"WS_VERSION=v2"}, WorkingDir: "/"}
	c := Rebuild(old, oldImage, newImage, "r@sha256:n", "").Config
	if !slices.Contains(c.Env, "WS_VERSION=v1") || c.WorkingDir != "/" {
		t.Errorf("explicit values lost: env %v workdir %q", c.Env, c.WorkingDir)
	}
	if got, want := c.Labels[ExplicitLabel], `{"f":["WorkingDir"]}`; got != want {
		t.Errorf("replacement's %s = %s, want %s (only what equals the new image's defaults)", ExplicitLabel, got, want)
	}
}

func TestRepositoryOf(t *testing.T) {
	for in, want := range map[string]string{
		"reg:5000/a/b@sha256:x": "reg:5000/a/b", "reg:5000/a/b:v1": "reg:5000/a/b", "a/b": "a/b", "reg:5000/a": "reg:5000/a",
	} {
		if got := RepositoryOf(in); got != want {
			t.Errorf("RepositoryOf(%q) = %q, want %q", in, got, want)
		}
	}
}
