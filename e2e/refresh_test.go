package e2e

import (
	"io"
	"strings"
	"testing"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// refresh calls RefreshRuntimeImage and reads its stream to the end.
func (e *env) refresh(tenant, digest string) (*controlplanev1.Command, []*controlplanev1.CommandEvent) {
	e.t.Helper()
	stream, err := e.admin().RefreshRuntimeImage(e.ctx(), &controlplanev1.RefreshRuntimeImageRequest{Tenant: tenant, Runtime: "codex", ImageDigest: digest})
	if err != nil {
		e.t.Fatal(err)
	}
	var events []*controlplanev1.CommandEvent
	var last *controlplanev1.Command
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return last, events
		}
		if err != nil {
			e.t.Fatalf("refresh stream: %v", err)
		}
		events = append(events, resp.GetEvent())
		if c := resp.GetEvent().GetCommand(); c != nil {
			last = c
		}
	}
}

// waitAgent waits until the control plane lists tenant's agent as
// connected with its codex containers.
func (e *env) waitAgent(tenant string, containers int) {
	e.t.Helper()
	eventually(e.t, tenant+"'s agent connected with its containers", func() bool {
		resp, err := e.admin().ListAgents(e.ctx(), &controlplanev1.ListAgentsRequest{Tenant: tenant, ConnectedOnly: true})
		if err != nil || len(resp.GetAgents()) != 1 {
			return false
		}
		for _, rt := range resp.GetAgents()[0].GetRuntimes() {
			if rt.GetStatus().GetRuntime() == "codex" && len(rt.GetStatus().GetContainers()) == containers {
				return true
			}
		}
		return false
	})
}

func TestRefreshThroughTheControlPlane(t *testing.T) {
	e := newEnv(t, "acme")
	ws := e.startWorkspace("acme", e.repo, e.v1, true)
	stopped := e.startWorkspace("acme", e.repo, e.v1, false)
	a := e.startAgent("acme", e.cp.AgentAddr(), t.TempDir(), nil)
	e.waitAgent("acme", 2)

	cmd, events := e.refresh("acme", e.v2)
	if cmd.GetState() != controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
		t.Fatalf("command ended %v: %s\nagent log:\n%s", cmd.GetState(), cmd.GetError(), a.logs.String())
	}
	var pulling, phases int
	for _, ev := range events {
		if p := ev.GetProgress(); p != nil {
			phases++
			if p.GetPhase() == tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING && p.GetTotalBytes() > 0 {
				pulling++
			}
		}
	}
	if pulling == 0 || phases < 5 {
		t.Errorf("progress: %d pull reports with bytes, %d in all", pulling, phases)
	}
	res := cmd.GetResult()
	if len(res.GetContainers()) != 2 || res.GetPullDuration().AsDuration() <= 0 {
		t.Fatalf("result = %v", res)
	}
	for _, c := range res.GetContainers() {
		if c.GetOutcome() != tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED || c.GetNewDigest() != e.v2 || c.GetOldDigest() != e.v1 {
			t.Errorf("container result %v", c)
		}
	}
	ws.waitHTTP("/version", "v2")
	if hist, _ := ws.get("/file?path=/data/history"); !strings.Contains(hist, " v1 ") || !strings.Contains(hist, " v2 ") {
		t.Errorf("volume history %q", hist)
	}
	if ws.digest() != e.v2 || stopped.digest() != e.v2 {
		t.Errorf("digests after: %s %s", ws.digest(), stopped.digest())
	}
	if stopped.inspect().State.Running {
		t.Errorf("the stopped container was started")
	}
	// Secrets in container env stay on the host: not in the control
	// plane's log, not in its store's view of the command.
	if strings.Contains(e.cpLogs.String(), "do-not-leak") || strings.Contains(cmd.String(), "do-not-leak") {
		t.Errorf("container environment reached the control plane")
	}

	// Refreshing again to the same digest touches nothing.
	before := ws.inspect().ID
	again, _ := e.refresh("acme", e.v2)
	if again.GetState() != controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
		t.Fatalf("second refresh %v: %s", again.GetState(), again.GetError())
	}
	for _, c := range again.GetResult().GetContainers() {
		if c.GetOutcome() != tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ALREADY_CURRENT {
			t.Errorf("second refresh touched %s: %v", c.GetName(), c.GetOutcome())
		}
	}
	if ws.inspect().ID != before {
		t.Errorf("container recreated although already on the digest")
	}
}

