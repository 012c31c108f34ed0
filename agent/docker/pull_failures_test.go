package docker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

// Against the real Engine: a registry that is down, or a name that does
// not resolve, is retried and then fails as transient; a digest the
// registry does not have fails at once, as permanent.
func TestPullFailuresByKind(t *testing.T) {
	cli := registrytest.Docker(t)
	var logs testlog.Buffer
	engine, err := docker.New("", logs.Logger(t, "docker"))
	if err != nil {
		t.Fatal(err)
	}
	reg := registrytest.StartRegistry(t)
	repo, v1 := reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v1"}))
	t.Cleanup(func() { registrytest.RemoveImages(t, cli, repo) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	missing := "sha256:" + strings.Repeat("0", 64)

	pull := func(ref string, opts docker.PullOptions) (*docker.PullError, time.Duration) {
		t.Helper()
		start := time.Now()
		_, err := engine.Pull(ctx, ref, opts, nil)
		var pe *docker.PullError
		if !errors.As(err, &pe) {
			t.Fatalf("pull %s: %v; want a *PullError", ref, err)
		}
		t.Logf("%v", err)
		return pe, time.Since(start)
	}

	pe, took := pull(repo+"@"+missing, docker.PullOptions{Attempts: 3, Backoff: time.Hour})
	if pe.Transient || pe.Attempts != 1 || took > 30*time.Second {
		t.Errorf("missing digest: transient %v after %d attempts in %v; want permanent at once", pe.Transient, pe.Attempts, took)
	}

	reg.Stop()
	pe, _ = pull(repo+"@"+v1, docker.PullOptions{Attempts: 3, Backoff: 50 * time.Millisecond})
	if !pe.Transient || pe.Attempts != 3 {
		t.Errorf("registry down: transient %v after %d attempts; want transient after 3", pe.Transient, pe.Attempts)
	}
	if n := strings.Count(logs.String(), "pull failed; retrying"); n != 2 {
		t.Errorf("registry down: %d retries logged, want 2", n)
	}

	pe, _ = pull("registry.invalid/molecule-ai/workspace-template-codex@"+missing, docker.PullOptions{Attempts: 2, Backoff: 50 * time.Millisecond})
	if !pe.Transient || pe.Attempts != 2 {
		t.Errorf("a name that does not resolve: transient %v after %d attempts; want transient after 2", pe.Transient, pe.Attempts)
	}
}
