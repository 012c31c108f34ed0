package runner

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/executor"
	"github.com/molecule-ai/tenant-agent/agent/journal"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// fakeExecutor records what ran; a refresh blocks until released.
type fakeExecutor struct {
	mu      sync.Mutex
	ran     []string
	release chan struct{}
}

func (f *fakeExecutor) Refresh(ctx context.Context, cmd *tenantagentv1.RefreshRuntimeImage, _ executor.Hooks) (*tenantagentv1.CommandResult, error) {
	f.mu.Lock()
	f.ran = append(f.ran, cmd.GetCommandId())
	f.mu.Unlock()
	if f.release != nil {
		select {
		case <-f.release:
		case <-ctx.Done():
			return &tenantagentv1.CommandResult{Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED}, nil
		}
	}
	return &tenantagentv1.CommandResult{Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED}, nil
}

func (f *fakeExecutor) Prefetch(context.Context, *tenantagentv1.PrefetchRuntimeImage, executor.Hooks) *tenantagentv1.CommandResult {
	return &tenantagentv1.CommandResult{Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED}
}

func (f *fakeExecutor) Recover(context.Context, string, string, []docker.RecreateState) *tenantagentv1.CommandResult {
	return &tenantagentv1.CommandResult{Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_ROLLED_BACK}
}

func (f *fakeExecutor) runs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ran...)
}

type sink struct {
	mu   sync.Mutex
	msgs []*tenantagentv1.AgentMessage
}

func (s *sink) send(m *tenantagentv1.AgentMessage) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, m)
	return true
}

func (s *sink) results(id string) []*tenantagentv1.CommandResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*tenantagentv1.CommandResult
	for _, m := range s.msgs {
		if r := m.GetResult(); r != nil && r.GetCommandId() == id {
			out = append(out, r)
		}
	}
	return out
}

func (s *sink) acks(id string) (fresh, dup int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.msgs {
		if a := m.GetAck(); a != nil && a.GetCommandId() == id {
			if a.GetDuplicate() {
				dup++
			} else {
				fresh++
			}
		}
	}
	return
}

func refresh(id, runtime string) *tenantagentv1.ControlMessage {
	return &tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Refresh{Refresh: &tenantagentv1.RefreshRuntimeImage{CommandId: id, Runtime: runtime}}}
}

func start(t *testing.T, dir string, exec *fakeExecutor) (*Runner, *sink) {
	j, err := journal.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := New(Config{Journal: j, Executor: exec})
	s := &sink{}
	r.SetSender(s.send)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); r.Wait() })
	r.Start(ctx)
	return r, s
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCommandRunsOnceAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	exec := &fakeExecutor{}
	r, s := start(t, dir, exec)
	r.Handle(refresh("c1", "codex"))
	eventually(t, "c1's result", func() bool { return len(s.results("c1")) == 1 })

	// A new process on the same state dir gets the command again.
	exec2 := &fakeExecutor{}
	r2, s2 := start(t, dir, exec2)
	if _, results := r2.Held(); len(results) != 1 {
		t.Fatalf("Held results = %v, want c1 in the outbox", results)
	}
	r2.Handle(refresh("c1", "codex"))
	if fresh, dup := s2.acks("c1"); fresh != 0 || dup != 1 {
		t.Errorf("acks fresh=%d dup=%d, want one duplicate ack", fresh, dup)
	}
	if len(s2.results("c1")) != 1 {
		t.Errorf("the held result was not resent")
	}
	if len(exec2.runs()) != 0 {
		t.Errorf("the command ran again: %v", exec2.runs())
	}
	r2.Handle(&tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_ResultReceived{ResultReceived: &tenantagentv1.ResultReceived{CommandId: "c1"}}})
	if len(r2.Outbox()) != 0 {
		t.Errorf("confirmed result still in the outbox")
	}
}

func TestOneAtATimePerRuntimeAndSupersede(t *testing.T) {
	exec := &fakeExecutor{release: make(chan struct{})}
	r, s := start(t, t.TempDir(), exec)
	r.Handle(refresh("first", "codex"))
	eventually(t, "first running", func() bool { return len(exec.runs()) == 1 })
	r.Handle(refresh("second", "codex"))
	r.Handle(refresh("other-runtime", "hermes"))
	r.Handle(refresh("third", "codex")) // supersedes second, which has not started
	eventually(t, "other runtime runs meanwhile", func() bool { return len(exec.runs()) == 2 })
	if res := s.results("second"); len(res) != 1 || res[0].GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED || res[0].GetError() != "superseded by third before it started" {
		t.Fatalf("second: %v", res)
	}
	close(exec.release)
	eventually(t, "third's result", func() bool { return len(s.results("third")) == 1 })
	got := exec.runs()
	if len(got) != 3 || got[0] != "first" || got[2] != "third" || !slices.Contains(got, "other-runtime") {
		t.Errorf("ran %v, want first, other-runtime (alongside), then third; never second", got)
	}
}

func TestCancelAndDeadline(t *testing.T) {
	exec := &fakeExecutor{release: make(chan struct{})}
	r, s := start(t, t.TempDir(), exec)
	r.Handle(refresh("running", "codex"))
	eventually(t, "running", func() bool { return len(exec.runs()) == 1 })
	r.Handle(&tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Cancel{Cancel: &tenantagentv1.CancelCommand{CommandId: "running", Reason: "operator said so"}}})
	eventually(t, "canceled result", func() bool { return len(s.results("running")) == 1 })
	if res := s.results("running")[0]; res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED || res.GetError() != "operator said so" {
		t.Errorf("canceled: %v", res)
	}
	late := refresh("late", "codex")
	late.GetRefresh().Deadline = timestamppb.New(time.Now().Add(-time.Minute))
	r.Handle(late)
	eventually(t, "late's result", func() bool { return len(s.results("late")) == 1 })
	if res := s.results("late")[0]; res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_CANCELED {
		t.Errorf("late: %v", res)
	}
	for _, id := range exec.runs() {
		if id == "late" {
			t.Errorf("a command past its deadline ran")
		}
	}
}

func TestInterruptedRecreateIsRecoveredOnStart(t *testing.T) {
	dir := t.TempDir()
	j, _ := journal.Open(dir)
	j.Add(&journal.Record{ID: "half", AcceptedAt: time.Now(), State: journal.Running, Command: journal.Encode(refresh("half", "codex")),
		Recreates: map[string]docker.RecreateState{"ws": {Name: "ws", Step: docker.StepStart}}})
	j.Add(&journal.Record{ID: "pulling", AcceptedAt: time.Now(), State: journal.Running, Command: journal.Encode(refresh("pulling", "hermes"))})
	exec := &fakeExecutor{}
	_, s := start(t, dir, exec)
	eventually(t, "both results", func() bool { return len(s.results("half")) == 1 && len(s.results("pulling")) == 1 })
	if s.results("half")[0].GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_ROLLED_BACK {
		t.Errorf("half-done recreate: %v", s.results("half")[0])
	}
	if got := exec.runs(); len(got) != 1 || got[0] != "pulling" {
		t.Errorf("re-run %v, want only the command that never touched a container", got)
	}
}
