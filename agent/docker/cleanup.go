package docker

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
)

// CleanupResult is what CleanupImages removed, and what it could not.
type CleanupResult struct {
	// Removed names each removed image by its repo@digest.
	Removed []string
	// ReclaimedBytes sums the removed images' sizes, less what they share
	// with other images when the Engine says (API 1.42 and later); on an
	// older Engine, layers shared with a kept image are counted too.
	ReclaimedBytes uint64
	// Errors are the removals that failed; they fail nothing.
	Errors []string
}

// CleanupImages removes the images of repository that no container on
// the daemon uses (running or not, anyone's), except the one at digest
// (just adopted) and the keep newest others: first those in prefer (the
// digests containers ran before the refresh, the rollback target), then by
// creation time. An image that is also in another repository is never
// touched. It never fails: a removal that fails is logged and reported.
func (e *Engine) CleanupImages(ctx context.Context, repository, digest string, prefer []string, keep int) CleanupResult {
	var res CleanupResult
	candidates, err := e.unusedImages(ctx, repository, digest)
	if err != nil {
		e.logger.Warn("image cleanup skipped", "repository", repository, "error", err)
		res.Errors = append(res.Errors, err.Error())
		return res
	}
	rank := func(img image.Summary) int {
		for i, d := range prefer {
			if slices.Contains(img.RepoDigests, repository+"@"+d) {
				return i
			}
		}
		return len(prefer)
	}
	slices.SortStableFunc(candidates, func(a, b image.Summary) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		return cmp.Compare(b.Created, a.Created) // newest first
	})
	for i, img := range candidates {
		name := refIn(img, repository)
		if i < keep {
			e.logger.Info("keeping an unused image for rollback", "image", name)
			continue
		}
		// Never forced: the Engine refuses to remove an image a container
		// started using since the list was taken.
		if _, err := e.cli.ImageRemove(ctx, img.ID, image.RemoveOptions{PruneChildren: true}); err != nil {
			e.logger.Warn("cannot remove an unused image", "image", name, "error", err)
			res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		size := img.Size
		if img.SharedSize > 0 {
			size -= img.SharedSize
		}
		res.Removed = append(res.Removed, name)
		res.ReclaimedBytes += uint64(max(size, 0))
		e.logger.Info("removed an unused image", "image", name, "size", HumanBytes(uint64(max(size, 0))))
	}
	return res
}

// unusedImages lists the images wholly of repository that no container
// uses, other than the one at digest.
func (e *Engine) unusedImages(ctx context.Context, repository, digest string) ([]image.Summary, error) {
	containers, err := e.cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	used := map[string]bool{}
	for _, c := range containers {
		used[c.ImageID] = true
	}
	images, err := e.cli.ImageList(ctx, image.ListOptions{SharedSize: true})
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []image.Summary
	for _, img := range images {
		if used[img.ID] || slices.Contains(img.RepoDigests, repository+"@"+digest) || !onlyIn(img, repository) {
			continue
		}
		out = append(out, img)
	}
	return out, nil
}

// onlyIn reports whether every reference of img (digests and tags) is in
// repository, and it has one.
func onlyIn(img image.Summary, repository string) bool {
	n := 0
	for _, r := range append(slices.Clone(img.RepoDigests), img.RepoTags...) {
		if r == "<none>@<none>" || r == "<none>:<none>" { // what older Engines list for "none"
			continue
		}
		if RepositoryOf(r) != repository {
			return false
		}
		n++
	}
	return n > 0
}

// refIn names img by its first repo@digest in repository, else its ID.
func refIn(img image.Summary, repository string) string {
	for _, d := range img.RepoDigests {
		if strings.HasPrefix(d, repository+"@") {
			return d
		}
	}
	return img.ID
}
