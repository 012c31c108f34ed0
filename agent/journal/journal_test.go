package journal

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

func TestJournalSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	cmd := &tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Refresh{Refresh: &tenantagentv1.RefreshRuntimeImage{CommandId: "c1", Runtime: "codex"}}}
	if err := j.Add(&Record{ID: "c1", AcceptedAt: time.Now(), State: Queued, Command: Encode(cmd)}); err != nil {
		t.Fatal(err)
	}
	if err := j.Add(&Record{ID: "c1"}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Add: %v, want ErrExists", err)
	}
	if _, err := j.Update("c1", func(r *Record) {
		r.State = Running
		r.Recreates = map[string]docker.RecreateState{"ws": {Name: "ws", Step: docker.StepStop}}
	}); err != nil {
		t.Fatal(err)
	}
	// A crash can leave a temporary file; it is ignored.
	os.WriteFile(filepath.Join(dir, "commands", ".c2.json.tmp123"), []byte("{half"), 0o600)

	again, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, ok := again.Get("c1")
	if !ok || r.State != Running || r.Recreates["ws"].Step != docker.StepStop {
		t.Fatalf("reopened record = %+v", r)
	}
	msg, err := r.Message()
	if err != nil || msg.GetRefresh().GetRuntime() != "codex" {
		t.Fatalf("command = %v, %v", msg, err)
	}
	if err := again.Add(&Record{ID: "../escape"}); err == nil {
		t.Fatal("an ID with a path separator was accepted")
	}
}

func TestPruneKeepsUnconfirmed(t *testing.T) {
	j, _ := Open(t.TempDir())
	old := time.Now().Add(-48 * time.Hour)
	j.Add(&Record{ID: "done", AcceptedAt: old, State: Finished, Confirmed: true})
	j.Add(&Record{ID: "outbox", AcceptedAt: old, State: Finished})
	if err := j.Prune(time.Now().Add(-24 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, ok := j.Get("done"); ok {
		t.Error("confirmed old record kept")
	}
	if _, ok := j.Get("outbox"); !ok {
		t.Error("unconfirmed result pruned")
	}
}
