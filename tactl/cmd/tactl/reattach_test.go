package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// proc is tactl running in the background.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	done           chan struct{}
}

func (c *cp) spawn(args ...string) *proc {
	c.t.Helper()
	p := &proc{cmd: exec.Command(filepath.Join(binDir, "tactl"), args...), stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Env = c.env("operator-dev")
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	c.t.Cleanup(func() { p.cmd.Process.Kill(); <-p.done })
	return p
}

func (p *proc) waitOutput(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.stdout.String(), want) {
		select {
		case <-p.done:
			t.Fatalf("tactl exited before printing %q:\n%s\n%s", want, p.stdout.String(), p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("tactl did not print %q:\n%s\n%s", want, p.stdout.String(), p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) wait(t *testing.T) result {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("tactl did not exit:\n%s\n%s", p.stdout.String(), p.stderr.String())
	}
	return result{stdout: p.stdout.String(), stderr: p.stderr.String(), code: p.cmd.ProcessState.ExitCode()}
}

// finish sends the result of every command the agent holds.
func finish(t *testing.T, a *cptest.Agent, outcome tenantagentv1.CommandOutcome) {
	t.Helper()
	for _, r := range a.Refreshes() {
		res := &tenantagentv1.CommandResult{CommandId: r.GetCommandId(), Outcome: outcome}
		if outcome != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
			res.Error = "gave up"
		}
		if err := a.SendResult(res); err != nil {
			t.Fatal(err)
		}
	}
}

// waitRefresh waits until the agent holds a refresh.
func waitRefresh(a *cptest.Agent) {
	a.WaitFor(15*time.Second, "a refresh", func(msgs []*tenantagentv1.ControlMessage) bool {
		for _, m := range msgs {
			if m.GetRefresh() != nil {
				return true
			}
		}
		return false
	})
}

// TestDetachAndReattachCommand: refresh --detach prints the command's ID
// and leaves it running; tactl watch follows it to its end and exits by
// its outcome.
func TestDetachAndReattachCommand(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme")
	a := c.agent("acme", cptest.Hang)
	r := c.tactl("refresh", "acme", "codex", "--digest", digestV2, "--detach")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || !strings.HasPrefix(id, "c-") || !strings.Contains(r.stderr, "tactl watch "+id) {
		t.Fatalf("refresh --detach: %s", r)
	}
	waitRefresh(a)
	w := c.spawn("watch", id, "--progress", "plain")
	w.waitOutput(t, "running")
	finish(t, a, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_ROLLED_BACK)
	r = w.wait(t)
	if r.code != 1 || !strings.Contains(r.stdout, "rolled-back: gave up") {
		t.Errorf("watch of a command that rolls back: %s", r)
	}
	// Watching it again, finished: the same end, at once.
	if r := c.tactl("watch", id); r.code != 1 || !strings.Contains(r.stdout, "rolled-back") {
		t.Errorf("watch of a finished command: %s", r)
	}
}

// TestDetachAndReattachRollout: promote --detach prints the rollout's ID;
// tactl watch follows it to its end with the promote's exit status.
func TestDetachAndReattachRollout(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme", "beta")
	c.agent("acme", cptest.Succeed)
	b := c.agent("beta", cptest.Hang)
	r := c.tactl("promote", "codex", refV2, "--detach")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || !strings.HasPrefix(id, "r-") || !strings.Contains(r.stderr, "tactl watch "+id) {
		t.Fatalf("promote --detach: %s", r)
	}
	waitRefresh(b)
	w := c.spawn("watch", id, "--progress", "plain")
	w.waitOutput(t, "acme")
	finish(t, b, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED)
	r = w.wait(t)
	if r.code != 0 || !strings.Contains(r.stdout, "rollout "+id+" completed: 2 tenants: 2 succeeded") {
		t.Errorf("watch of the rollout: %s", r)
	}
	for _, tenant := range []string{"acme", "beta"} {
		if strings.Count(r.stdout, "\n"+tenant) < 1 || !strings.Contains(r.stdout, "succeeded: ") {
			t.Errorf("no result line for %s: %s", tenant, r)
		}
	}
}

// TestInterruptAndTimeoutLeaveWorkRunning: Ctrl-C (exit 130) and
// --timeout (exit 1) stop following, say how to re-attach, and the
// command goes on.
func TestInterruptAndTimeoutLeaveWorkRunning(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme")
	a := c.agent("acme", cptest.Hang)
	p := c.spawn("refresh", "acme", "codex", "--digest", digestV2, "--progress", "plain")
	p.waitOutput(t, "running")
	p.cmd.Process.Signal(syscall.SIGINT)
	r := p.wait(t)
	if r.code != 130 || !strings.Contains(r.stderr, "interrupted; command c-") || !strings.Contains(r.stderr, "re-attach with: tactl watch c-") {
		t.Errorf("Ctrl-C: %s", r)
	}
	id := commandOf(t, r.stdout)
	r = c.tactl("watch", id, "--timeout", "1s", "--progress", "plain")
	if r.code != 1 || !strings.Contains(r.stderr, "gave up waiting after 1s (--timeout)") || !strings.Contains(r.stdout, "goes on") {
		t.Errorf("--timeout: %s", r)
	}
	finish(t, a, tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED)
	if r := c.tactl("watch", id); r.code != 0 || !strings.Contains(r.stdout, "succeeded") {
		t.Errorf("after the agent finished: %s", r)
	}
}

// commandOf finds the first command ID in out.
func commandOf(t *testing.T, out string) string {
	t.Helper()
	id := commandIDs.FindString(out)
	if id == "" {
		t.Fatalf("no command ID in %q", out)
	}
	return id
}

// TestJSONStreams: -o json prints one protojson event per line and exits
// by the outcome.
func TestJSONStreams(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme")
	c.agent("acme", fail("manifest unknown"))
	check := func(r result, want string) {
		t.Helper()
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		for _, l := range lines {
			var v map[string]any
			if err := json.Unmarshal([]byte(l), &v); err != nil || v["event"] == nil {
				t.Errorf("not an event line: %q (%v)", l, err)
			}
		}
		if !strings.Contains(lines[len(lines)-1], want) {
			t.Errorf("last line %q lacks %q", lines[len(lines)-1], want)
		}
	}
	r := c.tactl("refresh", "acme", "codex", "--digest", digestV2, "-o", "json")
	if r.code != 1 {
		t.Errorf("refresh -o json: %s", r)
	}
	check(r, "COMMAND_STATE_FAILED")
	r = c.tactl("promote", "codex", refV2, "-o", "json")
	if r.code != 1 {
		t.Errorf("promote -o json: %s", r)
	}
	check(r, "ROLLOUT_EVENT_KIND_COMPLETED")
}

// TestAbortAndResumeHaltedRollout: a halted rollout is listed, resumed
// (followed to its end with tactl watch) or aborted.
func TestAbortAndResumeHaltedRollout(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme", "beta", "gamma")
	var mu sync.Mutex
	failFirst := map[string]bool{"acme": true}
	flaky := func(tenant string) cptest.Executor {
		return func(cmd *tenantagentv1.RefreshRuntimeImage) *tenantagentv1.CommandResult {
			mu.Lock()
			f := failFirst[tenant]
			failFirst[tenant] = false
			mu.Unlock()
			if f {
				return fail("registry unreachable")(cmd)
			}
			return cptest.Succeed(cmd)
		}
	}
	c.agent("acme", flaky("acme"))
	c.agent("beta", flaky("beta"))
	c.agent("gamma", flaky("gamma"))

	r := c.tactl("promote", "codex", refV2, "--max-parallel", "1", "--halt-after", "1", "--progress", "plain")
	if r.code != 1 || !strings.Contains(r.stdout, "halted") {
		t.Fatalf("promote: %s", r)
	}
	id := rolloutIDs.FindString(r.stdout)
	r = c.tactl("rollouts", "--state", "halted")
	if r.code != 0 || !strings.Contains(r.stdout, id) {
		t.Errorf("rollouts --state halted: %s", r)
	}
	if r := c.tactl("watch", id); r.code != 1 || !strings.Contains(r.stdout, "rollout "+id+" halted") {
		t.Errorf("watch of a halted rollout: %s", r)
	}
	r = c.tactl("rollout", "resume", id)
	if r.code != 0 || !strings.Contains(r.stdout, "tactl watch "+id) {
		t.Fatalf("resume: %s", r)
	}
	c.waitFor("the resumed rollout to complete", func() bool {
		resp, err := c.client.GetRollout(context.Background(), &controlplanev1.GetRolloutRequest{RolloutId: id})
		return err == nil && resp.GetRollout().GetState() == controlplanev1.RolloutState_ROLLOUT_STATE_COMPLETED
	})
	r = c.tactl("watch", id, "--progress", "plain")
	// acme's failure before the resume still counts as a failed tenant.
	if r.code != 1 || !strings.Contains(r.stdout, "rollout "+id+" completed: 3 tenants: 2 succeeded, 1 failed") {
		t.Errorf("watch after resume: %s", r)
	}
	golden(t, "watch-resumed.golden", normalize(r.stdout))
	if r := c.tactl("rollout", "get", id); r.code != 0 || !strings.Contains(r.stdout, "completed") {
		t.Errorf("rollout get: %s", r)
	}

	// A second promote halts on a canary that fails; it is aborted.
	mu.Lock()
	failFirst["beta"] = true
	mu.Unlock()
	r = c.tactl("promote", "codex", repo+"@sha256:"+strings.Repeat("3", 64), "--canary", "beta", "--progress", "plain")
	if r.code != 1 || !strings.Contains(r.stdout, "canary tenant beta did not succeed") {
		t.Fatalf("canary promote: %s", r)
	}
	id2 := rolloutIDs.FindString(r.stdout)
	r = c.tactl("rollout", "abort", id2, "--reason", "bad image")
	if r.code != 0 || !strings.Contains(r.stdout, "rollout "+id2+" aborted") {
		t.Errorf("abort: %s", r)
	}
	if r := c.tactl("watch", id2); r.code != 1 || !strings.Contains(r.stdout, "rollout "+id2+" aborted") {
		t.Errorf("watch of an aborted rollout: %s", r)
	}
	if r := c.tactl("rollout", "resume", id2); r.code != 1 || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("resume of an aborted rollout: %s", r)
	}
}
