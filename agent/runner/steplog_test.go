package runner

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/executor"
	"github.com/molecule-ai/tenant-agent/agent/journal"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

// refreshOnDocker runs one refresh of a real container (on v1) to the
// image want through a real runner and executor, and returns the result
// and the agent's log at info level and above.
func refreshOnDocker(t *testing.T, want registrytest.Image) (*tenantagentv1.CommandResult, string, string) {
	cli := registrytest.Docker(t)
	reg := registrytest.StartRegistry(t)
	b := make([]byte, 4)
	rand.Read(b)
	name := fmt.Sprintf("ws-steps-%x", b)
	repo, v1 := reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v1-" + name}))
	want.Version += "-" + name
	_, v2 := reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, want))
	t.Cleanup(func() { registrytest.RemoveImages(t, cli, repo) })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)

	logs := &testlog.Buffer{}
	engine, err := docker.New("", logs.Logger(t, "agent"))
	if err != nil {
		t.Fatal(err)
	}
	sel := docker.Selector{"molecule.org-id": "test-" + name, "molecule.platform.managed": "true"}
	if _, err := engine.Pull(ctx, repo+"@"+v1, docker.PullOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: repo + "@" + v1, Labels: sel}, nil, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, id := range []string{c.ID, name} {
			registrytest.RemoveContainer(cli, id)
		}
	})
	if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	x, err := executor.New(executor.Config{Engine: engine, Selector: sel, StabilityWindow: time.Second, HealthGateTimeout: 20 * time.Second,
		KeepImages: -1, Logger: logs.Logger(t, "agent")})
	if err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := New(Config{Journal: j, Executor: x, Logger: logs.Logger(t, "agent")})
	s := &sink{}
	r.SetSender(s.send)
	rctx, stop := context.WithCancel(ctx)
	t.Cleanup(func() { stop(); r.Wait() })
	r.Start(rctx)
	const id = "c-steps-1"
	r.Handle(&tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Refresh{Refresh: &tenantagentv1.RefreshRuntimeImage{
		CommandId: id, Runtime: "codex", ImageRepository: repo, ImageDigest: v2}}})
	var res *tenantagentv1.CommandResult
	deadline := time.Now().Add(2 * time.Minute)
	for res == nil {
		if rs := s.results(id); len(rs) > 0 {
			res = rs[0]
		} else if time.Now().After(deadline) {
			t.Fatalf("no result:\n%s", logs.String())
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	var info []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(l, "level=DEBUG") && strings.Contains(l, "command="+id) {
			info = append(info, l)
		}
	}
	return res, strings.Join(info, "\n"), name
}

// wantSteps checks that each step is logged exactly once, in this order,
// with the command ID, and the container's name where it has one.
func wantSteps(t *testing.T, log, name string, steps []string) {
	t.Helper()
	lines := strings.Split(log, "\n")
	at := 0
	for _, step := range steps {
		msg := `msg="` + step + `"`
		if n := strings.Count(log, msg); n != 1 {
			t.Errorf("%q logged %d times, want once:\n%s", step, n, log)
			continue
		}
		i := at
		for i < len(lines) && !strings.Contains(lines[i], msg) {
			i++
		}
		if i == len(lines) {
			t.Errorf("%q is out of order:\n%s", step, log)
			continue
		}
		at = i
		containerStep := !strings.HasPrefix(step, "pull") && step != "image pulled" && step != "command done"
		if containerStep && !strings.Contains(lines[i], "container="+name) {
			t.Errorf("%q does not name the container: %s", step, lines[i])
		}
	}
}

// A refresh logs each step once, in order, at info, with the command ID
// and container; pull progress is at most a line per tenth.
func TestRefreshLogsEachStepOnce(t *testing.T) {
	res, log, name := refreshOnDocker(t, registrytest.Image{Version: "v2", NoHealthcheck: true, Padding: 2 << 20})
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("refresh: %v", res)
	}
	wantSteps(t, log, name, []string{"pull started", "image pulled", "creating the new container", "stopping the old container", "swapping names",
		"starting the new container", "waiting for the health gate", "health gate passed; removing the old container", "container done", "command done"})
	if n := strings.Count(log, `msg="pull progress"`); n > 11 {
		t.Errorf("%d pull progress lines, want at most one per tenth", n)
	}
	for _, want := range []string{"outcome=CONTAINER_OUTCOME_RECREATED", "outcome=COMMAND_OUTCOME_SUCCEEDED"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
}

// A refresh to an unhealthy image logs the rollback, and the container
// and command done with their outcomes.
func TestRolledBackRefreshLogsTheRollback(t *testing.T) {
	res, log, name := refreshOnDocker(t, registrytest.Image{Version: "bad", Unhealthy: true})
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_ROLLED_BACK {
		t.Fatalf("refresh: %v", res)
	}
	wantSteps(t, log, name, []string{"pull started", "image pulled", "creating the new container", "stopping the old container",
		"starting the new container", "waiting for the health gate", "rolling back", "container done", "command done"})
	for _, want := range []string{"outcome=CONTAINER_OUTCOME_ROLLED_BACK", "outcome=COMMAND_OUTCOME_ROLLED_BACK"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
}

// Pull progress: a line per tenth crossed, or after 30 s without one; not
// one per report.
func TestPullProgressIsThrottled(t *testing.T) {
	logs := &testlog.Buffer{}
	now := time.Unix(0, 0)
	s := newStepLog(logs.Logger(t, "agent"))
	s.now = func() time.Time { return now }
	pulling := func(cur, total uint64) {
		s.progress(&tenantagentv1.CommandProgress{Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING, CurrentBytes: cur, TotalBytes: total})
	}
	pulling(0, 0) // the pull starts
	for cur := uint64(0); cur <= 1000; cur += 4 {
		pulling(cur, 1000)
		now = now.Add(10 * time.Millisecond)
	}
	if n := strings.Count(logs.String(), `msg="pull progress"`); n != 10 {
		t.Errorf("%d lines for 250 reports from 0 to 100%%, want 10 (one per tenth):\n%s", n, logs.String())
	}
	// A stalled pull: a line every 30 s, not every report.
	s = newStepLog(logs.Logger(t, "agent"))
	s.now = func() time.Time { return now }
	before := strings.Count(logs.String(), `msg="pull progress"`)
	pulling(0, 0)
	for range 100 {
		now = now.Add(time.Second)
		pulling(1, 1000)
	}
	if n := strings.Count(logs.String(), `msg="pull progress"`) - before; n != 3 {
		t.Errorf("a stalled pull over 100 s logged %d lines, want 3 (every 30 s)", n)
	}
}
