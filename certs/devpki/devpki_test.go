package devpki

import (
	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/molecule-ai/tenant-agent/certs/pki"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

// devpki makes the CA and every leaf with its SPIFFE ID, keys 0600 in a
// 0700 folder; a second run keeps what exists (one CA signs new tenants),
// and bad input is refused before anything is written.
func TestRunMakesAPKIAndKeepsItOnASecondRun(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if err := Run([]string{"--out", dir, "acme"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("folder: %v %v", fi.Mode(), err)
	}
	if _, err := pki.LoadCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")); err != nil {
		t.Fatal(err)
	}
	caBefore, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	for stem, want := range map[string]string{
		"agent-acme":           "spiffe://molecule.local/tenant/acme",
		"operator-dev":         "spiffe://molecule.local/operator/dev",
		"service-promote-hook": "spiffe://molecule.local/service/promote-hook",
	} {
		if fi, err := os.Stat(filepath.Join(dir, stem+"-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s key: %v", stem, err)
		}
		id := leafID(t, filepath.Join(dir, stem+".pem"))
		if id != want {
			t.Errorf("%s has %q; want %q", stem, id, want)
		}
	}
	if err := Run([]string{"--out", dir, "acme", "globex"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	caAfter, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if string(caAfter) != string(caBefore) {
		t.Fatal("a second run replaced the CA")
	}
	if got := leafID(t, filepath.Join(dir, "agent-globex.pem")); got != "spiffe://molecule.local/tenant/globex" {
		t.Fatalf("new tenant's certificate has %q", got)
	}
	if err := Run([]string{"--out", filepath.Join(t.TempDir(), "bad"), "Not_A_Tenant"}, io.Discard); err == nil {
		t.Fatal("a bad tenant name was accepted")
	}
}

func leafID(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.FromCertificate(cert, "molecule.local")
	if err != nil {
		t.Fatal(err)
	}
	return id.ID
}
