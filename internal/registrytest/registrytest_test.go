package registrytest

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/image"
)

// The daemon can pull a no-base image by digest from the loopback registry.
func TestDaemonPullsFromLoopbackRegistry(t *testing.T) {
	docker := Docker(t)
	reg := StartRegistry(t)
	repo, digest := reg.Push(t, "molecule-ai/workspace-template-probe", WorkspaceImage(t, Image{Version: "probe"}))
	ref := repo + "@" + digest
	ctx := context.Background()
	rc, err := docker.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	out, _ := io.ReadAll(rc)
	rc.Close()
	if strings.Contains(string(out), `"error"`) {
		t.Fatalf("pull stream reports an error: %s", out)
	}
	t.Cleanup(func() { RemoveImages(t, docker, repo) })
	inspect, err := docker.ImageInspect(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, d := range inspect.RepoDigests {
		found = found || d == ref
	}
	if !found || inspect.Config.Healthcheck == nil || len(inspect.Config.Volumes) != 1 {
		t.Errorf("pulled image: RepoDigests %v, healthcheck %v, volumes %v", inspect.RepoDigests, inspect.Config.Healthcheck, inspect.Config.Volumes)
	}
}
