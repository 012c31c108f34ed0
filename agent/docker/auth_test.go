package docker

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/registry"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

func TestCredentialsAuthsHelpersAndStore(t *testing.T) {
	pwFile, calls := registrytest.CredentialHelper(t, "test", "helper-user", "first")
	path := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(path, []byte(`{
		"auths": {
			"registry.example": {"auth": "`+base64.StdEncoding.EncodeToString([]byte("robot:pa:ss"))+`"},
			"https://index.docker.io/v1/": {"username": "hub", "password": "pw"}
		},
		"credHelpers": {"123456789012.dkr.ecr.us-east-1.amazonaws.com": "test"}}`), 0o600)
	var logs testlog.Buffer
	c, err := NewCredentials(path, logs.Logger(t, "credentials"))
	if err != nil {
		t.Fatal(err)
	}
	get := func(repo string) (string, string) {
		t.Helper()
		a, err := c.For(repo)
		if err != nil {
			t.Fatalf("%s: %v", repo, err)
		}
		return a.Username, a.Password
	}
	if u, p := get("registry.example/molecule-ai/workspace-template-codex"); u != "robot" || p != "pa:ss" {
		t.Errorf("auths: %s:%s", u, p)
	}
	if u, _ := get("library/ubuntu"); u != "hub" {
		t.Errorf("docker hub: %s", u)
	}
	if u, p := get("other.example/x"); u != "" || p != "" {
		t.Errorf("credentials for a registry the file does not name: %s:%s", u, p)
	}
	ecr := "123456789012.dkr.ecr.us-east-1.amazonaws.com/molecule-ai/workspace-template-codex"
	if u, p := get(ecr); u != "helper-user" || p != "first" {
		t.Errorf("credHelpers: %s:%s", u, p)
	}
	// The helper runs again at each lookup: a rotated token is seen.
	os.WriteFile(pwFile, []byte("second"), 0o600)
	if _, p := get(ecr); p != "second" {
		t.Errorf("after rotation: %s", p)
	}
	if b, _ := os.ReadFile(calls); strings.Count(string(b), "123456789012.dkr.ecr.us-east-1.amazonaws.com\n") != 2 {
		t.Errorf("helper calls: %q", b)
	}
	// The file is read again too: credsStore added later covers the rest.
	os.WriteFile(path, []byte(`{"credsStore": "test"}`), 0o600)
	if u, p := get("registry.example/x"); u != "helper-user" || p != "second" {
		t.Errorf("credsStore: %s:%s", u, p)
	}
	if s := logs.String(); strings.Contains(s, "pa:ss") || strings.Contains(s, "second") || strings.Contains(s, "first") || !strings.Contains(s, "source=docker-credential-test") {
		t.Errorf("logs hold a credential, or not where it came from:\n%s", s)
	}
}

func TestCredentialsErrorsAreClear(t *testing.T) {
	if _, err := NewCredentials(filepath.Join(t.TempDir(), "missing.json"), nil); err == nil {
		t.Error("a missing file passed")
	}
	path := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(path, []byte(`{"credHelpers": {"registry.example": "absent"}}`), 0o600)
	c, err := NewCredentials(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.For("registry.example/x")
	if err == nil || !strings.Contains(err.Error(), "registry credentials for registry.example from docker-credential-absent") {
		t.Errorf("a helper not on PATH: %v", err)
	}
}

// A registry that needs credentials: with none the pull fails at once,
// saying the registry refused them; with the file's auths it works; with
// a credential helper whose password rotates between two pulls (the
// registry taking only the current one), both work, because the helper is
// asked again at each pull.
func TestPullFromRegistryThatNeedsCredentials(t *testing.T) {
	cli := registrytest.Docker(t)
	var logs testlog.Buffer
	engine, err := New("", logs.Logger(t, "docker"))
	if err != nil {
		t.Fatal(err)
	}
	pwFile, _ := registrytest.CredentialHelper(t, "test", "robot", "first")
	reg := registrytest.StartRegistry(t)
	reg.RequireBasicAuth("robot", registrytest.ReadPassword(pwFile))
	repo, v1 := reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v1"}))
	_, v2 := reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v2"}))
	_, v3 := reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v3"}))
	t.Cleanup(func() { registrytest.RemoveImages(t, cli, repo) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pull := func(digest string, auth registry.AuthConfig) error {
		_, err := engine.Pull(ctx, repo+"@"+digest, PullOptions{Auth: auth, Attempts: 3, Backoff: time.Hour}, nil)
		return err
	}
	config := func(body string) *Credentials {
		path := filepath.Join(t.TempDir(), "config.json")
		os.WriteFile(path, []byte(body), 0o600)
		c, err := NewCredentials(path, logs.Logger(t, "credentials"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	mustFor := func(c *Credentials) registry.AuthConfig {
		a, err := c.For(repo)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}

	start := time.Now()
	err = pull(v1, registry.AuthConfig{})
	var pe *PullError
	if !errors.As(err, &pe) || pe.Transient || pe.Attempts != 1 || !strings.Contains(err.Error(), "refused the credentials") {
		t.Fatalf("pull without credentials: %v; want a permanent failure at once saying the registry refused the credentials", err)
	}
	t.Logf("without credentials: %v", err)
	if time.Since(start) > 30*time.Second {
		t.Errorf("a refused pull took %v", time.Since(start))
	}

	auths := config(`{"auths": {"` + reg.Host + `": {"auth": "` + base64.StdEncoding.EncodeToString([]byte("robot:first")) + `"}}}`)
	if err := pull(v1, mustFor(auths)); err != nil {
		t.Fatalf("pull with the file's auths: %v", err)
	}

	helper := config(`{"credHelpers": {"` + reg.Host + `": "test"}}`)
	if err := pull(v2, mustFor(helper)); err != nil {
		t.Fatalf("pull with the helper's first password: %v", err)
	}
	old := mustFor(helper)
	os.WriteFile(pwFile, []byte("second"), 0o600) // the token rotates: the registry takes only this one now
	if err := pull(v3, old); err == nil {
		t.Fatalf("the registry took the old password")
	}
	if err := pull(v3, mustFor(helper)); err != nil {
		t.Fatalf("pull with the helper's rotated password: %v", err)
	}
	if s := logs.String(); strings.Contains(s, "first") || strings.Contains(s, "second") {
		t.Errorf("a password was logged:\n%s", s)
	}
}
