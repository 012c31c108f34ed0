package docker_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// cuttableProxy forwards a unix socket to Docker's and can cut every
// connection through it and refuse new ones until restored: the agent's
// event stream drops as on a daemon restart or a broken connection.
type cuttableProxy struct {
	t            *testing.T
	path, target string
	mu           sync.Mutex
	lis          net.Listener
	conns        []net.Conn
}

func newCuttableProxy(t *testing.T) *cuttableProxy {
	daemon := registrytest.Docker(t).DaemonHost()
	target, ok := strings.CutPrefix(daemon, "unix://")
	if !ok {
		t.Skipf("Docker at %s, not a unix socket", daemon)
	}
	p := &cuttableProxy{t: t, path: filepath.Join(t.TempDir(), "docker.sock"), target: target}
	p.restore()
	t.Cleanup(p.cut)
	return p
}

func (p *cuttableProxy) restore() {
	lis, err := net.Listen("unix", p.path)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.lis = lis
	p.mu.Unlock()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("unix", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, d)
			p.mu.Unlock()
			go func() { defer c.Close(); io.Copy(d, c) }()
			go func() { defer d.Close(); io.Copy(c, d) }()
		}
	}()
}

func (p *cuttableProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lis != nil {
		p.lis.Close()
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.lis, p.conns = nil, nil
}

// waitFor polls the watched view (memory, not the Engine) until cond
// holds of the snapshot.
func waitFor(t *testing.T, s *docker.State, what string, cond func(map[string]docker.Status, bool) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		cs, ok := s.Snapshot()
		byName := map[string]docker.Status{}
		for _, c := range cs {
			byName[c.Name()] = c.Status()
		}
		if cond(byName, ok) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: never; the view has %v (current: %v)", what, byName, ok)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The agent's view of its containers follows Docker's events, with no
// request to the Engine for a death, a removal or a health change; when
// the event stream drops, the view says it is not current, and the resync
// on reattaching catches what changed meanwhile. A periodic resync of an
// unchanged host is a container list and nothing else.
func TestWatchedStateFollowsEventsAndResyncs(t *testing.T) {
	t.Parallel()
	cli := registrytest.Docker(t)
	proxy := newCuttableProxy(t)
	requests := &docker.RequestCounter{}
	engine, err := docker.NewWithOptions(docker.Options{Host: "unix://" + proxy.path, Requests: requests, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { engine.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg := registrytest.StartRegistry(t)
	repo, v1 := reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v1"}))
	t.Cleanup(func() { registrytest.RemoveImages(t, cli, repo) })
	if _, err := engine.Pull(ctx, repo+"@"+v1, docker.PullOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	name := "watch-" + randomSuffix()
	sel := docker.Selector{"molecule.org-id": name, "molecule.platform.managed": "true"}
	run := func(n string, hc *container.HealthConfig) string {
		c, err := cli.ContainerCreate(ctx, &container.Config{Image: repo + "@" + v1, Labels: sel, Healthcheck: hc}, nil, nil, nil, name+"-"+n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { registrytest.RemoveContainer(cli, c.ID) })
		if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		return c.ID
	}
	a, b := run("a", nil), run("b", nil)
	state := engine.Watch(ctx, sel, docker.WatchOptions{MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond})
	waitFor(t, state, "a and b healthy", func(v map[string]docker.Status, ok bool) bool {
		return ok && v[name+"-a"].Health == container.Healthy && v[name+"-b"].Health == container.Healthy
	})
	// c's first healthcheck runs 2 s after its start: it is seen starting
	// first, and turns healthy while the test watches.
	c := run("c", &container.HealthConfig{Test: []string{"CMD", "/workspace", "health"}, Interval: 2 * time.Second, Retries: 2})
	waitFor(t, state, "c started", func(v map[string]docker.Status, ok bool) bool {
		return ok && v[name+"-c"].State == container.StateRunning && v[name+"-c"].Health == container.Starting
	})

	requests.Reset()
	waitFor(t, state, "c healthy", func(v map[string]docker.Status, ok bool) bool { return v[name+"-c"].Health == container.Healthy })
	if err := cli.ContainerKill(ctx, a, "SIGKILL"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, state, "a killed", func(v map[string]docker.Status, ok bool) bool { return v[name+"-a"].State == container.StateExited })
	// RemoveVolumes: b's anonymous /cache volume goes with it.
	if err := cli.ContainerRemove(ctx, b, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, state, "b removed", func(v map[string]docker.Status, ok bool) bool { _, there := v[name+"-b"]; return ok && !there })
	if n := requests.Counts(); len(n) != 0 {
		t.Errorf("a health change, a kill and a removal cost Engine requests %v, want none", n)
	}

	proxy.cut()
	waitFor(t, state, "the view no longer current", func(_ map[string]docker.Status, ok bool) bool { return !ok })
	if err := cli.ContainerKill(ctx, c, "SIGKILL"); err != nil { // while the stream is down
		t.Fatal(err)
	}
	proxy.restore()
	waitFor(t, state, "c's death seen after the stream is back", func(v map[string]docker.Status, ok bool) bool {
		return ok && v[name+"-c"].State == container.StateExited
	})
	if n := requests.Counts()["GET /containers/json"]; n == 0 {
		t.Errorf("the view caught up without a resync list: %v", requests.Counts())
	}

	// A periodic resync of an unchanged host is one list, no inspect.
	quick := engine.Watch(ctx, sel, docker.WatchOptions{ResyncInterval: 100 * time.Millisecond})
	waitFor(t, quick, "second view current", func(_ map[string]docker.Status, ok bool) bool { return ok })
	requests.Reset()
	time.Sleep(time.Second)
	for kind, n := range requests.Counts() {
		if kind != "GET /containers/json" {
			t.Errorf("periodic resyncs of an unchanged host sent %d %s", n, kind)
		}
	}
}
