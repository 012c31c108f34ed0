// Package imageref parses the only image references this project accepts:
// a repository pinned by a sha256 digest, "<repository>@sha256:<64 hex>".
// Tags are refused everywhere: a pin is a digest, end to end.
package imageref

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"

	"github.com/molecule-ai/tenant-agent/pkg/limits"
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

// Errors quote at most a short prefix of the input (limits.Quoted): these
// strings come from callers and agents, and an error is often logged or
// returned whole.

// ValidateDigest checks d is "sha256:" followed by 64 lowercase hex digits,
// and says exactly what is wrong if not.
func ValidateDigest(d string) error {
	if !strings.HasPrefix(d, digestPrefix) {
		return fmt.Errorf("digest %s must start with %q", limits.Quoted(d), digestPrefix)
	}
	hex := d[len(digestPrefix):]
	if len(hex) != 64 {
		return fmt.Errorf("digest %s has %d hex digits after %q, want 64", limits.Quoted(d), len(hex), digestPrefix)
	}
	for _, c := range hex {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		case c >= 'A' && c <= 'F':
			return fmt.Errorf("digest %s has uppercase hex; digests are lowercase", limits.Quoted(d))
		default:
			return fmt.Errorf("digest %s has %q, which is not a hex digit", limits.Quoted(d), c)
		}
	}
	return nil
}

// ValidateRepository checks repo is a repository name without tag or
// digest.
func ValidateRepository(repo string) error {
	switch {
	case repo == "":
		return fmt.Errorf("image repository is empty")
	case len(repo) > limits.ImageRef:
		return fmt.Errorf("image repository is %d bytes, at most %d: %s", len(repo), limits.ImageRef, limits.Quoted(repo))
	}
	named, err := reference.Parse(repo)
	if err != nil {
		return fmt.Errorf("image repository %s: %v", limits.Quoted(repo), err)
	}
	if _, ok := named.(reference.Tagged); ok {
		return fmt.Errorf("image repository %s has a tag; give the repository alone", limits.Quoted(repo))
	}
	if _, ok := named.(reference.Digested); ok {
		return fmt.Errorf("image repository %s has a digest; give the repository alone", limits.Quoted(repo))
	}
	return nil
}

// Parse parses "<repository>@sha256:<64 hex>". A tag ("repo:v2" or
// "repo:v2@sha256:...") is refused, as is any other digest algorithm.
func Parse(s string) (Ref, error) {
	if len(s) > limits.ImageRef {
		return Ref{}, fmt.Errorf("image reference is %d bytes, at most %d: %s", len(s), limits.ImageRef, limits.Quoted(s))
	}
	repo, digest, ok := strings.Cut(s, "@")
	if !ok {
		if named, err := reference.Parse(s); err == nil {
			if _, tagged := named.(reference.Tagged); tagged {
				return Ref{}, fmt.Errorf("image reference %s is a tag; tags are refused: want <repository>@sha256:<64 hex>", limits.Quoted(s))
			}
		}
		return Ref{}, fmt.Errorf("image reference %s is not pinned by digest: want <repository>@sha256:<64 hex>", limits.Quoted(s))
	}
	// The inner error quotes the part at fault; s itself is not repeated.
	if err := ValidateDigest(digest); err != nil {
		return Ref{}, fmt.Errorf("image reference: %w", err)
	}
	if err := ValidateRepository(repo); err != nil {
		return Ref{}, fmt.Errorf("image reference: %w", err)
	}
	return Ref{Repository: repo, Digest: digest}, nil
}
