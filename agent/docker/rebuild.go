package docker

import (
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
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
// output (docs/design.md §6), so that it equals what old's own create options
// would give on the new image, without asking anything of the caller's
// command:
//
//   - Config: only the values set at create are kept (ExplicitLabel and
//     the old image's defaults tell them apart, see explicitConfig), so the
//     new image's own defaults apply to the rest, Healthcheck field by
//     field;
//   - HostConfig is kept whole (binds, ports, restart policy, resources,
//     logging, network mode, privileges, AutoRemove); anonymous volumes are
//     mounted again by name as volumes, so their data carries over;
//   - every network endpoint is kept with its aliases (minus old's short
//     ID, which Docker adds itself) and static addresses;
//   - a compose image label is moved to the new image ID;
//   - the replacement's ExplicitLabel lists its explicit values that equal
//     the new image's defaults (newImage; nil lists all explicit values),
//     so the next refresh is exact.
func Rebuild(old container.InspectResponse, oldImage, newImage *container.Config, newRef, newImageID string) Spec {
	img := oldImage
	if img == nil {
		img = &container.Config{}
	}
	host := *old.HostConfig
	host.ContainerIDFile = ""
	host.Binds = slices.Clone(old.HostConfig.Binds)
	host.Mounts = carriedMounts(old)
	host.Links = relinks(old.HostConfig.Links)

	cfg := explicitConfig(old, explicitValues{listed: parseExplicit(old.Config.Labels), img: img})
	cfg.Image = newRef
	if _, ok := cfg.Labels[composeImageLabel]; ok {
		cfg.Labels[composeImageLabel] = newImageID
	}
	if host.NetworkMode.IsContainer() {
		withoutOwnNetworkIdentity(&cfg)
	}
	cfg.Labels[ExplicitLabel] = ambiguous(&cfg, newImage)

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

// explicitConfig is old's Config with only the values set at create: the
// ones x finds explicit, and the fields an image never defaults (hostname,
// tty, stdin, stop timeout...). A Hostname that is old's short ID
// (Docker's default) is dropped.
func explicitConfig(old container.InspectResponse, x explicitValues) container.Config {
	oc := old.Config
	cfg := *oc
	imgFields := map[string]boundField{}
	for _, f := range configFields(x.img) {
		imgFields[f.name] = f
	}
	kept := map[string]bool{}
	for _, f := range configFields(oc) {
		kept[f.name] = f.isSet && x.field(f, imgFields[f.name])
	}
	if !kept[fieldEntrypoint] {
		cfg.Entrypoint = nil
		if !kept[fieldCmd] {
			cfg.Cmd = nil
		}
	} // else the Engine did not inherit the image's Cmd: old's is explicit.
	for name, v := range map[string]*string{fieldWorkingDir: &cfg.WorkingDir, fieldUser: &cfg.User, fieldStopSignal: &cfg.StopSignal} {
		if !kept[name] {
			*v = ""
		}
	}
	if !kept[fieldShell] {
		cfg.Shell = nil
	}
	cfg.Healthcheck = explicitHealthcheck(oc.Healthcheck, kept)

	cfg.Env = nil
	for _, e := range oc.Env {
		if k, v, _ := strings.Cut(e, "="); x.env(k, v) {
			cfg.Env = append(cfg.Env, e)
		}
	}
	cfg.Labels = map[string]string{}
	for k, v := range oc.Labels {
		if !strings.HasPrefix(k, agentLabelPrefix) && x.label(k, v) {
			cfg.Labels[k] = v
		}
	}
	cfg.ExposedPorts = nil
	for p := range oc.ExposedPorts {
		// A published port is exposed by the create itself (docker run -p
		// adds it), whatever the image says.
		if _, published := old.HostConfig.PortBindings[p]; published || x.port(p) {
			if cfg.ExposedPorts == nil {
				cfg.ExposedPorts = nat.PortSet{}
			}
			cfg.ExposedPorts[p] = struct{}{}
		}
	}
	cfg.Volumes = nil
	for v := range oc.Volumes {
		if x.volume(v) {
			if cfg.Volumes == nil {
				cfg.Volumes = map[string]struct{}{}
			}
			cfg.Volumes[v] = struct{}{}
		}
	}
	if cfg.Hostname == shortID(old.ID) {
		cfg.Hostname = ""
	}
	return cfg
}

// explicitHealthcheck keeps the healthcheck fields set at create; the
// Engine fills each zero field from the new image's healthcheck.
func explicitHealthcheck(h *container.HealthConfig, kept map[string]bool) *container.HealthConfig {
	if h == nil {
		return nil
	}
	out := container.HealthConfig{}
	if kept[fieldHealthTest] {
		out.Test = slices.Clone(h.Test)
	}
	if kept[fieldHealthIntvl] {
		out.Interval = h.Interval
	}
	if kept[fieldHealthTmout] {
		out.Timeout = h.Timeout
	}
	if kept[fieldHealthStart] {
		out.StartPeriod = h.StartPeriod
	}
	if kept[fieldHealthStIntv] {
		out.StartInterval = h.StartInterval
	}
	if kept[fieldHealthRetry] {
		out.Retries = h.Retries
	}
	if reflect.ValueOf(out).IsZero() {
		return nil
	}
	return &out
}

// withoutOwnNetworkIdentity clears what a container sharing another's
// network (container:<id>) may not set: the Engine refuses the create
// otherwise, and takes them from the other container.
func withoutOwnNetworkIdentity(cfg *container.Config) {
	cfg.Hostname, cfg.Domainname, cfg.ExposedPorts, cfg.MacAddress = "", "", nil, "" //nolint:staticcheck // MacAddress: deprecated, still refused
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

// carriedMounts is old's HostConfig.Mounts with every anonymous volume
// named, plus a volume mount by name for each anonymous volume no bind or
// mount specifies (an image VOLUME, a bare -v /path), so the replacement
// mounts the same volumes, as volumes, with the same data.
func carriedMounts(old container.InspectResponse) []mount.Mount {
	volumeAt := map[string]string{}
	for _, m := range old.Mounts {
		if m.Type == mount.TypeVolume && m.Name != "" {
			volumeAt[m.Destination] = m.Name
		}
	}
	specified := map[string]bool{}
	for _, b := range old.HostConfig.Binds {
		if parts := strings.Split(b, ":"); len(parts) >= 2 {
			specified[parts[1]] = true
		}
	}
	var out []mount.Mount
	for _, m := range old.HostConfig.Mounts {
		if m.Type == mount.TypeVolume && m.Source == "" {
			m.Source = volumeAt[m.Target]
		}
		specified[m.Target] = true
		out = append(out, m)
	}
	for _, m := range old.Mounts {
		if m.Type != mount.TypeVolume || m.Name == "" || specified[m.Destination] {
			continue
		}
		out = append(out, mount.Mount{Type: mount.TypeVolume, Source: m.Name, Target: m.Destination, ReadOnly: !m.RW})
	}
	return out
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
