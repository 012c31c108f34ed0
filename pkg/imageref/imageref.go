// Package imageref parses the only image references this project accepts:
// a repository pinned by a sha256 digest, "<repository>@sha256:<64 hex>".
// Tags are refused everywhere: a pin is a digest, end to end.
package imageref

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
)

// Ref is a repository and a digest.
type Ref struct {
	// Repository is the repository exactly as given, e.g.
	// "registry.example/molecule-ai/workspace-template-codex" (no
	// normalization: "ubuntu" stays "ubuntu").
	Repository string
	// Digest is "sha256:" and 64 lowercase hex digits.
	Digest string
}

// String returns "<repository>@<digest>".
func (r Ref) String() string { return r.Repository + "@" + r.Digest }

const digestPrefix = "sha256:"

// ValidateDigest checks d is "sha256:" followed by 64 lowercase hex digits,
// and says exactly what is wrong if not.
func ValidateDigest(d string) error {
	if !strings.HasPrefix(d, digestPrefix) {
		return fmt.Errorf("digest %q must start with %q", d, digestPrefix)
	}
	hex := d[len(digestPrefix):]
	if len(hex) != 64 {
		return fmt.Errorf("digest %q has %d hex digits after %q, want 64", d, len(hex), digestPrefix)
	}
	for _, c := range hex {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		case c >= 'A' && c <= 'F':
			return fmt.Errorf("digest %q has uppercase hex; digests are lowercase", d)
		default:
			return fmt.Errorf("digest %q has %q, which is not a hex digit", d, c)
		}
	}
	return nil
}

// ValidateRepository checks repo is a repository name without tag or
// digest.
func ValidateRepository(repo string) error {
	if repo == "" {
		return fmt.Errorf("image repository is empty")
	}
	named, err := reference.Parse(repo)
	if err != nil {
		return fmt.Errorf("image repository %q: %v", repo, err)
	}
	if _, ok := named.(reference.Tagged); ok {
		return fmt.Errorf("image repository %q has a tag; give the repository alone", repo)
	}
	if _, ok := named.(reference.Digested); ok {
		return fmt.Errorf("image repository %q has a digest; give the repository alone", repo)
	}
	return nil
}

// Parse parses "<repository>@sha256:<64 hex>". A tag ("repo:v2" or
// "repo:v2@sha256:...") is refused, as is any other digest algorithm.
func Parse(s string) (Ref, error) {
	repo, digest, ok := strings.Cut(s, "@")
	if !ok {
		if named, err := reference.Parse(s); err == nil {
			if _, tagged := named.(reference.Tagged); tagged {
				return Ref{}, fmt.Errorf("image reference %q is a tag; tags are refused: want <repository>@sha256:<64 hex>", s)
			}
		}
		return Ref{}, fmt.Errorf("image reference %q is not pinned by digest: want <repository>@sha256:<64 hex>", s)
	}
	if err := ValidateDigest(digest); err != nil {
		return Ref{}, fmt.Errorf("image reference %q: %w", s, err)
	}
	if err := ValidateRepository(repo); err != nil {
		return Ref{}, fmt.Errorf("image reference %q: %w", s, err)
	}
	return Ref{Repository: repo, Digest: digest}, nil
}
