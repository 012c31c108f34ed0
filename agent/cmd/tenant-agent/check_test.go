package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"google.golang.org/grpc"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/controlplane/server"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/sigtest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// buildAgent builds this binary, as it ships.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tenant-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// controlPlane runs the real control plane in process on loopback and
// returns its server and the PKI its certificates come from.
func controlPlane(t *testing.T) (*server.Server, *pkitest.PKI) {
	t.Helper()
	p := pkitest.New(t, "acme")
	cfg := server.Defaults()
	cfg.AgentAddr, cfg.AdminAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.TLS, cfg.TrustDomain = p.Files("controlplane"), pkitest.TrustDomain
	cfg.StorePath = filepath.Join(t.TempDir(), "cp.db")
	cfg.ReconnectStagger, cfg.ShutdownGrace = 0, time.Second
	cfg.Logger = (&testlog.Buffer{}).Logger(t, "cp")
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return srv, p
}

// managedContainer creates a stopped container of tenant acme's codex
// runtime, labelled with a selector of its own, and returns the labels
// flag that selects it and its name.
func managedContainer(t *testing.T) (labels, name string) {
	t.Helper()
	cli := registrytest.Docker(t)
	reg := registrytest.StartRegistry(t)
	b := make([]byte, 4)
	rand.Read(b)
	name = fmt.Sprintf("ws-check-%x", b)
	repo, digest := reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: name}))
	t.Cleanup(func() { registrytest.RemoveImages(t, cli, repo) })
	engine, err := docker.New("", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()
	ctx := context.Background()
	if _, err := engine.Pull(ctx, repo+"@"+digest, docker.PullOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: repo + "@" + digest, Labels: map[string]string{"molecule.org-id": "acme", "tenant-agent.test": name}}, nil, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { registrytest.RemoveContainer(cli, c.ID) })
	return "molecule.org-id={tenant},tenant-agent.test=" + name, name
}

func check(t *testing.T, bin string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"check"}, args...)...)
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		t.Logf("tenant-agent check (exit %d):\n%s", ee.ExitCode(), out)
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tenant-agent check:\n%s", out)
	return 0, string(out)
}

func agentArgs(p *pkitest.PKI, addr, labels, stateDir string) []string {
	f := p.Files("agent-acme")
	return []string{"--control-plane", addr, "--server-name", "localhost", "--cert", f.Cert, "--key", f.Key, "--ca", f.CA,
		"--trust-domain", pkitest.TrustDomain, "--labels", labels, "--state-dir", stateDir}
}

