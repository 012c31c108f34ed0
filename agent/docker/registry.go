package docker

import (
	"context"
	"fmt"
	"time"

	"github.com/docker/docker/api/types/registry"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The agent's own requests to a registry (besides the Engine's pull): a
// manifest HEAD to classify a failure, a manifest GET for an image's size.
// They carry the pull's credentials and are not retried here: the pull's
// loop retries.

// registryTimeout bounds one of the agent's own registry requests.
const registryTimeout = 30 * time.Second

func remoteOptions(ctx context.Context, auth registry.AuthConfig, extra ...remote.Option) []remote.Option {
	return append([]remote.Option{remote.WithContext(ctx), remote.WithAuth(authenticator(auth)), remote.WithRetryBackoff(remote.Backoff{Steps: 1})}, extra...)
}

// probe asks the registry whether it serves ref's manifest.
func (e *Engine) probe(ctx context.Context, ref string, auth registry.AuthConfig) error {
	d, err := name.NewDigest(ref)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, registryTimeout)
	defer cancel()
	_, err = remote.Head(d, remoteOptions(ctx, auth)...)
	return err
}

// imageSize is the compressed size of ref (its layers and config, as its
// manifest says) for the Engine's platform; a multi-platform index is
// resolved to that platform's image.
func (e *Engine) imageSize(ctx context.Context, ref string, auth registry.AuthConfig) (uint64, error) {
	d, err := name.NewDigest(ref)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, registryTimeout)
	defer cancel()
	v, err := e.cli.ServerVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("the Engine's platform: %w", err)
	}
	desc, err := remote.Get(d, remoteOptions(ctx, auth, remote.WithPlatform(v1.Platform{OS: v.Os, Architecture: v.Arch}))...)
	if err != nil {
		return 0, err
	}
	img, err := desc.Image()
	if err != nil {
		return 0, err
	}
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	size := m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}
	return uint64(max(size, 0)), nil
}
