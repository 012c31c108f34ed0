package e2e

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/failpoint"
	"github.com/molecule-ai/tenant-agent/controlplane/server"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// startRefresh starts a refresh and returns its command ID; the command
// goes on after the call.
func (e *env) startRefresh(tenant, digest string) string {
	e.t.Helper()
	stream, err := e.admin().RefreshRuntimeImage(e.ctx(), &controlplanev1.RefreshRuntimeImageRequest{Tenant: tenant, Runtime: "codex", ImageDigest: digest})
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.GetEvent().GetCommand().GetCommandId()
}

func (e *env) command(id string) *controlplanev1.Command {
	e.t.Helper()
	resp, err := e.admin().GetCommand(e.ctx(), &controlplanev1.GetCommandRequest{CommandId: id, IncludeEvents: true})
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.GetCommand()
}

func (e *env) waitFinished(id string) *controlplanev1.Command {
	e.t.Helper()
	var c *controlplanev1.Command
	eventually(e.t, "command "+id+" finished", func() bool {
		c = e.command(id)
		return c.GetResult() != nil
	})
	return c
}

// The agent dies between stopping the old container and starting the new
// one. Started again on the same state dir, it rolls the recreate back:
// the container runs, under its name, with its data, and the control
// plane's record says so.
func TestAgentKilledBetweenStopAndStart(t *testing.T) {
	e := newEnv(t, "acme")
	ws := e.startWorkspace("acme", e.repo, e.v1, true)
	state := t.TempDir()
	crashed := make(chan struct{})
	var once sync.Once
	clearCrash := failpoint.SetCrash(docker.StepStart, func() { once.Do(func() { close(crashed) }) })
	defer clearCrash()
	first := e.startAgent("acme", e.cp.AgentAddr(), state, nil)
	e.waitAgent("acme", 1)
	id := e.startRefresh("acme", e.v2)
	select {
	case <-crashed:
	case <-time.After(wait):
		t.Fatal("the agent never reached the crash point")
	}
	first.stop() // the process is gone: nothing more of it runs
	clearCrash()
	if in := ws.inspect(); in.State.Running {
		t.Fatalf("the old container should be stopped at the crash point")
	}

	e.startAgent("acme", e.cp.AgentAddr(), state, nil)
	c := e.waitFinished(id)
	if c.GetState() != controlplanev1.CommandState_COMMAND_STATE_ROLLED_BACK || !strings.Contains(c.GetResult().GetError(), `stopped during step "start"`) {
		t.Fatalf("command %v: %v", c.GetState(), c.GetResult())
	}
	ws.waitHTTP("/version", "v1")
	if in := ws.inspect(); !in.State.Running || strings.TrimPrefix(in.Name, "/") != ws.name {
		t.Errorf("container after recovery: running %v name %s", in.State.Running, in.Name)
	}
	if hist, _ := ws.get("/file?path=/data/history"); strings.Count(hist, " v1 ") < 2 {
		t.Errorf("volume data: %q", hist)
	}
}

// proxy is a TCP proxy the test can cut and heal.
type proxy struct {
	lis    net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	// silent drops bytes instead of closing: a blackhole, which only
	// keepalive notices.
	silent bool
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *proxy {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{lis: lis, target: target}
	go p.serve()
	t.Cleanup(func() { lis.Close(); p.Cut() })
	return p
}

func (p *proxy) Addr() string { return p.lis.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { p.pipe(up, c); up.Close() }()
		go func() { p.pipe(c, up); c.Close() }()
	}
}

// pipe copies src to dst, dropping what arrives while the proxy is silent.
func (p *proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		silent := p.silent
		p.mu.Unlock()
		if silent {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// Blackhole keeps every connection open but delivers nothing, until Heal.
func (p *proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.silent = true
}

// Cut drops every connection and refuses new ones until Heal.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut, p.silent = false, false
}

// The stream is cut while the image is pulled: the pull goes on, and the
// result reaches the control plane on the next stream, exactly once.
func TestStreamCutDuringPull(t *testing.T) {
	e := newEnv(t, "acme")
	ws := e.startWorkspace("acme", e.repo, e.v1, true)
	px := startProxy(t, e.cp.AgentAddr())
	a := e.startAgent("acme", px.Addr(), t.TempDir(), nil)
	e.waitAgent("acme", 1)
	e.reg.Throttle(2 << 20) // 8 MiB of padding: about four seconds of pull

	id := e.startRefresh("acme", e.v2)
	eventually(t, "the pull to start", func() bool { return e.command(id).GetState() == controlplanev1.CommandState_COMMAND_STATE_RUNNING })
	px.Cut()
	eventually(t, "the control plane to see the agent gone", func() bool {
		resp, _ := e.admin().ListAgents(e.ctx(), &controlplanev1.ListAgentsRequest{Tenant: "acme", ConnectedOnly: true})
		return len(resp.GetAgents()) == 0
	})
	time.Sleep(2 * time.Second) // the pull goes on meanwhile
	px.Heal()

	c := e.waitFinished(id)
	if c.GetState() != controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
		t.Fatalf("command %v: %v\nagent log:\n%s", c.GetState(), c.GetResult(), a.logs.String())
	}
	ws.waitHTTP("/version", "v2")
	if !strings.Contains(a.logs.String(), "redialing") {
		t.Errorf("the agent never lost its stream")
	}
	resp, _ := e.admin().GetCommand(e.ctx(), &controlplanev1.GetCommandRequest{CommandId: id, IncludeEvents: true})
	finished := 0
	for _, ev := range resp.GetEvents() {
		if ev.GetState() == controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
			finished++
		}
	}
	if finished != 1 {
		t.Errorf("%d SUCCEEDED events, want the result recorded once", finished)
	}
	if n := strings.Count(a.logs.String(), "command accepted"); n != 1 {
		t.Errorf("the agent accepted the command %d times", n)
	}
}

