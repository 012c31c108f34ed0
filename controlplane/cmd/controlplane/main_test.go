package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

const digestV2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestBinaryWithGrpcurl runs the real controlplane binary and drives its
// admin API with the real grpcurl, while an in-process fake agent speaks
// the real protocol to its agent port.
func TestBinaryWithGrpcurl(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "controlplane")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	p := pkitest.New(t, "acme")
	agentAddr, adminAddr, httpAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	files := p.Files("controlplane")
	cmd := exec.Command(bin, "--agent-addr", agentAddr, "--admin-addr", adminAddr, "--http-addr", httpAddr,
		"--cert", files.Cert, "--key", files.Key, "--store", filepath.Join(dir, "var", "cp.db"), "--reconnect-stagger", "0s")
	cmd.Env = append(os.Environ(), "CONTROLPLANE_CA="+files.CA) // the environment fallback, for real
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	serving := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "control plane serving") {
				close(serving)
			}
		}
	}()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	select {
	case <-serving:
	case <-exited:
		t.Fatalf("controlplane exited early:\n%s", logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("controlplane did not start")
	}

	cptest.Connect(t, agentAddr, p.Files("agent-acme"), cptest.Options{Runtimes: []*tenantagentv1.RuntimeStatus{
		cptest.Runtime("codex", "registry.example/molecule-ai/workspace-template-codex", "sha256:"+strings.Repeat("1", 64), 1)}})

	op := p.Files("operator-dev")
	grpcurl := func(args ...string) string {
		t.Helper()
		full := append([]string{"tool", "grpcurl", "-cacert", op.CA, "-cert", op.Cert, "-key", op.Key, "-servername", "localhost"}, args...)
		out, err := exec.Command("go", full...).CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := grpcurl(adminAddr, "list"); !strings.Contains(out, "controlplane.v1.AdminService") {
		t.Errorf("list:\n%s", out)
	}
	out := grpcurl("-d", `{"tenant": "acme", "runtime": "codex", "image_digest": "`+digestV2+`"}`, adminAddr, "controlplane.v1.AdminService/RefreshRuntimeImage")
	for _, want := range []string{`"progress"`, "COMMAND_PHASE_PULLING", `"state": "COMMAND_STATE_SUCCEEDED"`, `"outcome": "COMMAND_OUTCOME_SUCCEEDED"`} {
		if !strings.Contains(out, want) {
			t.Errorf("RefreshRuntimeImage output lacks %s:\n%s", want, out)
		}
	}
	if !strings.HasSuffix(strings.TrimSpace(out), "}") || strings.LastIndex(out, "COMMAND_STATE_SUCCEEDED") < strings.LastIndex(out, "COMMAND_PHASE_PULLING") {
		t.Errorf("the stream did not end with the result:\n%s", out)
	}
	if out := grpcurl("-d", `{"tenant": "acme"}`, adminAddr, "controlplane.v1.AdminService/ListAgents"); !strings.Contains(out, `"identity": "spiffe://molecule.local/tenant/acme"`) || !strings.Contains(out, `"connected": true`) {
		t.Errorf("ListAgents:\n%s", out)
	}

	// SIGTERM: a graceful stop with exit status 0.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-exited
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "stopped") {
		t.Errorf("no clean stop in the log:\n%s", logs.String())
	}
}

func TestFlagsValidateAndFallBackToEnvironment(t *testing.T) {
	t.Setenv("CONTROLPLANE_HEARTBEAT_INTERVAL", "5s")
	cfg, err := parseFlags([]string{"--store", "x.db"}, &bytes.Buffer{})
	if err != nil || cfg.HeartbeatInterval != 5*time.Second || cfg.StorePath != "x.db" {
		t.Fatalf("cfg = %+v, %v", cfg, err)
	}
	t.Setenv("CONTROLPLANE_HEARTBEAT_INTERVAL", "often")
	if _, err := parseFlags(nil, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "CONTROLPLANE_HEARTBEAT_INTERVAL") {
		t.Errorf("bad env value: %v", err)
	}
	t.Setenv("CONTROLPLANE_HEARTBEAT_INTERVAL", "15s")
	if _, err := parseFlags([]string{"--log-format", "xml"}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("bad log format: %v", err)
	}
}

// --signature-policy and --registry-credentials fall back to the
// environment, and a bad file fails the start with one line naming it.
func TestSignatureFlags(t *testing.T) {
	cfg, err := parseFlags(nil, &bytes.Buffer{})
	if err != nil || cfg.SignaturePolicy != "" || cfg.RegistryCredentials != "" || cfg.SignatureTimeout != 30*time.Second {
		t.Fatalf("defaults: %+v, %v", cfg, err)
	}
	dir := t.TempDir()
	policy, creds := filepath.Join(dir, "policy.json"), filepath.Join(dir, "config.json")
	if err := os.WriteFile(policy, []byte(`{"rules": [{"repository": "registry.example/*", "keys": ["missing.pub"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(creds, []byte(`{"auths": {}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONTROLPLANE_SIGNATURE_POLICY", policy)
	t.Setenv("CONTROLPLANE_REGISTRY_CREDENTIALS", creds)
	t.Setenv("CONTROLPLANE_SIGNATURE_TIMEOUT", "5s")
	cfg, err = parseFlags(nil, &bytes.Buffer{})
	if err != nil || cfg.SignaturePolicy != policy || cfg.RegistryCredentials != creds || cfg.SignatureTimeout != 5*time.Second {
		t.Fatalf("from the environment: %+v, %v", cfg, err)
	}
	err = cfg.CheckAndSetDefaults()
	var line string
	for l := range strings.Lines(fmt.Sprint(err)) {
		if strings.Contains(l, "--signature-policy") {
			line = l
		}
	}
	if !strings.Contains(line, policy) || !strings.Contains(line, "missing.pub") || strings.Contains(fmt.Sprint(err), "--registry-credentials") {
		t.Errorf("CheckAndSetDefaults = %v, want one line naming %s and its missing key, and no credentials error", err, policy)
	}

	if err := os.WriteFile(creds, []byte(`{not json`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _ = parseFlags([]string{"--signature-policy", ""}, &bytes.Buffer{})
	if err := cfg.CheckAndSetDefaults(); err == nil || !strings.Contains(err.Error(), "--registry-credentials: registry credentials "+creds) || strings.Contains(err.Error(), "--signature-policy") {
		t.Errorf("bad credentials file: %v", err)
	}
}
