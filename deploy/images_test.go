// Package deploy holds the deployment files; its test builds both images
// the way `make images` does and runs them on the local Engine.
package deploy

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// buildImage builds the Dockerfile on a context laid out as the
// repository's (bin/ with the static binaries, deploy/rootfs), under
// .dockerignore, and removes the image when the test ends.
func buildImage(t *testing.T, dockerfile, tag string) {
	t.Helper()
	ctxDir := t.TempDir()
	for _, b := range []struct{ name, pkg string }{{"controlplane", "../controlplane/cmd/controlplane"}, {"tenant-agent", "../agent/cmd/tenant-agent"}} {
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(ctxDir, "bin", b.name), b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.name, err, out)
		}
	}
	copyFile(t, "../.dockerignore", filepath.Join(ctxDir, ".dockerignore"), 0o644)
	copyFile(t, "rootfs/var/lib/controlplane/.keep", filepath.Join(ctxDir, "deploy/rootfs/var/lib/controlplane/.keep"), 0o644)
	if out, err := exec.Command("docker", "build", "-q", "-f", dockerfile, "-t", tag, ctxDir).CombinedOutput(); err != nil {
		t.Fatalf("docker build %s: %v\n%s", dockerfile, err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", tag).Run() })
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// The control plane image runs as an unprivileged user, finds its
// certificates and store from the image's environment defaults, writes its
// store, and serves /healthz on its published HTTP port.
func TestControlPlaneImageRunsUnprivilegedFromItsEnvironment(t *testing.T) {
	registrytest.Docker(t)
	const tag = "tenant-agent/controlplane:imagetest"
	buildImage(t, "controlplane.Dockerfile", tag)

	pki := pkitest.New(t)
	certs := t.TempDir()
	os.Chmod(certs, 0o755)
	files := pki.Files("controlplane")
	// The container's user is not root: it reads copies it may read.
	copyFile(t, files.Cert, filepath.Join(certs, "controlplane.pem"), 0o644)
	copyFile(t, files.Key, filepath.Join(certs, "controlplane-key.pem"), 0o644)
	copyFile(t, files.CA, filepath.Join(certs, "ca.pem"), 0o644)

	name := fmt.Sprintf("ta-imagetest-%d", time.Now().UnixNano())
	out, err := exec.Command("docker", "run", "-d", "--name", name, "-v", certs+":/certs:ro", "-p", "127.0.0.1::9090", tag).CombinedOutput()
	if err != nil {
		t.Fatalf("docker run: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", "-v", name).Run() })
	user, _ := exec.Command("docker", "inspect", "-f", "{{.Config.User}}", name).Output()
	if u := strings.TrimSpace(string(user)); u == "" || u == "root" || strings.HasPrefix(u, "0") {
		t.Errorf("the control plane image runs as %q; want an unprivileged user", u)
	}
	port, err := exec.Command("docker", "port", name, "9090/tcp").Output()
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + strings.TrimSpace(strings.Split(string(port), "\n")[0]) + "/healthz"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		resp, err := http.Get(url)
		if err == nil && resp.StatusCode == http.StatusOK {
			resp.Body.Close()
			break
		}
		if ctx.Err() != nil {
			logs, _ := exec.Command("docker", "logs", name).CombinedOutput()
			t.Fatalf("/healthz never answered 200 (%v); logs:\n%s", err, logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// The agent image takes its settings from TENANT_AGENT_* variables: a
// variable given at run time wins over the image's default (flags in the
// ENTRYPOINT would silently win over both).
func TestAgentImageHonoursItsEnvironment(t *testing.T) {
	registrytest.Docker(t)
	const tag = "tenant-agent/agent:imagetest"
	buildImage(t, "agent.Dockerfile", tag)
	out, err := exec.Command("docker", "run", "--rm", "-e", "TENANT_AGENT_CERT=/elsewhere/agent-from-env.pem", tag).CombinedOutput()
	if err == nil {
		t.Fatalf("the agent started without certificates:\n%s", out)
	}
	if !strings.Contains(string(out), "/elsewhere/agent-from-env.pem") {
		t.Fatalf("the agent did not use TENANT_AGENT_CERT from the environment:\n%s", out)
	}
}
