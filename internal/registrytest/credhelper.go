package registrytest

import (
	"os"
	"path/filepath"
	"testing"
)

// CredentialHelper puts a fake docker-credential-<name> on PATH for the
// rest of the test. It answers "get" with user and the password in the
// returned passwordFile at that moment (so a test rotates the token by
// rewriting the file, and can hand the same file to RequireBasicAuth), and
// appends each server it is asked about to the calls file.
func CredentialHelper(t testing.TB, name, user, password string) (passwordFile, calls string) {
	t.Helper()
	dir := t.TempDir()
	passwordFile, calls = filepath.Join(dir, "password"), filepath.Join(dir, "calls")
	script := `#!/bin/sh
[ "$1" = get ] || exit 1
read server
echo "$server" >> '` + calls + `'
printf '{"ServerURL":"%s","Username":"` + user + `","Secret":"%s"}' "$server" "$(cat '` + passwordFile + `')"
`
	if err := os.WriteFile(filepath.Join(dir, "docker-credential-"+name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(passwordFile, []byte(password), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return passwordFile, calls
}

// ReadPassword returns a RequireBasicAuth password function that reads
// passwordFile at each request.
func ReadPassword(passwordFile string) func() string {
	return func() string {
		b, _ := os.ReadFile(passwordFile)
		return string(b)
	}
}
