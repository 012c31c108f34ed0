package runner

import (
	"context"
	"strings"
	"testing"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/executor"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

func refreshOf(id, runtime, repo string) *tenantagentv1.ControlMessage {
	return &tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Refresh{Refresh: &tenantagentv1.RefreshRuntimeImage{
		CommandId: id, Runtime: runtime, ImageRepository: repo, ImageDigest: "sha256:" + strings.Repeat("a", 64)}}}
}

// A command ID out of bounds is dropped: not journaled, not acknowledged,
// not run, and the log quotes only its prefix.
func TestCommandIDOutOfBoundsIgnored(t *testing.T) {
	exec := &fakeExecutor{}
	r, s := start(t, t.TempDir(), exec)
	for _, id := range []string{"", strings.Repeat("c", limits.ID+1), "c/../../etc", "c 1", "c\x00", "c-é"} {
		r.Handle(refreshOf(id, "codex", "r/workspace-template-codex"))
		if fresh, dup := s.acks(id); fresh+dup != 0 {
			t.Errorf("command ID %q acknowledged", id)
		}
		if _, ok := r.cfg.Journal.Get(id); ok {
			t.Errorf("command ID %q journaled", id)
		}
	}
	r.Handle(refreshOf(strings.Repeat("c", limits.ID), "codex", "r/workspace-template-codex")) // the longest allowed
	eventually(t, "the valid command ran", func() bool { return len(exec.runs()) == 1 })
}

// A runtime or repository out of bounds is refused with a result that
// quotes only a short prefix; the executor never sees the command and the
// journal keeps none of its oversized fields.
func TestTargetOutOfBoundsRefused(t *testing.T) {
	long := strings.Repeat("x", 200<<10)
	cases := map[string]struct{ runtime, repo, want string }{
		"runtime too long":    {strings.Repeat("a", limits.Name+1), "r/workspace-template-codex", "is not a plain name"},
		"runtime not plain":   {"co/dex", "r/workspace-template-codex", `runtime "co/dex" is not a plain name`},
		"runtime uppercase":   {"Codex", "r/workspace-template-codex", `runtime "Codex" is not a plain name`},
		"repository too long": {"codex", long, "is longer than 512 bytes"},
		"reference too long":  {"codex", strings.Repeat("r", limits.ImageRef-10), "image reference"},
		"runtime of 200 KiB":  {long, "r/workspace-template-codex", "(204800 bytes)"},
	}
	exec := &fakeExecutor{}
	r, s := start(t, t.TempDir(), exec)
	i := 0
	for name, c := range cases {
		i++
		id := "c-" + strings.Repeat("b", i)
		r.Handle(refreshOf(id, c.runtime, c.repo))
		res := s.results(id)
		if len(res) != 1 || res[0].GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED || !strings.Contains(res[0].GetError(), c.want) {
			t.Errorf("%s: results %v; want one failure saying %q", name, res, c.want)
			continue
		}
		if len(res[0].GetError()) > 400 {
			t.Errorf("%s: error of %d bytes repeats the input", name, len(res[0].GetError()))
		}
		rec, _ := r.cfg.Journal.Get(id)
		if len(rec.Command) > 1000 {
			t.Errorf("%s: journaled %d bytes of command", name, len(rec.Command))
		}
	}
	if runs := exec.runs(); len(runs) != 0 {
		t.Errorf("the executor ran %v", runs)
	}
}

// verbose is an executor whose progress and result are far beyond the
// limits.
type verbose struct{ fakeExecutor }

func (v *verbose) Refresh(_ context.Context, cmd *tenantagentv1.RefreshRuntimeImage, hooks executor.Hooks) (*tenantagentv1.CommandResult, error) {
	layers := make([]*tenantagentv1.LayerProgress, limits.Layers+50)
	for i := range layers {
		layers[i] = &tenantagentv1.LayerProgress{Id: "l", Status: strings.Repeat("s", 5000)}
	}
	hooks.Progress(&tenantagentv1.CommandProgress{Message: strings.Repeat("m", 10000), Layers: layers})
	res := &tenantagentv1.CommandResult{Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_ROLLED_BACK, Error: strings.Repeat("e", 100<<10)}
	for range limits.Containers + 5 {
		res.Containers = append(res.Containers, &tenantagentv1.ContainerResult{Name: "ws", Error: strings.Repeat("d", 5000)})
	}
	return res, nil
}

func (v *verbose) Recover(context.Context, string, string, []docker.RecreateState) *tenantagentv1.CommandResult {
	return nil
}

func TestProgressAndResultsBounded(t *testing.T) {
	dir := t.TempDir()
	r, s := start(t, dir, nil)
	r.cfg.Executor = &verbose{}
	r.Handle(refreshOf("c1", "codex", "r/workspace-template-codex"))
	eventually(t, "the result", func() bool { return len(s.results("c1")) == 1 })
	res := s.results("c1")[0]
	if len(res.GetError()) > limits.ResultError || len(res.GetContainers()) > limits.Containers {
		t.Errorf("result: error of %d bytes, %d containers", len(res.GetError()), len(res.GetContainers()))
	}
	for _, c := range res.GetContainers() {
		if len(c.GetError()) > limits.Message {
			t.Fatalf("container error of %d bytes", len(c.GetError()))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	progress := 0
	for _, m := range s.msgs {
		if p := m.GetProgress(); p != nil {
			progress++
			if len(p.GetMessage()) > limits.Message || len(p.GetLayers()) > limits.Layers || len(p.GetLayers()[0].GetStatus()) > limits.Message {
				t.Errorf("progress: message of %d bytes, %d layers", len(p.GetMessage()), len(p.GetLayers()))
			}
		}
	}
	if progress != 1 {
		t.Errorf("%d progress reports, want 1", progress)
	}
}
