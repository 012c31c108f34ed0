package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

// TestTables: agents, pins, commands and rollouts as tables (golden),
// wide, and JSON.
func TestTables(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme", "beta")
	c.agent("acme", cptest.Succeed)
	c.agent("beta", fail("manifest unknown"))
	if r := c.tactl("promote", "codex", refV2, "--max-parallel", "1", "--git-sha", "4f2a9c1", "--notes", "first", "--progress", "plain"); r.code != 1 {
		t.Fatalf("promote: %s", r)
	}
	c.waitFor("acme's health on the pin", func() bool {
		resp, err := c.client.ListAgents(context.Background(), &controlplanev1.ListAgentsRequest{Tenant: "acme"})
		return err == nil && len(resp.GetAgents()) == 1 && resp.GetAgents()[0].GetRuntimes()[0].GetOnPin() == 1
	})

	r := c.tactl("agents")
	if r.code != 0 {
		t.Fatalf("agents: %s", r)
	}
	golden(t, "agents.golden", cells(r.stdout))
	if r := c.tactl("agents", "-o", "wide"); r.code != 0 || !strings.Contains(r.stdout, "codex 1/1") || !strings.Contains(r.stdout, "spiffe://molecule.local/tenant/beta") {
		t.Errorf("agents -o wide: %s", r)
	}
	r = c.tactl("agents", "-o", "json", "--tenant", "beta")
	var agents struct {
		Agents []struct {
			Tenant    string
			Connected bool
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &agents); err != nil || r.code != 0 || len(agents.Agents) != 1 || agents.Agents[0].Tenant != "beta" || !agents.Agents[0].Connected {
		t.Errorf("agents -o json: %v\n%s", err, r)
	}

	r = c.tactl("pins")
	if r.code != 0 {
		t.Fatalf("pins: %s", r)
	}
	golden(t, "pins.golden", cells(r.stdout))
	if r := c.tactl("pins", "--history", "codex", "-o", "wide"); r.code != 0 || !strings.Contains(r.stdout, refV2) || !strings.Contains(r.stdout, "first") {
		t.Errorf("pins --history: %s", r)
	}

	r = c.tactl("commands", "--state", "failed")
	if r.code != 0 {
		t.Fatalf("commands: %s", r)
	}
	golden(t, "commands-failed.golden", cells(r.stdout))
	if r := c.tactl("commands", "--state", "bogus"); r.code != 2 || !strings.Contains(r.stderr, "rolled-back") {
		t.Errorf("commands --state bogus: %s", r)
	}

	r = c.tactl("rollouts")
	if r.code != 0 {
		t.Fatalf("rollouts: %s", r)
	}
	golden(t, "rollouts.golden", cells(r.stdout))
	if r := c.tactl("rollouts", "-o", "wide", "--state", "completed"); r.code != 0 || !strings.Contains(r.stdout, "--max-parallel 1") {
		t.Errorf("rollouts -o wide: %s", r)
	}
}
