package signing_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	"github.com/molecule-ai/tenant-agent/controlplane/signing"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/sigtest"
	"github.com/molecule-ai/tenant-agent/pkg/imageref"
	"github.com/molecule-ai/tenant-agent/pkg/sigpolicy"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// policy writes a one-rule policy for host's repositories trusting
// signer, and loads it.
func policy(t *testing.T, host, mode string, signer *sigtest.Signer) *sigpolicy.Source {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "release.pub"), signer.PublicKeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "policy.json")
	doc := fmt.Sprintf(`{"rules": [{"repository": %q, "keys": ["release.pub"], "mode": %q}]}`, host+"/*", mode)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := sigpolicy.NewSource(path, sigpolicy.SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func checker(t *testing.T, cfg signing.Config) *signing.Checker {
	t.Helper()
	cfg.Logger = discard
	c, err := signing.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A registry that accepts connections and never answers fails the check
// with Unavailable once the timeout passes, not when the caller gives up;
// a warn rule lets the image through with the reason.
func TestSlowRegistryIsBoundedByTheTimeout(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { conn.Close() }) // held open, never answered
		}
	}()
	host := lis.Addr().String()
	ref := imageref.Ref{Repository: host + "/app", Digest: "sha256:" + strings.Repeat("a", 64)}
	signer := sigtest.NewSigner(t)

	start := time.Now()
	_, err = checker(t, signing.Config{Policy: policy(t, host, "enforce", signer), Timeout: 300 * time.Millisecond}).Check(context.Background(), ref)
	if cperr.KindOf(err) != cperr.KindUnavailable || !strings.Contains(err.Error(), "no answer from the registry within 300ms") {
		t.Errorf("Check = %v, want Unavailable after the timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Check took %s with a 300ms timeout", d)
	}

	warning, err := checker(t, signing.Config{Policy: policy(t, host, "warn", signer), Timeout: 300 * time.Millisecond}).Check(context.Background(), ref)
	if err != nil || !strings.Contains(warning, "could not be read") || !strings.Contains(warning, "warns only") {
		t.Errorf("warn mode: Check = %q, %v, want a warning and no error", warning, err)
	}
}

// --registry-credentials: the signature check reads a registry that wants
// credentials with those of the Docker config file, read at each check.
func TestKeychainReadsTheDockerConfigFile(t *testing.T) {
	reg := registrytest.StartRegistry(t)
	password := "s3cret"
	reg.RequireBasicAuth("ci", func() string { return password })
	auth := authn.FromConfig(authn.AuthConfig{Username: "ci", Password: password})
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	repository, digest := reg.Push(t, "team/app", img)
	signer := sigtest.NewSigner(t)
	signer.Sign(t, repository+"@"+digest, sigtest.Options{Auth: auth})
	ref := imageref.Ref{Repository: repository, Digest: digest}

	config := filepath.Join(t.TempDir(), "config.json")
	writeAuth := func(user, pass string) {
		t.Helper()
		b64 := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
		if err := os.WriteFile(config, fmt.Appendf(nil, `{"auths": {%q: {"auth": %q}}}`, reg.Host, b64), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeAuth("ci", "wrong")
	keychain, err := signing.NewKeychain(config, discard)
	if err != nil {
		t.Fatal(err)
	}
	c := checker(t, signing.Config{Policy: policy(t, reg.Host, "enforce", signer), Keychain: keychain})
	if _, err := c.Check(context.Background(), ref); cperr.KindOf(err) != cperr.KindUnavailable {
		t.Errorf("wrong password: Check = %v, want Unavailable", err)
	} else if strings.Contains(err.Error(), "wrong") {
		t.Errorf("the error repeats the password: %v", err)
	}
	writeAuth("ci", password) // read again: no restart needed
	if _, err := c.Check(context.Background(), ref); err != nil {
		t.Errorf("right password: Check = %v", err)
	}
	anonymous := checker(t, signing.Config{Policy: policy(t, reg.Host, "enforce", signer)})
	if _, err := anonymous.Check(context.Background(), ref); cperr.KindOf(err) != cperr.KindUnavailable {
		t.Errorf("anonymous: Check = %v, want Unavailable", err)
	}

	if _, err := signing.NewKeychain(filepath.Join(t.TempDir(), "missing.json"), discard); err == nil {
		t.Error("NewKeychain accepted a missing file")
	}
}
