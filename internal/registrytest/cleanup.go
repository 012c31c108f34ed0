package registrytest

import (
	"context"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
)

// RemoveContainer force-removes a test's container (by ID or name) and
// every volume it mounted. RemoveVolumes alone is not enough: a recreate
// carries an anonymous volume over by name, after which the Engine no
// longer removes it with the container, and the image's /cache volume
// would pile up run after run.
func RemoveContainer(cli *client.Client, ref string) {
	ctx := context.Background()
	in, err := cli.ContainerInspect(ctx, ref)
	if err != nil {
		return
	}
	cli.ContainerRemove(ctx, in.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	for _, m := range in.Mounts {
		if m.Name != "" {
			cli.VolumeRemove(ctx, m.Name, true)
		}
	}
}
