// Command demo shows the whole story on one machine (make demo): a
// registry on 127.0.0.1 with workspace images v1 and v2, two workspace
// containers on v1 of a tenant named for this run only (so the agent can
// never take over a container the demo did not create), the control plane
// and the agent
// as real processes, both with a signature policy naming the demo's
// signing key; a promote of the still unsigned v2 that the control plane
// refuses, then v2 signed (as `cosign sign --key` does) and promoted
// through tactl (bars on a terminal), then the fleet with tactl and the
// pin through grpcurl, the manual path. It prints each container's digest and data before and
// after, cleans up everything it started (also on failure or Ctrl-C), and
// exits non-zero unless both containers end on v2 with their data.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/molecule-ai/tenant-agent/e2e/demokit"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/sigtest"
)

const (
	runtime = "codex"
	varDir  = "var/demo"
	// certDir holds a dev PKI made for this run, removed with varDir.
	certDir = varDir + "/certs"
)

// tenant is unique to the run: the agent manages every container carrying
// its tenant's labels, and a fixed name would adopt a user's containers.
var tenant = "demo-" + demokit.RandomHex(4)

func main() {
	os.Exit(demokit.Run(demokit.Demo{Name: "demo", Passed: "both workspaces run v2 with their data", Body: demo}))
}