func TestCheckSubcommand(t *testing.T) {
	bin := buildAgent(t)
	srv, p := controlPlane(t)
	labels, name := managedContainer(t)
	args := agentArgs(p, srv.AgentAddr(), labels, t.TempDir())

	code, out := check(t, bin, args...)
	for _, want := range []string{
		"ok   certificate: spiffe://molecule.local/tenant/acme, expires in ",
		"ok   control plane: " + srv.AgentAddr() + ": mTLS handshake done, stream admitted",
		"ok   docker: Engine ",
		"ok   runtime codex: 1 on 127.0.0.1:",
		name + " (created)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("pass case lacks %q:\n%s", want, out)
		}
	}
	if code != 0 || strings.Contains(out, "FAIL") {
		t.Errorf("pass case: exit %d:\n%s", code, out)
	}

	t.Run("signature policy", func(t *testing.T) {
		dir := t.TempDir()
		good, bad := filepath.Join(dir, "good.json"), filepath.Join(dir, "bad.json")
		os.WriteFile(good, []byte(`{"rules": [{"repository": "registry.example/molecule-ai/*", "keys": [`+strconv.Quote(string(sigtest.NewSigner(t).PublicKeyPEM))+`], "mode": "warn"}]}`), 0o600)
		os.WriteFile(bad, []byte(`{"rules": [{"repository": "registry.example/molecule-ai/*", "keys": ["missing.pub"]}]}`), 0o600)
		code, out := check(t, bin, append(append([]string(nil), args...), "--signature-policy", good)...)
		if want := "ok   signature policy: " + good + ": 1 rules (0 enforce, 1 warn)"; code != 0 || !strings.Contains(out, want) {
			t.Errorf("exit %d, want 0 and %q:\n%s", code, want, out)
		}
		code, out = check(t, bin, append(append([]string(nil), args...), "--signature-policy", bad)...)
		if want := "FAIL signature policy: signature policy " + bad + ": rules[0]: keys[0]: open "; code != 1 || !strings.Contains(out, want) {
			t.Errorf("exit %d, want 1 and %q:\n%s", code, want, out)
		}
		// The agent itself refuses to start on it, in one line naming the file.
		cmd := exec.Command(bin, append(append([]string(nil), args...), "--signature-policy", bad)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		last := strings.TrimSpace(stderr.String())
		if i := strings.LastIndex(last, "\n"); i >= 0 {
			last = last[i+1:]
		}
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.HasPrefix(last, "tenant-agent: --signature-policy: signature policy "+bad+": rules[0]: keys[0]: open ") {
			t.Errorf("start with a bad policy: %v, last line %q", err, last)
		}
	})

	t.Run("wrong CA", func(t *testing.T) {
		other := pkitest.New(t, "acme")
		wrong := append(append([]string(nil), args...), "--ca", other.Files("ca").CA)
		code, out := check(t, bin, wrong...)
		want := "FAIL control plane: " + srv.AgentAddr() + ": control plane certificate not trusted by --ca " + other.Files("ca").CA + `: issued by "tenant-agent dev CA molecule.local", which the bundle does not hold`
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("exit %d, want 1 and %q:\n%s", code, want, out)
		}
	})

	t.Run("control plane down", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		down := l.Addr().String()
		l.Close()
		code, out := check(t, bin, append(append([]string(nil), args...), "--control-plane", down)...)
		if code != 1 || !strings.Contains(out, "FAIL control plane: "+down+": ") || !strings.Contains(out, "connection refused") {
			t.Errorf("exit %d, want 1 and the refused connection:\n%s", code, out)
		}
		if !strings.Contains(out, "ok   docker: ") {
			t.Errorf("the other checks still run:\n%s", out)
		}
	})

	t.Run("denied", func(t *testing.T) {
		src, err := mtls.NewSource(p.Files("operator-dev"), nil)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(srv.AdminAddr(), grpc.WithTransportCredentials(mtls.ClientCredentials(src, "localhost")))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		admin := controlplanev1.NewAdminServiceClient(conn)
		if _, err := admin.DenyTenant(context.Background(), &controlplanev1.DenyTenantRequest{Tenant: "acme", Reason: "lost laptop"}); err != nil {
			t.Fatal(err)
		}
		defer admin.AllowTenant(context.Background(), &controlplanev1.AllowTenantRequest{Tenant: "acme"})
		code, out := check(t, bin, args...)
		if code != 1 || !strings.Contains(out, `FAIL control plane: `+srv.AgentAddr()+`: the control plane refused this agent: tenant "acme" is denied: lost laptop`) {
			t.Errorf("exit %d, want 1 and the denial's reason:\n%s", code, out)
		}
	})
}

// The agent with --http-addr serves /metrics and /healthz on loopback.
func TestAgentServesMetrics(t *testing.T) {
	bin := buildAgent(t)
	srv, p := controlPlane(t)
	labels, _ := managedContainer(t)
	addr := registrytest.FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, append(agentArgs(p, srv.AgentAddr(), labels, t.TempDir()), "--http-addr", ":"+port)...)
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	base := "http://127.0.0.1:" + port
	var body string
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(body, "tenantagent_agent_controlplane_connected 1") {
		if time.Now().After(deadline) {
			t.Fatalf("the agent never reported itself connected:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
		if resp, err := http.Get(base + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}
	}
	for _, want := range []string{"tenantagent_agent_docker_reachable 1", "tenantagent_agent_heartbeat_age_seconds "} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz = %d with Docker up", resp.StatusCode)
	}
}
