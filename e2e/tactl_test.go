package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

var (
	tactlOnce sync.Once
	tactlBin  string
	tactlErr  error
)

// tactlBinary builds tactl once per test process, beside the controlplane
// and tenant-agent binaries.
func tactlBinary(t *testing.T) string {
	t.Helper()
	dir := binaries(t)
	tactlOnce.Do(func() {
		tactlBin = filepath.Join(dir, "tactl")
		if out, err := exec.Command("go", "build", "-o", tactlBin, "../tactl/cmd/tactl").CombinedOutput(); err != nil {
			tactlErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if tactlErr != nil {
		t.Fatalf("build tactl: %v", tactlErr)
	}
	return tactlBin
}

// tactlRun is one finished tactl run.
type tactlRun struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r tactlRun) String() string {
	return fmt.Sprintf("tactl %s: exit %d\n--- stdout:\n%s--- stderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// tactl runs the tactl binary against the env's control plane with the
// operator's certificate, no config file and no TACTL_* of the caller's.
func (e *env) tactl(args ...string) tactlRun {
	e.t.Helper()
	op := e.pki.Files("operator-dev")
	full := append([]string{"--addr", e.adminAddr, "--cert", op.Cert, "--key", op.Key, "--ca", op.CA, "--server-name", "localhost"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tactlBinary(e.t), full...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TACTL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "XDG_CONFIG_HOME="+e.t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := tactlRun{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	default:
		e.t.Fatalf("tactl %s: %v", strings.Join(args, " "), err)
	}
	if testing.Verbose() {
		e.t.Log(r.String())
	}
	return r
}

// history is what the workspace's volume recorded: one line per start.
func (w *workspace) history() string {
	w.e.t.Helper()
	h, err := w.get("/file?path=/data/history")
	if err != nil {
		w.e.t.Fatalf("%s history: %v", w.name, err)
	}
	return h
}

// checkData checks the volume kept what it had before and that the last
// start on it was version.
func (w *workspace) checkData(before, version string) {
	w.e.t.Helper()
	h := w.history()
	lines := strings.Split(strings.TrimSpace(h), "\n")
	if !strings.HasPrefix(h, before) || !strings.Contains(lines[len(lines)-1], " "+version+" ") {
		w.e.t.Errorf("%s volume history %q: want it to start with %q and end with a %s start", w.name, h, before, version)
	}
}

var rolloutIDRe = regexp.MustCompile(`(?m)^rollout (r-\S+):`)

// The real tactl against the real controlplane and tenant-agent binaries,
// over mTLS, on the real Docker Engine: a refresh that rolls back exits
// 1; a promote of a healthy image to two tenants exits 0; a promote of an
// unhealthy image halts (exit 1) and is aborted.
func TestTactlWithRealAgents(t *testing.T) {
	tenants := []string{"acme", "globex"}
	e := newBareEnv(t, tenants...)
	tactlBinary(t)
	addrs := e.freeCPAddrs()
	// A long backoff: after the abort, reconcile retries no tenant whose
	// refresh to the bad pin already failed while the test runs.
	e.startCPBinary(addrs, "--reconcile-backoff", "10m")
	ws := map[string]*workspace{}
	for _, tenant := range tenants {
		ws[tenant] = e.startWorkspace(tenant, e.repo, e.v1, true)
		e.startAgentBinary(tenant, addrs.agent, t.TempDir(), nil)
	}
	for _, tenant := range tenants {
		e.waitAgent(tenant, 1)
	}

	// The helpers fail e.t, so the steps are not subtests: each starts
	// where the one before left the fleet.

	// 1. A refresh to an image whose healthcheck fails rolls back: exit 1.
	{
		w := ws["acme"]
		before, oldID := w.history(), w.inspect().ID
		r := e.tactl("--progress=plain", "refresh", "acme", "codex", "--digest", e.bad)
		if r.code != 1 || !regexp.MustCompile(`(?m)^acme\s+rolled-back: `).MatchString(r.stdout) {
			t.Fatalf("want exit 1 and rolled-back:\n%s", r)
		}
		w.waitHTTP("/version", "v1")
		if in := w.inspect(); in.ID != oldID || !in.State.Running {
			t.Errorf("old container not back: id %s (was %s) running %v", in.ID, oldID, in.State.Running)
		}
		if d := w.digest(); d != e.v1 {
			t.Errorf("acme runs %s, want v1 %s", d, e.v1)
		}
		w.checkData(before, "v1")
		if h := w.history(); !strings.Contains(h, " bad ") {
			t.Errorf("volume history %q: the bad image never started on it", h)
		}
	}

	// 2. A promote of a healthy image to both tenants: exit 0.
	{
		before := map[string]string{}
		for _, tenant := range tenants {
			before[tenant] = ws[tenant].history()
		}
		r := e.tactl("--progress=plain", "promote", "codex", e.repo+"@"+e.v2, "--notes", "e2e tactl")
		if r.code != 0 || !strings.Contains(r.stdout, "completed: 2 tenants: 2 succeeded") {
			t.Fatalf("want exit 0 and a completed rollout:\n%s", r)
		}
		for _, tenant := range tenants {
			w := ws[tenant]
			w.waitHTTP("/version", "v2")
			if d := w.digest(); d != e.v2 {
				t.Errorf("%s runs %s, want v2 %s", tenant, d, e.v2)
			}
			w.checkData(before[tenant], "v2")
		}
	}

	// 3. A promote of the unhealthy image, one tenant at a time, halting
	// after one failure: exit 1; then abort it.
	{
		before, ids := map[string]string{}, map[string]string{}
		for _, tenant := range tenants {
			before[tenant], ids[tenant] = ws[tenant].history(), ws[tenant].inspect().ID
		}
		r := e.tactl("--progress=plain", "promote", "codex", e.repo+"@"+e.bad, "--max-parallel", "1", "--halt-after", "1")
		m := rolloutIDRe.FindStringSubmatch(r.stdout)
		if r.code != 1 || m == nil || !strings.Contains(r.stdout, " halted: ") || !regexp.MustCompile(`(?m)^acme\s+rolled-back`).MatchString(r.stdout) ||
			!regexp.MustCompile(`(?m)^globex\s+skipped`).MatchString(r.stdout) {
			t.Fatalf("want exit 1, acme rolled back, globex skipped and the rollout halted:\n%s", r)
		}
		id := m[1]
		for _, tenant := range tenants {
			w := ws[tenant]
			w.waitHTTP("/version", "v2")
			if in := w.inspect(); in.ID != ids[tenant] || !in.State.Running {
				t.Errorf("%s: container %s running %v, want %s back", tenant, in.ID, in.State.Running, ids[tenant])
			}
		}
		ws["acme"].checkData(before["acme"], "v2")
		if h := ws["globex"].history(); h != before["globex"] {
			t.Errorf("globex was skipped, yet its volume history changed: %q -> %q", before["globex"], h)
		}

		if r := e.tactl("rollout", "abort", id, "--reason", "e2e: bad image"); r.code != 0 || !strings.Contains(r.stdout, id+" aborted") {
			t.Fatalf("want exit 0 and the rollout aborted:\n%s", r)
		}
		r = e.tactl("rollouts", "--runtime", "codex")
		row := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(id) + `\s.*$`).FindString(r.stdout)
		if r.code != 0 || !strings.Contains(row, " aborted ") {
			t.Errorf("want %s listed aborted:\n%s", id, r)
		}

		// Aborted, the rollout leaves codex to reconcile, which refreshes
		// the skipped tenant to the (bad) pin: that rolls back too. Wait
		// for it, so the test ends with no recreate under way.
		admin, ctx := e.admin(), e.ctx()
		var last *controlplanev1.Command
		eventually(t, "globex's reconcile refresh to finish", func() bool {
			resp, err := admin.ListCommands(ctx, &controlplanev1.ListCommandsRequest{Tenant: "globex", Runtime: "codex"})
			if err != nil || len(resp.GetCommands()) == 0 {
				return false
			}
			last = resp.GetCommands()[0]
			return last.GetRequestedBy() == "reconcile" && last.GetResult() != nil
		})
		if last.GetState() != controlplanev1.CommandState_COMMAND_STATE_ROLLED_BACK || last.GetImageDigest() != e.bad {
			t.Errorf("globex's reconcile refresh: %v to %s: %v", last.GetState(), last.GetImageDigest(), last.GetResult())
		}
		for _, tenant := range tenants {
			w := ws[tenant]
			w.waitHTTP("/version", "v2")
			if d := w.digest(); d != e.v2 {
				t.Errorf("%s runs %s, want v2 %s", tenant, d, e.v2)
			}
			w.checkData(before[tenant], "v2")
		}
	}
}
