package docker

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/registry"
	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/molecule-ai/tenant-agent/pkg/registryauth"
)

// CredentialFunc returns the credentials for a repository's registry, as
// they are now; an empty AuthConfig means anonymous.
type CredentialFunc func(repository string) (registry.AuthConfig, error)

// Anonymous is the CredentialFunc of an agent without
// --registry-credentials.
func Anonymous(string) (registry.AuthConfig, error) { return registry.AuthConfig{}, nil }

// Credentials are the agent's --registry-credentials: a Docker config file
// read with the docker CLI's rules at every lookup (pkg/registryauth), so
// short-lived tokens (ECR's last 12 hours) rotate without a restart.
type Credentials struct {
	file *registryauth.File
}

// NewCredentials checks once that path is a Docker config file, so a
// typo fails at start rather than at the first pull.
func NewCredentials(path string, logger *slog.Logger) (*Credentials, error) {
	f, err := registryauth.Open(path, logger)
	if err != nil {
		return nil, err
	}
	return &Credentials{file: f}, nil
}

// For returns the credentials for repository's registry, resolved now.
func (c *Credentials) For(repository string) (registry.AuthConfig, error) {
	host, err := registryHost(repository)
	if err != nil {
		return registry.AuthConfig{}, err
	}
	rc, err := c.file.Lookup(host)
	if err != nil {
		return registry.AuthConfig{}, err
	}
	out := registry.AuthConfig{Username: rc.Username, Password: rc.Password, IdentityToken: rc.IdentityToken, RegistryToken: rc.RegistryToken}
	if out != (registry.AuthConfig{}) {
		out.ServerAddress = host
	}
	return out, nil
}

// registryHost is the registry of a repository as the docker CLI keys its
// credentials: "docker.io" when the first element is not a host.
func registryHost(repository string) (string, error) {
	named, err := reference.ParseNormalizedNamed(repository)
	if err != nil {
		return "", fmt.Errorf("repository %q: %w", repository, err)
	}
	return reference.Domain(named), nil
}

// authenticator gives go-containerregistry the same credentials the
// Engine gets, for the agent's own manifest requests.
func authenticator(a registry.AuthConfig) authn.Authenticator {
	return registryauth.Credentials{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}.Authenticator()
}

// Keychain gives go-containerregistry the credentials of creds, for the
// agent's own registry reads (signatures, agent/signature). creds is asked
// at every Resolve, as at every pull, so rotated tokens are used.
func Keychain(creds CredentialFunc) authn.Keychain { return keychain(creds) }

type keychain CredentialFunc

// Resolve looks up the credentials of the resource (a repository) the way
// the pull does.
func (k keychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	a, err := k(r.String())
	if err != nil {
		return nil, err
	}
	return authenticator(a), nil
}

// encodeAuth is the X-Registry-Auth header value of a, or "" for none.
func encodeAuth(a registry.AuthConfig) (string, error) {
	if a == (registry.AuthConfig{}) {
		return "", nil
	}
	v, err := registry.EncodeAuthConfig(a)
	if err != nil {
		return "", errors.New("cannot encode registry credentials")
	}
	return v, nil
}
