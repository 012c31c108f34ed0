package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// grpcurl calls the admin API with the real grpcurl and the operator cert.
func (e *env) grpcurl(method, data string) string {
	e.t.Helper()
	op := e.pki.Files("operator-dev")
	out, err := exec.Command("go", "tool", "grpcurl", "-cacert", op.CA, "-cert", op.Cert, "-key", op.Key, "-servername", "localhost",
		"-d", data, e.adminAddr, "controlplane.v1.AdminService/"+method).CombinedOutput()
	if err != nil {
		e.t.Fatalf("grpcurl %s: %v\n%s", method, err, out)
	}
	return string(out)
}

// Two tenants share one Docker daemon, each with codex and hermes
// workspaces and its own agent process. Promoting codex through grpcurl
// moves only codex, of both tenants, each by its own agent; a tenant whose
// agent starts after the promote converges when it connects.
func TestSystemPromoteTwoTenantsTwoRuntimes(t *testing.T) {
	e := newBareEnv(t, "acme", "globex", "latecomer")
	hermesRepo, hermesV1 := e.reg.Push(t, "molecule-ai/workspace-template-hermes", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v1"}))
	t.Cleanup(func() { registrytest.RemoveImages(t, e.docker, hermesRepo) })
	addrs := e.freeCPAddrs()
	e.startCPBinary(addrs)

	codex := map[string]*workspace{}
	hermes := map[string]*workspace{}
	agents := map[string]*process{}
	for _, tenant := range []string{"acme", "globex"} {
		codex[tenant] = e.startWorkspace(tenant, e.repo, e.v1, true)
		hermes[tenant] = e.startWorkspace(tenant, hermesRepo, hermesV1, true)
		agents[tenant] = e.startAgentBinary(tenant, addrs.agent, t.TempDir(), nil)
	}
	for _, tenant := range []string{"acme", "globex"} {
		e.waitAgent(tenant, 1)
	}
	hermesIDs := map[string]string{"acme": hermes["acme"].inspect().ID, "globex": hermes["globex"].inspect().ID}

	out := e.grpcurl("PromoteRuntimeImage", `{"runtime":"codex","image_ref":"`+e.repo+"@"+e.v2+`","notes":"e2e"}`)
	if !strings.Contains(out, "ROLLOUT_EVENT_KIND_COMPLETED") || !strings.Contains(out, "2 tenants: 2 succeeded") {
		t.Fatalf("promote output:\n%s", out)
	}
	for _, tenant := range []string{"acme", "globex"} {
		codex[tenant].waitHTTP("/version", "v2")
		if d := codex[tenant].digest(); d != e.v2 {
			t.Errorf("%s codex digest %s, want %s", tenant, d, e.v2)
		}
		if id := hermes[tenant].inspect().ID; id != hermesIDs[tenant] {
			t.Errorf("%s hermes container was recreated", tenant)
		}
		// Each agent touched only its own tenant's containers.
		other := map[string]string{"acme": "globex", "globex": "acme"}[tenant]
		if strings.Contains(agents[tenant].logs.String(), codex[other].name) {
			t.Errorf("%s's agent mentions %s's container %s", tenant, other, codex[other].name)
		}
	}

	// The latecomer was offline during the promote: it adopts the pin.
	late := e.startWorkspace("latecomer", e.repo, e.v1, true)
	e.startAgentBinary("latecomer", addrs.agent, t.TempDir(), nil)
	late.waitHTTP("/version", "v2")
	if d := late.digest(); d != e.v2 {
		t.Errorf("latecomer digest %s", d)
	}
	// The new container serves before the agent's result is stored (the
	// agent checks the container, then reports).
	eventually(t, "the latecomer's reconcile command recorded SUCCEEDED", func() bool {
		out = e.grpcurl("ListCommands", `{"tenant":"latecomer"}`)
		return strings.Contains(out, "COMMAND_STATE_SUCCEEDED")
	})
	if !strings.Contains(out, `"requestedBy": "reconcile"`) {
		t.Errorf("latecomer's commands:\n%s", out)
	}
}

// kill -9 the control plane while the agent pulls; restart it on the same
// SQLite file. The command ends SUCCEEDED, recorded once.
func TestSystemControlPlaneKilledDuringPull(t *testing.T) {
	e := newBareEnv(t, "acme")
	addrs := e.freeCPAddrs()
	cp := e.startCPBinary(addrs)
	ws := e.startWorkspace("acme", e.repo, e.v1, true)
	agent := e.startAgentBinary("acme", addrs.agent, t.TempDir(), nil)
	e.waitAgent("acme", 1)
	e.reg.Throttle(2 << 20) // about four seconds of pull

	id := e.startRefresh("acme", e.v2)
	eventually(t, "the pull under way", func() bool { return e.command(id).GetState() == controlplanev1.CommandState_COMMAND_STATE_RUNNING })
	cp.kill()
	time.Sleep(time.Second)
	e.startCPBinary(addrs)

	c := e.waitFinished(id)
	if c.GetState() != controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
		t.Fatalf("command %v: %v\nagent:\n%s", c.GetState(), c.GetResult(), agent.logs.String())
	}
	ws.waitHTTP("/version", "v2")
	resp, err := e.admin().GetCommand(e.ctx(), &controlplanev1.GetCommandRequest{CommandId: id, IncludeEvents: true})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ev := range resp.GetEvents() {
		if ev.GetState() == controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d SUCCEEDED events, want 1", n)
	}
	if strings.Count(agent.logs.String(), `msg="command accepted"`) != 1 {
		t.Errorf("the agent accepted the command more than once")
	}
}

