package main

import (
	"io"
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
