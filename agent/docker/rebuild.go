package docker

import (
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
)

// composeImageLabel is where docker compose records a service's image ID;
// it must follow the image, or compose sees the container as diverged.
const composeImageLabel = "com.docker.compose.image"

// Spec is everything needed to create a replacement container.
type Spec struct {
	Config     *container.Config
	HostConfig *container.HostConfig
	// Network is the endpoint the container is created on (Engine API
	// before 1.44 accepts one at create); Connect are the other endpoints,
	// connected before the first start.
	Network *network.NetworkingConfig
	Connect map[string]*network.EndpointSettings
}

// Rebuild derives the replacement of old on a new image from old's inspect
// output (DESIGN.md §6), without asking anything of the caller's command:
//
//   - Config: the values old inherited from its image are removed (so the
//     new image's own defaults apply), what was set at run time is kept;
//   - a Hostname that is old's short ID (Docker's default) is dropped;
//   - HostConfig is kept whole (binds, ports, restart policy, resources,
//     logging, network mode, privileges); anonymous volumes are mounted
//     again by name so their data carries over;
//   - every network endpoint is kept with its aliases (minus old's short
//     ID, which Docker adds itself) and static addresses;
//   - a compose image label is moved to the new image ID.
func Rebuild(old container.InspectResponse, oldImage, newImage *container.Config, newRef, newImageID string) Spec {
	cfg := *old.Config
	img := oldImage
	if img == nil {
		img = &container.Config{}
	}
	cfg.Image = newRef
	cfg.Env = withoutItems(old.Config.Env, img.Env)
	cfg.Labels = withoutEntries(old.Config.Labels, img.Labels)
	if _, ok := cfg.Labels[composeImageLabel]; ok {
		cfg.Labels[composeImageLabel] = newImageID
	}
	if slices.Equal(cfg.Cmd, img.Cmd) {
		cfg.Cmd = nil
	}
	if slices.Equal(cfg.Entrypoint, img.Entrypoint) {
		cfg.Entrypoint = nil
	}
	if reflect.DeepEqual(cfg.Healthcheck, img.Healthcheck) {
		cfg.Healthcheck = nil
	}
	cfg.ExposedPorts = withoutKeys(old.Config.ExposedPorts, img.ExposedPorts)
	cfg.Volumes = withoutKeys(old.Config.Volumes, img.Volumes)
	for _, f := range []struct {
		v     *string
		image string
	}{{&cfg.WorkingDir, img.WorkingDir}, {&cfg.User, img.User}, {&cfg.StopSignal, img.StopSignal}} {
		if *f.v == f.image {
			*f.v = ""
		}
	}
	if cfg.Hostname == shortID(old.ID) {
		cfg.Hostname = ""
	}

	host := *old.HostConfig
	host.ContainerIDFile = ""
	host.Binds = append(slices.Clone(old.HostConfig.Binds), anonymousVolumeBinds(old)...)
	host.Links = relinks(old.HostConfig.Links)

	spec := Spec{Config: &cfg, HostConfig: &host, Connect: map[string]*network.EndpointSettings{}}
	primary := string(host.NetworkMode)
	if primary == "" || primary == "default" {
		primary = network.NetworkBridge
	}
	if host.NetworkMode.IsHost() || host.NetworkMode.IsNone() || host.NetworkMode.IsContainer() || old.NetworkSettings == nil {
		return spec
	}
	for name, ep := range old.NetworkSettings.Networks {
		kept := endpoint(ep, old.ID, name)
		if name == primary {
			spec.Network = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{name: kept}}
		} else {
			spec.Connect[name] = kept
		}
	}
	return spec
}

// endpoint keeps an endpoint's configuration and drops its operational
// data (IDs, addresses assigned at start).
func endpoint(ep *network.EndpointSettings, oldID, networkName string) *network.EndpointSettings {
	if ep == nil {
		return &network.EndpointSettings{}
	}
	out := &network.EndpointSettings{Links: slices.Clone(ep.Links), DriverOpts: maps.Clone(ep.DriverOpts), GwPriority: ep.GwPriority}
	if ep.IPAMConfig != nil {
		ipam := *ep.IPAMConfig
		out.IPAMConfig = &ipam
	}
	// The default bridge network refuses aliases; elsewhere Docker adds
	// the short ID itself, so keeping old's would pile up one per
	// recreate.
	if networkName != network.NetworkBridge {
		for _, a := range ep.Aliases {
			if a != shortID(oldID) {
				out.Aliases = append(out.Aliases, a)
			}
		}
	}
	return out
}

// anonymousVolumeBinds mounts old's volumes that no bind or mount names
// (anonymous volumes, from the image's VOLUME or a bare -v /path) by their
// generated names, so the new container gets the same data.
func anonymousVolumeBinds(old container.InspectResponse) []string {
	named := map[string]bool{}
	for _, b := range old.HostConfig.Binds {
		parts := strings.Split(b, ":")
		if len(parts) >= 2 {
			named[parts[1]] = true
		}
	}
	for _, m := range old.HostConfig.Mounts {
		named[m.Target] = true
	}
	var binds []string
	for _, m := range old.Mounts {
		if m.Type != mount.TypeVolume || m.Name == "" || named[m.Destination] {
			continue
		}
		b := m.Name + ":" + m.Destination
		if !m.RW {
			b += ":ro"
		}
		binds = append(binds, b)
	}
	return binds
}

// relinks turns inspect's "/target:/self/alias" back into "target:alias".
func relinks(links []string) []string {
	var out []string
	for _, l := range links {
		target, alias, ok := strings.Cut(l, ":")
		if !ok {
			out = append(out, l)
			continue
		}
		out = append(out, strings.TrimPrefix(target, "/")+":"+alias[strings.LastIndex(alias, "/")+1:])
	}
	return out
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func withoutItems(items, remove []string) []string {
	var out []string
	for _, it := range items {
		if !slices.Contains(remove, it) {
			out = append(out, it)
		}
	}
	return out
}

func withoutEntries(m, remove map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if rv, ok := remove[k]; !ok || rv != v {
			out[k] = v
		}
	}
	return out
}

func withoutKeys[K comparable, V any](m, remove map[K]V) map[K]V {
	out := map[K]V{}
	for k, v := range m {
		if _, ok := remove[k]; !ok {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
