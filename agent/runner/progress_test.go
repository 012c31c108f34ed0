package runner

import (
	"context"
	"testing"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/executor"
	"github.com/molecule-ai/tenant-agent/agent/journal"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// chatty reports two progress lines per refresh, then waits for its
// context and dies there (a simulated crash: the command stays running).
type chatty struct{ fakeExecutor }

func (c *chatty) Refresh(ctx context.Context, _ *tenantagentv1.RefreshRuntimeImage, hooks executor.Hooks) (*tenantagentv1.CommandResult, error) {
	hooks.Progress(&tenantagentv1.CommandProgress{Message: "one"})
	hooks.Progress(&tenantagentv1.CommandProgress{Message: "two"})
	<-ctx.Done()
	return nil, docker.ErrCrash
}

func (s *sink) sequences(id string) []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []uint64
	for _, m := range s.msgs {
		if p := m.GetProgress(); p != nil && p.GetCommandId() == id {
			out = append(out, p.GetSequence())
		}
	}
	return out
}

// A command resumed by a restarted agent goes on with the progress
// sequence where the dead process left it, so the control plane never
// sees a number twice.
func TestProgressSequenceContinuesAfterRestart(t *testing.T) {
	dir := t.TempDir()
	r1, s1, stop := startWith(t, dir, &chatty{})
	r1.Handle(refresh("c1", "codex"))
	eventually(t, "two progress reports", func() bool { return len(s1.sequences("c1")) == 2 })
	stop()

	_, s2, _ := startWith(t, dir, &chatty{})
	eventually(t, "progress of the resumed command", func() bool { return len(s2.sequences("c1")) == 2 })
	if got := s2.sequences("c1"); got[0] != 3 || got[1] != 4 {
		t.Errorf("sequences after the restart = %v, want [3 4] (before: %v)", got, s1.sequences("c1"))
	}
}

// startWith starts a runner on dir with x; stop ends it as a dead process
// would end.
func startWith(t *testing.T, dir string, x Executor) (*Runner, *sink, func()) {
	j, err := journal.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := New(Config{Journal: j, Executor: x})
	s := &sink{}
	r.SetSender(s.send)
	ctx, cancel := context.WithCancel(context.Background())
	stop := func() { cancel(); r.Wait() }
	t.Cleanup(stop)
	r.Start(ctx)
	return r, s, stop
}
