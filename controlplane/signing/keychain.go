package signing

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/credentials"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// Keychain resolves registry credentials from a Docker config file (the
// control plane's --registry-credentials) the way the docker CLI and the
// agent do: the registry's entry in "credHelpers" first, then
// "credsStore", then "auths"; a helper is docker-credential-<name> on
// PATH. The file is read, and the helper run, at every lookup, so rotated
// tokens need no restart. Nothing else is consulted (no DOCKER_CONFIG, no
// DOCKER_AUTH_CONFIG). Credentials are never logged, only their source.
type Keychain struct {
	path   string
	logger *slog.Logger
}

var _ authn.Keychain = (*Keychain)(nil)

// NewKeychain checks once that path is a Docker config file, so a typo
// fails at start rather than at the first promote.
func NewKeychain(path string, logger *slog.Logger) (*Keychain, error) {
	if logger == nil {
		logger = slog.Default()
	}
	k := &Keychain{path: path, logger: logger.With("component", "registry-credentials")}
	if _, err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Keychain) load() (*configfile.ConfigFile, error) {
	f, err := os.Open(k.path)
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	defer f.Close()
	cf := configfile.New(k.path)
	if err := cf.LoadFromReader(f); err != nil {
		// The parse error never quotes the file's content.
		return nil, fmt.Errorf("registry credentials %s: %w", k.path, err)
	}
	return cf, nil
}

// Resolve returns the credentials for r's registry as they are now;
// anonymous when the file has none for it.
func (k *Keychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	cf, err := k.load()
	if err != nil {
		return nil, err
	}
	host := r.RegistryStr()
	key := host
	if host == name.DefaultRegistry || host == "docker.io" {
		key = authn.DefaultAuthKey // the docker CLI's key for Docker Hub
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
		return nil, fmt.Errorf("registry credentials for %s from %s: %w", host, source, err)
	}
	cfg := authn.AuthConfig{Username: ac.Username, Password: ac.Password, Auth: ac.Auth, IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken}
	if cfg == (authn.AuthConfig{}) {
		k.logger.Debug("registry credentials resolved", "registry", host, "source", "none (anonymous)")
		return authn.Anonymous, nil
	}
	k.logger.Debug("registry credentials resolved", "registry", host, "source", source)
	return authn.FromConfig(cfg), nil
}
