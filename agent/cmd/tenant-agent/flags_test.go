package main

import (
	"io"
	"os"
	"strings"
	"testing"
)

func TestControlPlaneIDFlag(t *testing.T) {
	const id = "spiffe://molecule.local/controlplane/prod"
	t.Setenv("TENANT_AGENT_CONTROL_PLANE_ID", id)
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil || cfg.ControlPlaneID != id {
		t.Fatalf("from the environment: %q, %v", cfg.ControlPlaneID, err)
	}
	cfg, err = parseFlags([]string{"--control-plane-id", "spiffe://molecule.local/other"}, io.Discard)
	if err != nil || cfg.ControlPlaneID != "spiffe://molecule.local/other" {
		t.Fatalf("the flag wins: %q, %v", cfg.ControlPlaneID, err)
	}
	cfg.ControlPlaneID = "not-a-spiffe-id"
	if err := cfg.CheckAndSetDefaults(); err == nil || !strings.Contains(err.Error(), "--control-plane-id") {
		t.Errorf("a bad ID passed: %v", err)
	}
}

func TestSignaturePolicyFlag(t *testing.T) {
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil || cfg.SignaturePolicy != "" {
		t.Fatalf("default: %q, %v; want verification off", cfg.SignaturePolicy, err)
	}
	t.Setenv("TENANT_AGENT_SIGNATURE_POLICY", "/etc/tenant-agent/signatures.json")
	if cfg, err = parseFlags(nil, io.Discard); err != nil || cfg.SignaturePolicy != "/etc/tenant-agent/signatures.json" {
		t.Fatalf("from the environment: %q, %v", cfg.SignaturePolicy, err)
	}
	if cfg, err = parseFlags([]string{"--signature-policy", "p.json"}, io.Discard); err != nil || cfg.SignaturePolicy != "p.json" {
		t.Fatalf("the flag wins: %q, %v", cfg.SignaturePolicy, err)
	}
}

// --max-parallel-recreates defaults to 4; the deprecated --max-parallel
// (and its variable) still set it, and the new name wins over it.
func TestMaxParallelRecreatesFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  map[string]string
		want int
	}{
		{nil, nil, 4},
		{[]string{"--max-parallel-recreates", "2"}, nil, 2},
		{[]string{"--max-parallel", "3"}, nil, 3},
		{nil, map[string]string{"TENANT_AGENT_MAX_PARALLEL": "1"}, 1},
		{nil, map[string]string{"TENANT_AGENT_MAX_PARALLEL_RECREATES": "6"}, 6},
		{[]string{"--max-parallel", "3", "--max-parallel-recreates", "5"}, nil, 5},
		{[]string{"--max-parallel-recreates", "5"}, map[string]string{"TENANT_AGENT_MAX_PARALLEL": "1"}, 5},
	} {
		for k, v := range c.env {
			t.Setenv(k, v)
		}
		cfg, err := parseFlags(c.args, io.Discard)
		if err != nil || cfg.MaxParallel != c.want {
			t.Errorf("%v %v: %d, %v; want %d", c.args, c.env, cfg.MaxParallel, err, c.want)
		}
		for k := range c.env {
			os.Unsetenv(k)
		}
	}
	var help strings.Builder
	parseFlags([]string{"--help"}, &help)
	if !strings.Contains(help.String(), "deprecated alias of --max-parallel-recreates") {
		t.Errorf("--help does not call --max-parallel deprecated:\n%s", help.String())
	}
}
