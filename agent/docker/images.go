package docker

import (
	"context"
	"sync"

	"github.com/docker/docker/api/types/container"
)

// imageCache keeps what the agent reads of an image, by image ID. An ID is
// the digest of the image's config, so its config never changes, and the
// digests it has in a repository are fixed once it is pulled by digest:
// twenty containers on one image cost one inspect, not twenty per look.
type imageCache struct {
	mu   sync.Mutex
	byID map[string]imageInfo
}

type imageInfo struct {
	repoDigests []string
	config      *container.Config
}

// imageOf returns an image's digests and config, inspecting it only the
// first time; false if it cannot be read (not cached, so asked again).
func (e *Engine) imageOf(ctx context.Context, id string) (imageInfo, bool) {
	e.images.mu.Lock()
	info, ok := e.images.byID[id]
	e.images.mu.Unlock()
	if ok {
		return info, true
	}
	img, err := e.cli.ImageInspect(ctx, id)
	if err != nil {
		return imageInfo{}, false
	}
	info = imageInfo{repoDigests: img.RepoDigests, config: imageConfig(img.Config)}
	e.images.mu.Lock()
	defer e.images.mu.Unlock()
	if e.images.byID == nil {
		e.images.byID = map[string]imageInfo{}
	}
	e.images.byID[id] = info
	return info, true
}

// keepImages forgets every cached image but those in use, so an agent
// that has moved through a hundred images keeps only the current ones.
func (e *Engine) keepImages(inUse map[string]bool) {
	e.images.mu.Lock()
	defer e.images.mu.Unlock()
	for id := range e.images.byID {
		if !inUse[id] {
			delete(e.images.byID, id)
		}
	}
}
