package executor

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/docker/docker/client"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// engineFixture is what the real-Engine executor tests share: the Engine,
// a loopback registry holding workspace images v1 and v2 (v1 pulled), and
// a name unique to the test.
type engineFixture struct {
	cli       *client.Client
	engine    *docker.Engine
	logger    *slog.Logger
	repo      string
	v1, v2    string
	workspace string
}

func newEngineFixture(t *testing.T, ctx context.Context) engineFixture {
	t.Helper()
	f := engineFixture{cli: registrytest.Docker(t), logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	engine, err := docker.New("", f.logger)
	if err != nil {
		t.Fatal(err)
	}
	f.engine = engine
	reg := registrytest.StartRegistry(t)
	f.repo, f.v1 = reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v1"}))
	_, f.v2 = reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v2"}))
	t.Cleanup(func() { registrytest.RemoveImages(t, f.cli, f.repo) })
	if _, err := engine.Pull(ctx, f.repo+"@"+f.v1, docker.PullOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	f.workspace = fmt.Sprintf("ws-%x", b)
	return f
}