func TestUnhealthyImageRollsBackThroughTheControlPlane(t *testing.T) {
	e := newEnv(t, "acme")
	ws := e.startWorkspace("acme", e.repo, e.v1, true)
	e.startAgent("acme", e.cp.AgentAddr(), t.TempDir(), nil)
	e.waitAgent("acme", 1)
	oldID := ws.inspect().ID
	cmd, _ := e.refresh("acme", e.bad)
	if cmd.GetState() != controlplanev1.CommandState_COMMAND_STATE_ROLLED_BACK || !strings.Contains(cmd.GetResult().GetError(), "unhealthy") {
		t.Fatalf("command %v: %v", cmd.GetState(), cmd.GetResult())
	}
	if in := ws.inspect(); in.ID != oldID || !in.State.Running {
		t.Errorf("old container not back: id %s running %v", in.ID, in.State.Running)
	}
	ws.waitHTTP("/version", "v1")
}

func TestRegistryDownOrDigestMissingStopsNothing(t *testing.T) {
	e := newEnv(t, "acme")
	ws := e.startWorkspace("acme", e.repo, e.v1, true)
	e.startAgent("acme", e.cp.AgentAddr(), t.TempDir(), nil)
	e.waitAgent("acme", 1)
	oldID, startedAt := ws.inspect().ID, ws.inspect().State.StartedAt

	missing := "sha256:" + strings.Repeat("9", 64)
	cmd, _ := e.refresh("acme", missing)
	if cmd.GetState() != controlplanev1.CommandState_COMMAND_STATE_FAILED || !strings.Contains(cmd.GetResult().GetError(), "nothing was changed") {
		t.Fatalf("missing digest: %v %v", cmd.GetState(), cmd.GetResult())
	}
	e.reg.Stop()
	cmd, _ = e.refresh("acme", e.v2)
	if cmd.GetState() != controlplanev1.CommandState_COMMAND_STATE_FAILED || cmd.GetResult().GetFailedPhase() != tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING {
		t.Fatalf("registry down: %v %v", cmd.GetState(), cmd.GetResult())
	}
	if in := ws.inspect(); in.ID != oldID || in.State.StartedAt != startedAt || !in.State.Running {
		t.Errorf("the container was touched: id %s started %s", in.ID, in.State.StartedAt)
	}
}

func TestRefusalsTouchNothing(t *testing.T) {
	e := newEnv(t, "acme")
	ws := e.startWorkspace("acme", e.repo, e.v1, true)
	e.startAgent("acme", e.cp.AgentAddr(), t.TempDir(), nil)
	e.waitAgent("acme", 1)
	oldID := ws.inspect().ID

	// A pin on a repository the agent does not allow (the default
	// allow-list is the repository the runtime runs).
	other, digest := e.reg.Push(t, "elsewhere/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "elsewhere"}))
	stream, err := e.admin().PromoteRuntimeImage(e.ctx(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: other + "@" + digest})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			break
		}
	}
	resp, err := e.admin().ListCommands(e.ctx(), &controlplanev1.ListCommandsRequest{Tenant: "acme"})
	if err != nil || len(resp.GetCommands()) == 0 {
		t.Fatalf("commands: %v %v", resp, err)
	}
	c := resp.GetCommands()[0]
	if c.GetState() != controlplanev1.CommandState_COMMAND_STATE_FAILED || !strings.Contains(c.GetResult().GetError(), "refused") {
		t.Errorf("disallowed repository: %v %q", c.GetState(), c.GetResult().GetError())
	}
	if ws.inspect().ID != oldID {
		t.Errorf("a refused command touched the container")
	}
	registrytest.RemoveImages(t, e.docker, other)
}
