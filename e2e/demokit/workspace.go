package demokit

import (
	"context"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// Workspace is a workspace container a demo started, like the real ones:
// the tenant's labels, a named volume on /data and a port published on
// 127.0.0.1.
type Workspace struct {
	Name, Port, Volume, ID string
}

// StartWorkspace creates and starts workspace name of tenant on image ref
// and waits until it answers with version. The container and its volumes
// are removed at cleanup.
func StartWorkspace(ctx context.Context, d *registrytest.Standalone, cli *client.Client, tenant, name, ref, version string) *Workspace {
	w := &Workspace{Name: name, Volume: name + "-data"}
	w.Port = registrytest.FreePort(d)
	cli.ContainerRemove(ctx, name, container.RemoveOptions{Force: true}) // a leftover of an interrupted run
	if _, err := cli.VolumeCreate(ctx, volume.CreateOptions{Name: w.Volume}); err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() { cli.VolumeRemove(context.Background(), w.Volume, true) })
	created, err := cli.ContainerCreate(ctx, &container.Config{
		Image:        ref,
		Env:          []string{"WORKSPACE_ID=" + name},
		Labels:       map[string]string{"molecule.org-id": tenant, "molecule.platform.managed": "true", "molecule.workspace": name},
		ExposedPorts: nat.PortSet{"8080/tcp": {}},
	}, &container.HostConfig{
		Binds:         []string{w.Volume + ":/data"},
		PortBindings:  nat.PortMap{"8080/tcp": {{HostIP: "127.0.0.1", HostPort: w.Port}}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
	}, nil, nil, name)
	if err != nil {
		d.Fatal(err)
	}
	w.ID = created.ID
	d.Cleanup(func() {
		bg := context.Background()
		in, err := cli.ContainerInspect(bg, name)
		if err != nil {
			return
		}
		cli.ContainerRemove(bg, in.ID, container.RemoveOptions{Force: true})
		for _, m := range in.Mounts {
			if m.Name != "" && m.Name != w.Volume {
				cli.VolumeRemove(bg, m.Name, true) // the image's anonymous /cache volume
			}
		}
	})
	if err := cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		d.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if v, err := w.Get("/version"); err == nil && v == version {
			return w
		}
		if time.Now().After(deadline) {
			d.Fatalf("workspace %s did not come up", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Get asks the workspace for path on its published port.
func (w *Workspace) Get(path string) (string, error) { return registrytest.Get(w.Port, path) }

// Digest is the digest, in repo, of the image the workspace's container
// (by name: the current one after a recreate) runs.
func (w *Workspace) Digest(ctx context.Context, d *registrytest.Standalone, cli *client.Client, repo string) string {
	in, err := cli.ContainerInspect(ctx, w.Name)
	if err != nil {
		d.Fatal(err)
	}
	img, err := cli.ImageInspect(ctx, in.Image)
	if err != nil {
		d.Fatal(err)
	}
	for _, rd := range img.RepoDigests {
		if r, dg, ok := strings.Cut(rd, "@"); ok && r == repo {
			return dg
		}
	}
	return "(no digest)"
}

// History reads the workspace's /data/history, one line per start written
// by the versions that ran on its volume: the raw file and the versions in
// order.
func (w *Workspace) History() (raw string, versions []string) {
	raw, _ = w.Get("/file?path=/data/history")
	for _, l := range strings.Split(strings.TrimSpace(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 {
			versions = append(versions, f[1])
		}
	}
	return raw, versions
}

// KeptData reports whether the history shows the workspace ran v1 and
// then v2 on the same volume.
func KeptData(history string) bool {
	return strings.Contains(history, " v1 ") && strings.Contains(history, " v2 ")
}
