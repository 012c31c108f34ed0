package docker

import (
	"testing"

	"github.com/docker/docker/api/types/image"
)

// Cleanup only ever considers an image wholly of the runtime's
// repository: one that another repository also names is not its to remove.
func TestOnlyIn(t *testing.T) {
	const repo = "registry.example/molecule-ai/workspace-template-codex"
	for _, c := range []struct {
		img  image.Summary
		want bool
	}{
		{image.Summary{RepoDigests: []string{repo + "@sha256:a"}, RepoTags: []string{"<none>:<none>"}}, true},
		{image.Summary{RepoDigests: []string{repo + "@sha256:a"}, RepoTags: []string{repo + ":v1"}}, true},
		{image.Summary{RepoDigests: []string{repo + "@sha256:a", "registry.example/other@sha256:a"}}, false},
		{image.Summary{RepoDigests: []string{repo + "@sha256:a"}, RepoTags: []string{repo + "-lookalike:v1"}}, false},
		{image.Summary{RepoDigests: []string{"<none>@<none>"}, RepoTags: []string{"<none>:<none>"}}, false},
	} {
		if got := onlyIn(c.img, repo); got != c.want {
			t.Errorf("onlyIn(%v, %v) = %v, want %v", c.img.RepoDigests, c.img.RepoTags, got, c.want)
		}
	}
}
