package docker

import (
	"slices"
	"strings"

	"github.com/docker/docker/api/types/container"
)

// DependsOn returns the containers c needs, as its HostConfig names them
// (a name or an ID): the one whose network namespace it shares
// (--network container:X), those it takes volumes from (--volumes-from
// X[:ro]) and those it links to (--link X[:alias]).
func (c Container) DependsOn() []string {
	h := c.Inspect.HostConfig
	if h == nil {
		return nil
	}
	var refs []string
	if h.NetworkMode.IsContainer() {
		refs = append(refs, h.NetworkMode.ConnectedContainer())
	}
	for _, v := range h.VolumesFrom {
		ref, _, _ := strings.Cut(v, ":")
		refs = append(refs, ref)
	}
	for _, l := range h.Links {
		// The Engine shows links as "/x:/dependant/alias".
		ref, _, _ := strings.Cut(strings.TrimPrefix(l, "/"), ":")
		refs = append(refs, ref)
	}
	return refs
}

// Is reports whether ref names c, as the Engine resolves a reference: its
// name, or its ID or an unambiguous prefix of it (12 characters or more,
// the short ID).
func (c Container) Is(ref string) bool {
	ref = strings.TrimPrefix(ref, "/")
	return ref != "" && (ref == c.Name() || len(ref) >= 12 && strings.HasPrefix(c.Inspect.ID, ref))
}

// Repoint returns c with every reference to the container oldID (by ID or
// ID prefix) in its HostConfig pointing at newID instead: once a container
// it depends on was recreated, its rebuild must name the new one. Names
// need nothing: the replacement took the old name.
func (c Container) Repoint(oldID, newID string) Container {
	if c.Inspect.ContainerJSONBase == nil || c.Inspect.HostConfig == nil || oldID == newID {
		return c
	}
	base, host := *c.Inspect.ContainerJSONBase, *c.Inspect.HostConfig
	base.HostConfig, c.Inspect.ContainerJSONBase = &host, &base
	byID := func(ref string) bool { return len(ref) >= 12 && strings.HasPrefix(oldID, ref) }
	if host.NetworkMode.IsContainer() && byID(host.NetworkMode.ConnectedContainer()) {
		host.NetworkMode = container.NetworkMode("container:" + newID)
	}
	host.VolumesFrom = slices.Clone(host.VolumesFrom)
	for i, v := range host.VolumesFrom {
		if ref, mode, _ := strings.Cut(v, ":"); byID(ref) {
			host.VolumesFrom[i] = strings.TrimSuffix(newID+":"+mode, ":")
		}
	}
	return c
}
