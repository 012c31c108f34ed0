package docker

import (
	"context"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
)

// CommandLabel is the label the agent puts on every container it creates,
// carrying the ID of the command that created it. With the tenant
// selector's labels it is how the agent knows a container is its own: a
// neighbour tenant on the same daemon can take any name, so names prove
// nothing.
const CommandLabel = "tenant-agent.command-id"

// Matches reports whether labels carry every label of the selector. An
// empty selector matches nothing: the agent never acts without one.
func (s Selector) Matches(labels map[string]string) bool {
	if len(s) == 0 {
		return false
	}
	for k, v := range s {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// owner is what a container must carry for one recreate to act on it.
type owner struct {
	sel       Selector
	commandID string
}

// tenants reports whether in is one of the tenant's managed containers.
func (o owner) tenants(in container.InspectResponse) bool {
	return in.Config != nil && o.sel.Matches(in.Config.Labels)
}

// created reports whether in is a container this command created: the
// tenant's labels and the agent's label for this command ID.
func (o owner) created(in container.InspectResponse) bool {
	return o.tenants(in) && o.commandID != "" && in.Config.Labels[CommandLabel] == o.commandID
}

// label marks a replacement's config as this command's: the tenant's
// labels (copied from old already, set again so they cannot be missing)
// and the command ID.
func (o owner) label(cfg *container.Config) {
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	for k, v := range o.sel {
		cfg.Labels[k] = v
	}
	cfg.Labels[CommandLabel] = o.commandID
}

// heldBy is the error for a name or ID held by a container the agent may
// not touch; it says whose, by short ID only.
func (o owner) heldBy(ref string, in container.InspectResponse) error {
	why := "which this agent does not manage"
	if o.tenants(in) {
		why = "which this command did not create"
	}
	return fmt.Errorf("name %q is held by container %s, %s", ref, shortID(in.ID), why)
}

// ownedTemp looks up the temporary name of a recreate. It returns the ID
// of the container holding it if this command created it, "" if no
// container holds it, and an error naming the holder otherwise.
func (e *Engine) ownedTemp(ctx context.Context, o owner, name string) (string, error) {
	in, err := e.cli.ContainerInspect(ctx, name)
	switch {
	case cerrdefs.IsNotFound(err):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("look up %q: %w", name, err)
	case !o.created(in):
		return "", o.heldBy(name, in)
	}
	return in.ID, nil
}

// checkTenant re-reads a container by ID just before a destructive action
// and refuses unless it still carries the tenant's labels. It returns the
// fresh inspect output; a missing container is cerrdefs.IsNotFound.
func (e *Engine) checkTenant(ctx context.Context, o owner, id string) (container.InspectResponse, error) {
	in, err := e.cli.ContainerInspect(ctx, id)
	if err != nil {
		return in, err
	}
	if !o.tenants(in) {
		return in, fmt.Errorf("container %s does not carry this tenant's labels", shortID(id))
	}
	return in, nil
}

// checkCreated is checkTenant for a container this command created.
func (e *Engine) checkCreated(ctx context.Context, o owner, id string) error {
	in, err := e.checkTenant(ctx, o, id)
	if err == nil && !o.created(in) {
		err = fmt.Errorf("container %s was not created by this command", shortID(id))
	}
	return err
}

// removeCreated force-removes a container this command created, with
// the anonymous volumes the Engine made for it alone (an image VOLUME the
// old container did not have): the Engine removes only volumes mounted
// without a source, and none another container uses, so the old
// container's volumes, carried by name, stay. A container that is
// already gone is fine, anything else is left alone.
func (e *Engine) removeCreated(ctx context.Context, o owner, id string) error {
	if err := e.checkCreated(ctx, o, id); err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil
		}
		return err
	}
	if err := e.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove %s: %w", shortID(id), err)
	}
	return nil
}
