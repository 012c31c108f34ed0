package docker

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/docker/docker/api/types/registry"
)

// RegistryAuth reads registry credentials from a Docker config file
// (the "auths" section of ~/.docker/config.json, or a file of the same
// shape) and returns the X-Registry-Auth value for a repository's
// registry, or "" when the file names none. Credential helpers are not
// run: on a tenant host, write the credentials the agent needs into its
// own file.
func RegistryAuth(path string) (func(repository string) string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	var file struct {
		Auths map[string]struct {
			Auth          string `json:"auth"`
			Username      string `json:"username"`
			Password      string `json:"password"`
			IdentityToken string `json:"identitytoken"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(b, &file); err != nil {
		return nil, fmt.Errorf("registry credentials %s: %w", path, err)
	}
	encoded := map[string]string{}
	for server, a := range file.Auths {
		cfg := registry.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, ServerAddress: server}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("registry credentials %s: auth for %s is not base64", path, server)
			}
			cfg.Username, cfg.Password, _ = strings.Cut(string(raw), ":")
		}
		value, err := registry.EncodeAuthConfig(cfg)
		if err != nil {
			return nil, err
		}
		encoded[normalizeServer(server)] = value
	}
	return func(repository string) string { return encoded[registryOf(repository)] }, nil
}

// registryOf is the registry host of a repository ("docker.io" when the
// first element is not a host).
func registryOf(repo string) string {
	first, _, ok := strings.Cut(repo, "/")
	if !ok || (!strings.ContainsAny(first, ".:") && first != "localhost") {
		return "docker.io"
	}
	return first
}

func normalizeServer(s string) string {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "https://"), "http://")
	s, _, _ = strings.Cut(s, "/")
	if s == "index.docker.io" || s == "registry-1.docker.io" {
		return "docker.io"
	}
	return s
}
