package pki

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A CA written to disk and loaded again issues leaves that verify against
// it, with the SPIFFE ID and usages asked for; files are written 0600 for
// keys and never replaced without force.
func TestCAIssuesLeavesThatVerifyAfterAReload(t *testing.T) {
	ca, err := NewCA("molecule.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath, err := WriteFiles(dir, "ca", ca.CertPEM, ca.KeyPEM, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := WriteFiles(dir, "ca", ca.CertPEM, ca.KeyPEM, false); !errors.Is(err, ErrExists) {
		t.Fatalf("second write without force: %v; want ErrExists", err)
	}
	if fi, _ := os.Stat(keyPath); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %o; want 600", fi.Mode().Perm())
	}
	loaded, err := LoadCA(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := loaded.Issue(Leaf{SPIFFEID: "spiffe://molecule.local/tenant/acme", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("leaf does not verify as a client against the CA: %v", err)
	}
	if _, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Fatal("a client leaf verifies for server auth")
	}
	if len(leaf.Cert.URIs) != 1 || leaf.Cert.URIs[0].String() != "spiffe://molecule.local/tenant/acme" {
		t.Fatalf("URIs %v", leaf.Cert.URIs)
	}
	if _, err := leaf.TLSCertificate(); err != nil {
		t.Fatalf("leaf key does not match its certificate: %v", err)
	}
	if _, err := LoadCA(filepath.Join(dir, "missing.pem"), keyPath); err == nil {
		t.Fatal("loading a missing CA succeeded")
	}
}
