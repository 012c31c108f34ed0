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

// A pattern with a registry and namespace matches the whole repository;
// a bare one the last element; either way the runtime is a plain name.
func TestRuntimeOfRepositoryExact(t *testing.T) {
	full := &Executor{cfg: Config{RepositoryPattern: "registry.example/molecule-ai/workspace-template-{runtime}"}}
	bare := &Executor{cfg: Config{RepositoryPattern: "workspace-template-{runtime}"}}
	for _, c := range []struct {
		x          *Executor
		repo, want string
	}{
		{full, "registry.example/molecule-ai/workspace-template-codex", "codex"},
		{full, "registry.example/molecule-ai/workspace-template-claude-code.v2_x", "claude-code.v2_x"},
		{full, "registry.example/evil-ns/workspace-template-codex", ""},
		{full, "evil.example/molecule-ai/workspace-template-codex", ""},
		{full, "registry.example/molecule-ai/workspace-template-codex/sub", ""},
		{full, "registry.example/molecule-ai/workspace-template-Codex", ""},
		{full, "x/registry.example/molecule-ai/workspace-template-codex", ""},
		{bare, "registry.example/evil-ns/workspace-template-codex", "codex"},
		{bare, "registry.example/molecule-ai/workspace-template-_codex", ""},
		{bare, "registry.example/molecule-ai/workspace-template-.", ""},
	} {
		if got := c.x.runtimeOfRepository(c.repo); got != c.want {
			t.Errorf("pattern %s: runtimeOfRepository(%q) = %q, want %q", c.x.cfg.RepositoryPattern, c.repo, got, c.want)
		}
	}
}

// With a bare pattern and no allow-list, containers of one runtime on
// two repositories (one of them a lookalike in another namespace) allow
// neither: the default allow-list never widens because of a container the
// agent did not expect.
func TestDefaultAllowListNeedsOneRepository(t *testing.T) {
	x := &Executor{cfg: Config{RepositoryPattern: "workspace-template-{runtime}"}}
	good, evil := "registry.example/molecule-ai/workspace-template-codex", "registry.example/evil-ns/workspace-template-codex"
	digest := "sha256:" + strings.Repeat("a", 64)
	one := []docker.Container{{Repository: good}, {Repository: good}}
	if err := x.check("codex", good, digest, one); err != nil {
		t.Errorf("one repository: %v", err)
	}
	if err := x.check("codex", evil, digest, one); err == nil {
		t.Errorf("a repository no container runs was allowed")
	}
	two := []docker.Container{{Repository: good}, {Repository: evil}}
	for _, repo := range []string{good, evil} {
		err := x.check("codex", repo, digest, two)
		want := `runtime "codex"'s containers run 2 repositories ("registry.example/evil-ns/workspace-template-codex", "registry.example/molecule-ai/workspace-template-codex")`
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("two repositories, command for %s: %v; want a refusal saying %s", repo, err, want)
		}
	}
	// An allow-list decides alone.
	x.cfg.AllowRepositories = []string{good}
	if err := x.check("codex", good, digest, two); err != nil {
		t.Errorf("with --allow-repos: %v", err)
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
	res, err := x.Refresh(context.Background(), &tenantagentv1.RefreshRuntimeImage{CommandId: "c1", Runtime: "codex", ImageRepository: "r/workspace-template-codex", ImageDigest: "sha256:" + strings.Repeat("b", 64)}, hooks)
	if err != nil {
		t.Fatal(err)
	}
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED || !strings.Contains(res.GetError(), `unknown runtime "codex"`) {
		t.Errorf("unknown runtime: %v", res)
	}
}
