package signing

import (
	"log/slog"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/molecule-ai/tenant-agent/pkg/registryauth"
)

// NewKeychain is the control plane's --registry-credentials: a Docker
// config file read with the docker CLI's rules at every lookup, as the
// agent reads its own (pkg/registryauth), so rotated tokens need no
// restart. It checks once that path is such a file, so a typo fails at
// start rather than at the first promote.
func NewKeychain(path string, logger *slog.Logger) (authn.Keychain, error) {
	return registryauth.Open(path, logger)
}