// kill -9 the agent in the middle of a recreate (the old container is
// stopped, the new one not started); restart it. Every container runs,
// none is missing, volumes are intact, and the control plane's record
// matches what happened.
func TestSystemAgentKilledDuringRecreate(t *testing.T) {
	e := newBareEnv(t, "acme")
	addrs := e.freeCPAddrs()
	e.startCPBinary(addrs)
	ws := e.startWorkspace("acme", e.repo, e.v1, true)
	state := t.TempDir()
	agent := e.startAgentBinary("acme", addrs.agent, state, []string{"TENANT_AGENT_TEST_CRASH_AT=start", "TENANT_AGENT_TEST_CRASH_HANG=1"})
	e.waitAgent("acme", 1)
	id := e.startRefresh("acme", e.v2)
	eventually(t, "the agent at its crash point", func() bool { return strings.Contains(agent.logs.String(), "crash point reached") })
	agent.kill()
	if ws.inspect().State.Running {
		t.Fatal("the old container should be stopped at the crash point")
	}

	e.startAgentBinary("acme", addrs.agent, state, nil)
	c := e.waitFinished(id)
	if c.GetState() != controlplanev1.CommandState_COMMAND_STATE_ROLLED_BACK {
		t.Fatalf("command %v: %v", c.GetState(), c.GetResult())
	}
	ws.waitHTTP("/version", "v1")
	if in := ws.inspect(); !in.State.Running || strings.TrimPrefix(in.Name, "/") != ws.name {
		t.Errorf("after recovery: running %v name %s", in.State.Running, in.Name)
	}
	if hist, _ := ws.get("/file?path=/data/history"); strings.Count(hist, " v1 ") != 2 {
		t.Errorf("volume history %q: want two v1 starts (before and after the rollback)", hist)
	}
	for _, r := range c.GetResult().GetContainers() {
		if r.GetName() == ws.name && r.GetNewContainerId() != ws.inspect().ID {
			t.Errorf("the record says %s runs %s, Docker says %s", ws.name, r.GetNewContainerId(), ws.inspect().ID)
		}
	}
}

// A promote to an image whose healthcheck fails: each tenant rolls back,
// the rollout halts after the configured failures, every container runs
// the old image.
func TestSystemUnhealthyPromoteHalts(t *testing.T) {
	e := newBareEnv(t, "t1", "t2", "t3")
	addrs := e.freeCPAddrs()
	e.startCPBinary(addrs)
	var all []*workspace
	for _, tenant := range []string{"t1", "t2", "t3"} {
		all = append(all, e.startWorkspace(tenant, e.repo, e.v1, true))
		e.startAgentBinary(tenant, addrs.agent, t.TempDir(), nil)
	}
	for _, tenant := range []string{"t1", "t2", "t3"} {
		e.waitAgent(tenant, 1)
	}
	out := e.grpcurl("PromoteRuntimeImage", `{"runtime":"codex","image_ref":"`+e.repo+"@"+e.bad+`","options":{"max_parallel_tenants":1,"halt_after_failures":2}}`)
	if !strings.Contains(out, "ROLLOUT_EVENT_KIND_HALTED") || !strings.Contains(out, "0 succeeded, 2 failed, 1 skipped") {
		t.Fatalf("promote output:\n%s", out)
	}
	if strings.Count(out, "COMMAND_STATE_ROLLED_BACK") < 2 {
		t.Errorf("want two rolled-back tenants:\n%s", out)
	}
	for _, w := range all {
		w.waitHTTP("/version", "v1")
		if d := w.digest(); d != e.v1 {
			t.Errorf("%s runs %s, want v1", w.name, d)
		}
	}
}

// The agent's network to the control plane goes silent (no RST: packets
// vanish) for longer than the keepalive. The control plane shows the
// agent disconnected meanwhile; the agent reconnects when it heals.
func TestSystemNetworkCutLongerThanKeepalive(t *testing.T) {
	e := newBareEnv(t, "acme")
	addrs := e.freeCPAddrs()
	e.startCPBinary(addrs, "--keepalive-time", "2s", "--keepalive-timeout", "2s", "--keepalive-min-time", "5s")
	e.startWorkspace("acme", e.repo, e.v1, true)
	px := startProxy(t, addrs.agent)
	agent := e.startAgentBinary("acme", px.Addr(), t.TempDir(), nil, "--keepalive-time", "10s", "--keepalive-timeout", "2s")
	e.waitAgent("acme", 1)

	px.Blackhole()
	eventually(t, "the control plane to see the agent gone", func() bool {
		resp, err := e.admin().ListAgents(e.ctx(), &controlplanev1.ListAgentsRequest{Tenant: "acme", ConnectedOnly: true})
		return err == nil && len(resp.GetAgents()) == 0
	})
	eventually(t, "the agent to notice", func() bool { return strings.Contains(agent.logs.String(), "redialing") })
	px.Heal()
	e.waitAgent("acme", 1)
}
