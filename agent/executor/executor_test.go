package executor

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

func TestRuntimeOfRepository(t *testing.T) {
	x := &Executor{cfg: Config{RepositoryPattern: "workspace-template-{runtime}"}}
	for repo, want := range map[string]string{
		"registry.example/molecule-ai/workspace-template-codex": "codex",
		"127.0.0.1:5000/workspace-template-hermes":              "hermes",
		"registry.example/molecule-ai/workspace-template-":      "",
		"registry.example/molecule-ai/other":                    "",
	} {
		if got := x.runtimeOfRepository(repo); got != want {
			t.Errorf("runtimeOfRepository(%q) = %q, want %q", repo, got, want)
		}
	}
}

func TestCheckRefusesBeforeTouchingAnything(t *testing.T) {
	x := &Executor{cfg: Config{RepositoryPattern: "workspace-template-{runtime}", AllowRepositories: []string{"registry.example/molecule-ai/"}}}
	good := "sha256:" + strings.Repeat("a", 64)
	cases := map[string]struct{ runtime, repo, digest string }{
		"a tag, not a digest":             {"codex", "registry.example/molecule-ai/workspace-template-codex", "v2"},
		"uppercase digest":                {"codex", "registry.example/molecule-ai/workspace-template-codex", "sha256:" + strings.Repeat("A", 64)},
		"another runtime's repository":    {"codex", "registry.example/molecule-ai/workspace-template-hermes", good},
		"a repository off the allow-list": {"codex", "evil.example/workspace-template-codex", good},
	}
	for name, c := range cases {
		if err := x.check(c.runtime, c.repo, c.digest, nil); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("%s: %v, want a refusal", name, err)
		}
	}
	if err := x.check("codex", "registry.example/molecule-ai/workspace-template-codex", good, nil); err != nil {
		t.Errorf("allowed command refused: %v", err)
	}
}

// Refusals against the real Engine: an unknown runtime and a tag leave
// every container alone.
func TestRefreshRefusalsTouchNothing(t *testing.T) {
	registrytest.Docker(t) // fails in CI without a daemon
	engine, err := docker.New("", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	x, err := New(Config{Engine: engine, Selector: docker.Selector{"molecule.org-id": "nobody-" + t.Name()}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hooks := Hooks{Step: func(docker.RecreateState) error { t.Fatal("a recreate step was taken"); return nil }, Progress: func(*Progress) {}}
	res := x.Refresh(context.Background(), &tenantagentv1.RefreshRuntimeImage{CommandId: "c1", Runtime: "codex", ImageRepository: "r/workspace-template-codex", ImageDigest: "sha256:" + strings.Repeat("b", 64)}, hooks)
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED || !strings.Contains(res.GetError(), `unknown runtime "codex"`) {
		t.Errorf("unknown runtime: %v", res)
	}
}
