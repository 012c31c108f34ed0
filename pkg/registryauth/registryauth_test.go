package registryauth

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// TestResolveAsGoContainerregistry: go-containerregistry names Docker Hub
// index.docker.io; the file keys it as the docker CLI does. A registry the
// file does not name is anonymous; the file is read again at each lookup.
func TestResolveAsGoContainerregistry(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	write := func(user string) {
		t.Helper()
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":pw"))
		if err := os.WriteFile(path, []byte(`{"auths": {"https://index.docker.io/v1/": {"auth": "`+auth+`"}, "registry.example": {"auth": "`+auth+`"}}}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("first")
	f, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	user := func(repo string) string {
		t.Helper()
		r, err := name.NewRepository(repo)
		if err != nil {
			t.Fatal(err)
		}
		a, err := f.Resolve(r)
		if err != nil {
			t.Fatalf("%s: %v", repo, err)
		}
		if a == authn.Anonymous {
			return "anonymous"
		}
		cfg, err := a.Authorization()
		if err != nil {
			t.Fatal(err)
		}
		return cfg.Username
	}
	if got := user("library/ubuntu"); got != "first" {
		t.Errorf("docker hub: %s", got)
	}
	if got := user("other.example/x"); got != "anonymous" {
		t.Errorf("a registry the file does not name: %s", got)
	}
	write("second")
	if got := user("registry.example/molecule-ai/app"); got != "second" {
		t.Errorf("after the file changed: %s", got)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing.json"), nil); err == nil {
		t.Error("Open accepted a missing file")
	}
}
