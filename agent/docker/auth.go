package docker

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/credentials"
	"github.com/docker/docker/api/types/registry"
	"github.com/google/go-containerregistry/pkg/authn"
)

// CredentialFunc returns the credentials for a repository's registry, as
// they are now; an empty AuthConfig means anonymous.
type CredentialFunc func(repository string) (registry.AuthConfig, error)

// Anonymous is the CredentialFunc of an agent without
// --registry-credentials.
func Anonymous(string) (registry.AuthConfig, error) { return registry.AuthConfig{}, nil }

// Credentials reads registry credentials from a Docker config file (the
// agent's --registry-credentials), the way the docker CLI does: a
// registry's entry in "credHelpers" first, then "credsStore", then
// "auths". A helper is the program docker-credential-<name> on PATH.
//
// The file is read again and the helper run again at every lookup, so
// short-lived tokens (ECR's last 12 hours) rotate without a restart.
// Credentials are never logged; only where they came from.
type Credentials struct {
	path   string
	logger *slog.Logger
}

// NewCredentials checks once that path is a Docker config file, so a
// typo fails at start rather than at the first pull.
func NewCredentials(path string, logger *slog.Logger) (*Credentials, error) {
	if logger == nil {
		logger = slog.Default()
	}
	c := &Credentials{path: path, logger: logger.With("component", "registry-credentials")}
	if _, err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Credentials) load() (*configfile.ConfigFile, error) {
	f, err := os.Open(c.path)
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	defer f.Close()
	cf := configfile.New(c.path)
	if err := cf.LoadFromReader(f); err != nil {
		// The parse error never quotes the file's content.
		return nil, fmt.Errorf("registry credentials %s: %w", c.path, err)
	}
	return cf, nil
}

// For returns the credentials for repository's registry, resolved now.
func (c *Credentials) For(repository string) (registry.AuthConfig, error) {
	host, err := registryHost(repository)
	if err != nil {
		return registry.AuthConfig{}, err
	}
	cf, err := c.load()
	if err != nil {
		return registry.AuthConfig{}, err
	}
	// The docker CLI's key for Docker Hub is its historical index URL.
	key := host
	if host == "docker.io" {
		key = "https://index.docker.io/v1/"
	}
	store, source := credentials.NewFileStore(cf), "auths"
	helper := cf.CredentialsStore
	if h, ok := cf.CredentialHelpers[key]; ok {
		helper = h
	}
	if helper != "" {
		store, source = credentials.NewNativeStore(cf, helper), "docker-credential-"+helper
	}
	ac, err := store.Get(key)
	if err != nil {
		return registry.AuthConfig{}, fmt.Errorf("registry credentials for %s from %s: %w", host, source, err)
	}
	out := registry.AuthConfig{Username: ac.Username, Password: ac.Password, IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken}
	if out == (registry.AuthConfig{}) {
		source = "none (anonymous)"
	} else {
		out.ServerAddress = host
	}
	c.logger.Debug("registry credentials resolved", "registry", host, "source", source)
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
	if a.Username == "" && a.Password == "" && a.IdentityToken == "" && a.RegistryToken == "" {
		return authn.Anonymous
	}
	return authn.FromConfig(authn.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken})
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
