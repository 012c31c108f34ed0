// Package registryauth reads registry credentials from a Docker config
// file the way the docker CLI does: the registry's entry in "credHelpers"
// first, then "credsStore", then "auths"; a helper is the program
// docker-credential-<name> on PATH. The agent's pulls and signature reads
// and the control plane's signature check share it.
//
// The file is read, and the helper run, again at every lookup, so
// short-lived tokens (ECR's last 12 hours) rotate without a restart.
// Nothing else is consulted (no DOCKER_CONFIG, no DOCKER_AUTH_CONFIG), and
// credentials are never logged; only where they came from.
package registryauth

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/credentials"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// Credentials are one registry's credentials; the zero value is
// anonymous.
type Credentials struct {
	Username, Password, IdentityToken, RegistryToken string
}

// File is a Docker config file of registry credentials.
type File struct {
	path   string
	logger *slog.Logger
}

var _ authn.Keychain = (*File)(nil)

// Open checks once that path is a Docker config file, so a typo fails at
// start rather than at the first pull or promote.
func Open(path string, logger *slog.Logger) (*File, error) {
	if logger == nil {
		logger = slog.Default()
	}
	f := &File{path: path, logger: logger.With("component", "registry-credentials")}
	if _, err := f.load(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *File) load() (*configfile.ConfigFile, error) {
	r, err := os.Open(f.path)
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	defer r.Close()
	cf := configfile.New(f.path)
	if err := cf.LoadFromReader(r); err != nil {
		// The parse error never quotes the file's content.
		return nil, fmt.Errorf("registry credentials %s: %w", f.path, err)
	}
	return cf, nil
}

// Lookup returns the credentials for the registry host (as the docker CLI
// names it: "docker.io" for Docker Hub), resolved now.
func (f *File) Lookup(host string) (Credentials, error) {
	cf, err := f.load()
	if err != nil {
		return Credentials{}, err
	}
	key := host
	if host == "docker.io" || host == name.DefaultRegistry {
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
		return Credentials{}, fmt.Errorf("registry credentials for %s from %s: %w", host, source, err)
	}
	c := Credentials{Username: ac.Username, Password: ac.Password, IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken}
	if c == (Credentials{}) {
		source = "none (anonymous)"
	}
	f.logger.Debug("registry credentials resolved", "registry", host, "source", source)
	return c, nil
}

// Resolve gives go-containerregistry the credentials for r's registry as
// they are now.
func (f *File) Resolve(r authn.Resource) (authn.Authenticator, error) {
	c, err := f.Lookup(r.RegistryStr())
	if err != nil {
		return nil, err
	}
	return c.Authenticator(), nil
}

// Authenticator is c for go-containerregistry.
func (c Credentials) Authenticator() authn.Authenticator {
	if c == (Credentials{}) {
		return authn.Anonymous
	}
	return authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken, RegistryToken: c.RegistryToken})
}
