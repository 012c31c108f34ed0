package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
)

// oneLine checks stderr is one line containing want.
func oneLine(t *testing.T, what string, r result, want string) {
	t.Helper()
	if strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("%s: want one line on stderr with %q: %s", what, want, r)
	}
}

// TestExitCodeThreeForConnectionAndAuth: nothing listening, a client
// certificate of another CA, a server the CA does not vouch for, missing
// certificate files and a call the identity may not make all exit 3 with
// one line.
func TestExitCodeThreeForConnectionAndAuth(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	other := pkitest.New(t)

	env := c.env("operator-dev")
	r := runTactl(t, env, "agents", "--addr", freeAddr(t))
	if r.code != 3 {
		t.Errorf("nothing listening: %s", r)
	}
	oneLine(t, "nothing listening", r, "connection refused")

	// Our certificate from another CA: the control plane refuses it.
	f := other.Files("operator-dev")
	r = runTactl(t, env, "agents", "--cert", f.Cert, "--key", f.Key)
	if r.code != 3 {
		t.Errorf("foreign client certificate: %s", r)
	}
	oneLine(t, "foreign client certificate", r, "refused this client's certificate")

	// The control plane's certificate not trusted by --ca.
	r = runTactl(t, env, "agents", "--ca", f.CA)
	if r.code != 3 {
		t.Errorf("untrusted server: %s", r)
	}
	oneLine(t, "untrusted server", r, "not trusted by --ca")

	r = runTactl(t, env, "agents", "--server-name", "cp.example")
	if r.code != 3 {
		t.Errorf("wrong server name: %s", r)
	}
	oneLine(t, "wrong server name", r, "not who --server-name says")

	r = runTactl(t, env, "agents", "--cert", filepath.Join(t.TempDir(), "missing.pem"))
	if r.code != 3 {
		t.Errorf("missing certificate: %s", r)
	}
	oneLine(t, "missing certificate", r, "missing.pem: no such file or directory")

	// A service may list but not deny by default.
	r = runTactl(t, c.env("service-limited"), "deny", "tenant", "acme", "--reason", "test")
	if r.code != 3 {
		t.Errorf("permission denied: %s", r)
	}
	oneLine(t, "permission denied", r, "permission denied")
}

// TestExitCodeTwoForUsage: unknown commands and flags, missing arguments
// and bad values exit 2 with one line, before any connection.
func TestExitCodeTwoForUsage(t *testing.T) {
	t.Parallel()
	env := append(os.Environ(), "TACTL_ADDR=127.0.0.1:1", "XDG_CONFIG_HOME="+t.TempDir())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"agents", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"promote", "codex"}, "accepts 2 arg(s), received 1"},
		{[]string{"promote", "codex", "registry.example/x:latest"}, "IMAGE_REF"},
		{[]string{"refresh", "acme", "codex", "--digest", "sha256:abc"}, "--digest"},
		{[]string{"watch", "x-123"}, "neither a command ID"},
		{[]string{"rollout", "get", "c-123"}, "not a rollout ID"},
		{[]string{"agents", "--progress", "fancy"}, "want auto, tty, plain"},
		{[]string{"agents", "--timeout", "soon"}, "--timeout"},
		{[]string{"deny", "tenant", "acme"}, "--reason is required"},
		{[]string{"promote", "codex", refV2, "-o", "wide"}, "does not print -o wide"},
	} {
		r := runTactl(t, env, tc.args...)
		if r.code != 2 {
			t.Errorf("%v: %s", tc.args, r)
			continue
		}
		oneLine(t, strings.Join(tc.args, " "), r, tc.want)
	}
	r := runTactl(t, append(env, "TACTL_TIMEOUT=soon"), "agents")
	if r.code != 2 || !strings.Contains(r.stderr, "TACTL_TIMEOUT") {
		t.Errorf("bad environment value: %s", r)
	}
}

// TestConfigFile: the config file in the user's config dir supplies the
// connection; a flag wins over the variable, which wins over the file.
func TestConfigFile(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	f := c.pki.Files("operator-dev")
	home := t.TempDir()
	dir := filepath.Join(home, "tactl")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// Relative paths are relative to the file.
	for _, p := range []string{f.Cert, f.Key, f.CA} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	conf := "addr: " + c.adminAddr + "\ncert: operator-dev.pem\nkey: operator-dev-key.pem\nca: ca.pem\nserver-name: localhost\n"
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "XDG_CONFIG_HOME="+home, "HOME="+home)
	if r := runTactl(t, env, "pins"); r.code != 0 || !strings.HasPrefix(r.stdout, "RUNTIME") {
		t.Errorf("with the config file: %s", r)
	}
	if r := runTactl(t, append(env, "TACTL_ADDR="+freeAddr(t)), "pins"); r.code != 3 {
		t.Errorf("TACTL_ADDR should win over the file: %s", r)
	}
	if r := runTactl(t, append(env, "TACTL_ADDR="+freeAddr(t)), "pins", "--addr", c.adminAddr); r.code != 0 {
		t.Errorf("--addr should win over TACTL_ADDR: %s", r)
	}
	jsonConf := filepath.Join(t.TempDir(), "c.json")
	if err := os.WriteFile(jsonConf, []byte(`{"addr": "`+c.adminAddr+`", "cert": "`+f.Cert+`", "key": "`+f.Key+`", "ca": "`+f.CA+`", "server-name": "localhost", "colour": "blue"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runTactl(t, env, "pins", "--config", jsonConf); r.code != 2 || !strings.Contains(r.stderr, "unknown keys colour") {
		t.Errorf("unknown key in the config file: %s", r)
	}
}
