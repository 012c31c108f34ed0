package main

import (
	"strings"
	"testing"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// TestPromotePlain: a promote to two tenants, one at a time, in plain
// mode: a line per state change and progress report, a result line per
// tenant, the end; exit 0.
func TestPromotePlain(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme", "beta")
	c.agent("acme", cptest.Succeed)
	c.agent("beta", cptest.Succeed)
	r := c.tactl("promote", "codex", refV2, "--max-parallel", "1", "--notes", "test", "--progress", "plain")
	if r.code != 0 {
		t.Fatalf("promote: %s", r)
	}
	golden(t, "promote-plain.golden", dropProgress(normalize(r.stdout)))
	if r.stderr != "" {
		t.Errorf("stderr: %s", r.stderr)
	}
}

// TestRefreshPlain: one tenant's refresh in plain mode; exit 0.
func TestRefreshPlain(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme")
	c.agent("acme", cptest.Succeed)
	r := c.tactl("refresh", "acme", "codex", "--digest", digestV2)
	if r.code != 0 {
		t.Fatalf("refresh: %s", r)
	}
	golden(t, "refresh-plain.golden", dropEarlyStates(normalize(r.stdout)))
}

// TestExitCodeOneWhenWorkFails: a failed refresh, a rolled-back recreate
// and a halted promote exit 1, saying why.
func TestExitCodeOneWhenWorkFails(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme", "beta", "gamma", "delta")
	c.agent("acme", fail("registry unreachable: dial tcp 10.0.0.1:443: connection refused"))
	c.agent("beta", cptest.RollBack)
	c.agent("gamma", fail("manifest unknown"))
	c.agent("delta", cptest.Succeed)

	r := c.tactl("refresh", "acme", "codex", "--digest", digestV2)
	if r.code != 1 || !strings.Contains(r.stdout, "failed: pulling: registry unreachable") {
		t.Errorf("failed refresh: %s", r)
	}
	r = c.tactl("refresh", "beta", "codex", "--digest", digestV2)
	if r.code != 1 || !strings.Contains(r.stdout, "rolled-back: health gate: new container unhealthy") {
		t.Errorf("rolled-back refresh: %s", r)
	}
	r = c.tactl("promote", "codex", refV2, "--max-parallel", "1", "--halt-after", "2")
	if r.code != 1 || !strings.Contains(r.stdout, " halted: 2 of its tenants failed (halt after 2)") {
		t.Errorf("halted promote: %s", r)
	}
	golden(t, "promote-halted.golden", dropProgress(normalize(r.stdout)))
}

// TestRefreshTellsTheSignatureCheck: the result line says who signed the
// image, or, when the agent's policy only warns, that it was not verified
// and why; a refusal names the verifying phase.
func TestRefreshTellsTheSignatureCheck(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme", "beta", "gamma")
	withSignature := func(sig *tenantagentv1.SignatureCheck) cptest.Executor {
		return func(cmd *tenantagentv1.RefreshRuntimeImage) *tenantagentv1.CommandResult {
			r := cptest.Succeed(cmd)
			r.Signature = sig
			return r
		}
	}
	c.agent("acme", withSignature(&tenantagentv1.SignatureCheck{Rule: "registry.example/*", Mode: "enforce", Verified: true, SignedBy: "keys/release.pub"}))
	c.agent("beta", withSignature(&tenantagentv1.SignatureCheck{Rule: "registry.example/*", Mode: "warn", Problem: "no signature"}))
	c.agent("gamma", func(cmd *tenantagentv1.RefreshRuntimeImage) *tenantagentv1.CommandResult {
		return &tenantagentv1.CommandResult{CommandId: cmd.GetCommandId(), Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED,
			Error: "no signature", FailedPhase: tenantagentv1.CommandPhase_COMMAND_PHASE_VERIFYING}
	})
	for tenant, want := range map[string]struct {
		code int
		text string
	}{
		"acme":  {0, "; signed by keys/release.pub"},
		"beta":  {0, "; NOT VERIFIED (warn mode): no signature"},
		"gamma": {1, "failed: verifying: no signature"},
	} {
		r := c.tactl("refresh", tenant, "codex", "--digest", digestV2, "--progress", "plain")
		if r.code != want.code || !strings.Contains(r.stdout, want.text) {
			t.Errorf("%s: want exit %d and %q: %s", tenant, want.code, want.text, r)
		}
	}
}