func demo(ctx context.Context, d *registrytest.Standalone) int {
	cli := demokit.Docker(ctx, d)
	os.RemoveAll(varDir)
	if err := os.MkdirAll(varDir, 0o700); err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() { os.RemoveAll(varDir) })

	if n := demokit.Labelled(ctx, d, cli, tenant); n > 0 {
		d.Fatal(fmt.Sprintf("%d containers already carry tenant %s's labels; the demo touches only what it creates", n, tenant))
	}
	demokit.Step("dev certificates for this run's tenant %s in %s", tenant, certDir)
	demokit.MustRun(ctx, d, "go", "run", "./certs/cmd/devpki", "--out", certDir, tenant)

	demokit.Step("registry on 127.0.0.1 with workspace images v1 and v2 (no base image: a static Go binary)")
	reg := registrytest.StartRegistry(d)
	repo, v1 := reg.Push(d, "molecule-ai/workspace-template-"+runtime, registrytest.WorkspaceImage(d, registrytest.Image{Version: "v1"}))
	_, v2 := reg.Push(d, "molecule-ai/workspace-template-"+runtime, registrytest.WorkspaceImage(d, registrytest.Image{Version: "v2", Padding: 16 << 20}))
	d.Cleanup(func() { registrytest.RemoveImages(d, cli, repo) })
	fmt.Printf("  %s\n  v1 %s\n  v2 %s\n", repo, v1, v2)

	demokit.Step("two %s workspaces of tenant %s on v1", runtime, tenant)
	demokit.Pull(ctx, d, cli, repo+"@"+v1)
	// From here on the registry is a slow link, so the pull of v2 shows
	// its progress.
	reg.Throttle(8 << 20)
	var workspaces []*demokit.Workspace
	for i := 1; i <= 2; i++ {
		workspaces = append(workspaces, demokit.StartWorkspace(ctx, d, cli, tenant, fmt.Sprintf("demo-%s-ws-%d", tenant, i), repo+"@"+v1, "v1"))
	}
	before := map[string]string{}
	for _, w := range workspaces {
		before[w.Name] = w.Digest(ctx, d, cli, repo)
		fmt.Printf("  %-28s %s  port %s  volume %s\n", w.Name, before[w.Name], w.Port, w.Volume)
	}

	demokit.Step("a signing key (what `cosign generate-key-pair` makes) and a signature policy: %s's digests must be signed by it", repo)
	signer := sigtest.NewSigner(d)
	policy := writePolicy(d, repo, signer.PublicKeyPEM)

	agentAddr, adminAddr, httpAddr := registrytest.FreeAddr(d), registrytest.FreeAddr(d), registrytest.FreeAddr(d)
	demokit.Step("control plane (SQLite in %s) and agent, as processes, both verifying signatures with %s", varDir, policy)
	demokit.StartProcess(d, varDir, "controlplane", "bin/controlplane", "--agent-addr", agentAddr, "--admin-addr", adminAddr, "--http-addr", httpAddr,
		"--cert", certDir+"/controlplane.pem", "--key", certDir+"/controlplane-key.pem", "--ca", certDir+"/ca.pem",
		"--store", varDir+"/controlplane.db", "--heartbeat-interval", "2s", "--signature-policy", policy)
	// The agent takes only the demo's own repository, matched whole.
	demokit.StartProcess(d, varDir, "agent", "bin/tenant-agent", "--control-plane", agentAddr, "--server-name", "localhost",
		"--repository-pattern", strings.TrimSuffix(repo, runtime)+"{runtime}", "--allow-repos", repo,
		"--cert", certDir+"/agent-"+tenant+".pem", "--key", certDir+"/agent-"+tenant+"-key.pem", "--ca", certDir+"/ca.pem",
		"--state-dir", varDir+"/agent", "--stability-window", "2s", "--min-free-disk", "256MiB", "--signature-policy", policy)
	tactl := demokit.Tactl{CertDir: certDir, Addr: adminAddr}
	tactl.WaitForAgent(ctx, d, tenant, runtime, "var/demo/*.log")

	demokit.Step("promote the unsigned v2: the control plane refuses it before any tenant sees it (exit 1, no pin recorded)")
	if code := tactl.Run(ctx, d, "promote", runtime, repo+"@"+v2, "--notes", "make demo, unsigned"); code != 1 {
		d.Fatalf("promote of an unsigned image: tactl exit %d, want 1 (refused)", code)
	}

	demokit.Step("sign v2 with the key, as `cosign sign --key cosign.key %s@%s` does", repo, v2)
	fmt.Println("  " + signer.Sign(d, repo+"@"+v2, sigtest.Options{}))

	demokit.Step("promote %s to v2 with tactl: bars on a terminal (the overall tally, then the pull and recreate per tenant), status lines elsewhere", runtime)
	fmt.Println("  (TACTL_ADDR, TACTL_CERT, TACTL_KEY and TACTL_CA point tactl at this control plane as the dev operator)")
	// The agent verifies again on its own host before it pulls: the result
	// lines say who signed the image.
	ok := tactl.Run(ctx, d, "promote", runtime, repo+"@"+v2, "--notes", "make demo") == 0
	if !ok {
		fmt.Println("  tactl promote did not succeed")
	}

	demokit.Step("the fleet and the rollout with tactl")
	tactl.WaitOnPin(ctx, tenant, runtime, len(workspaces))
	tactl.Run(ctx, d, "agents")
	tactl.Run(ctx, d, "rollouts")

	demokit.Step("the manual path: the same pin with grpcurl")
	g := demokit.Grpcurl{CertDir: certDir}
	out, err := g.Command(ctx, adminAddr, `{"runtime":"`+runtime+`"}`, "GetRuntimePin").CombinedOutput()
	if err != nil {
		d.Fatalf("grpcurl GetRuntimePin: %v\n%s", err, out)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fmt.Println("  " + l)
	}

	demokit.Step("before and after")
	fmt.Printf("  %-28s %-73s %-73s %s\n", "workspace", "before", "after", "data kept (/data/history)")
	for _, w := range workspaces {
		after := w.Digest(ctx, d, cli, repo)
		hist, versions := w.History()
		fmt.Printf("  %-28s %-73s %-73s %s\n", w.Name, before[w.Name], after, strings.Join(versions, " then "))
		if after != v2 || !demokit.KeptData(hist) {
			ok = false
		}
	}
	if !ok {
		d.Fatal("the workspaces did not all end on v2 with their data")
	}
	return 0
}

// writePolicy writes the signature policy the control plane and the agent
// share: repo's digests must be signed by the key in publicKeyPEM.
func writePolicy(d *registrytest.Standalone, repo string, publicKeyPEM []byte) string {
	dir := filepath.Join(varDir, "signing")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		d.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "demo.pub"), publicKeyPEM, 0o600); err != nil {
		d.Fatal(err)
	}
	policy := filepath.Join(dir, "policy.json")
	rules := fmt.Sprintf(`{"rules": [{"repository": %q, "keys": ["demo.pub"], "mode": "enforce"}]}`+"\n", repo)
	if err := os.WriteFile(policy, []byte(rules), 0o600); err != nil {
		d.Fatal(err)
	}
	fmt.Printf("  %s:\n  %s", policy, rules)
	return policy
}