func TestPrefetchPullsWithoutTouchingContainers(t *testing.T) {
	e := newEnv(t, "acme")
	ws := e.startWorkspace("acme", e.repo, e.v1, true)
	e.startAgent("acme", e.cp.AgentAddr(), t.TempDir(), nil)
	e.waitAgent("acme", 1)
	oldID := ws.inspect().ID
	stream, err := e.admin().PromoteRuntimeImage(e.ctx(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: e.repo + "@" + e.v2,
		Options: &controlplanev1.RolloutOptions{Prefetch: true, CanaryTenants: []string{"acme"}}})
	if err != nil {
		t.Fatal(err)
	}
	var prefetchOK bool
	for {
		resp, err := stream.Recv()
		if err != nil {
			break
		}
		ev := resp.GetEvent()
		if ev.GetPhase() == controlplanev1.RolloutPhase_ROLLOUT_PHASE_PREFETCH && ev.GetState() == controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
			prefetchOK = true
			// At the end of the prefetch the container is still the old one.
			if ws.inspect().ID != oldID {
				t.Errorf("prefetch touched the container")
			}
		}
	}
	if !prefetchOK {
		t.Errorf("no successful prefetch event")
	}
	ws.waitHTTP("/version", "v2")
}

// Heartbeats that leave out unchanged runtimes keep the agent's record
// true to the Engine, and a change still reaches the control plane.
func TestUnchangedHeartbeatsKeepWhatTheEngineSays(t *testing.T) {
	e := newEnv(t, "acme")
	e.stopCP()
	e.cp = nil
	e.startCPWith(func(c *server.Config) { c.HeartbeatInterval = 100 * time.Millisecond })
	ws := e.startWorkspace("acme", e.repo, e.v1, true)
	e.startAgent("acme", e.cp.AgentAddr(), t.TempDir(), nil)
	e.waitAgent("acme", 1)
	record := func() *controlplanev1.Agent {
		resp, err := e.admin().ListAgents(e.ctx(), &controlplanev1.ListAgentsRequest{Tenant: "acme"})
		if err != nil || len(resp.GetAgents()) != 1 {
			t.Fatalf("ListAgents = %v, %v", resp, err)
		}
		return resp.GetAgents()[0]
	}
	eventually(t, "a second of heartbeats", func() bool {
		a := record()
		return a.GetLastSeen().AsTime().Sub(a.GetConnectedAt().AsTime()) > time.Second
	})
	inspect, err := e.docker.ContainerInspect(e.ctx(), ws.name)
	if err != nil {
		t.Fatal(err)
	}
	rts := record().GetRuntimes()
	if len(rts) != 1 || len(rts[0].GetStatus().GetContainers()) != 1 {
		t.Fatalf("after a second of heartbeats the record shows %v; want the one workspace", rts)
	}
	c := rts[0].GetStatus().GetContainers()[0]
	if c.GetId() != inspect.ID || c.GetName() != strings.TrimPrefix(inspect.Name, "/") || c.GetImageDigest() != e.v1 ||
		c.GetState() != tenantagentv1.ContainerState_CONTAINER_STATE_RUNNING {
		t.Errorf("the record shows %v; the Engine says %s %s running %v on %s", c, inspect.ID, inspect.Name, inspect.State.Running, e.v1)
	}
	if err := e.docker.ContainerStop(e.ctx(), ws.name, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the stop reported", func() bool {
		c := record().GetRuntimes()[0].GetStatus().GetContainers()
		return len(c) == 1 && c[0].GetState() == tenantagentv1.ContainerState_CONTAINER_STATE_EXITED
	})
}

// Health follows Docker events, not only the heartbeat: with a heartbeat
// of an hour, a stopped container still shows up at the control plane.
func TestHealthFollowsDockerEvents(t *testing.T) {
	e := newEnv(t, "acme")
	e.stopCP()
	e.cp = nil
	e.startCPWith(func(c *server.Config) { c.HeartbeatInterval = time.Hour })
	ws := e.startWorkspace("acme", e.repo, e.v1, true)
	e.startAgent("acme", e.cp.AgentAddr(), t.TempDir(), nil)
	e.waitAgent("acme", 1)
	if err := e.docker.ContainerStop(e.ctx(), ws.name, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the stop reported", func() bool {
		resp, err := e.admin().ListAgents(e.ctx(), &controlplanev1.ListAgentsRequest{Tenant: "acme"})
		if err != nil || len(resp.GetAgents()) != 1 || len(resp.GetAgents()[0].GetRuntimes()) != 1 {
			return false
		}
		c := resp.GetAgents()[0].GetRuntimes()[0].GetStatus().GetContainers()
		return len(c) == 1 && c[0].GetState() == tenantagentv1.ContainerState_CONTAINER_STATE_EXITED
	})
}
