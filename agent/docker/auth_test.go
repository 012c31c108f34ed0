package docker

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestRegistryAuth(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(path, []byte(`{"auths":{
		"registry.example": {"auth": "`+base64.StdEncoding.EncodeToString([]byte("robot:pa:ss"))+`"},
		"https://index.docker.io/v1/": {"username": "hub", "password": "pw"}}}`), 0o600)
	auth, err := RegistryAuth(path)
	if err != nil {
		t.Fatal(err)
	}
	decode := func(v string) map[string]string {
		b, err := base64.URLEncoding.DecodeString(v)
		if err != nil {
			t.Fatalf("not base64url: %q", v)
		}
		m := map[string]string{}
		json.Unmarshal(b, &m)
		return m
	}
	if got := decode(auth("registry.example/molecule-ai/workspace-template-codex")); got["username"] != "robot" || got["password"] != "pa:ss" {
		t.Errorf("registry.example: %v", got)
	}
	if got := decode(auth("library/ubuntu")); got["username"] != "hub" {
		t.Errorf("docker hub: %v", got)
	}
	if auth("other.example/x") != "" {
		t.Errorf("credentials for a registry the file does not name")
	}
}
