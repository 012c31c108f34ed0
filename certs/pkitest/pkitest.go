// Package pkitest gives tests a dev PKI made by the devpki command itself,
// in a temporary folder, plus helpers to issue the odd certificates that
// failure tests need (expired, foreign, without a SPIFFE ID).
package pkitest

import (
	"io"
	"path/filepath"
	"testing"

	"github.com/molecule-ai/tenant-agent/certs/devpki"
	"github.com/molecule-ai/tenant-agent/certs/pki"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// TrustDomain is the trust domain of every PKI made here.
const TrustDomain = "molecule.local"

// PKI is a dev PKI on disk.
type PKI struct {
	Dir string
	CA  *pki.CA
}

// New runs devpki into a temporary folder with agent certificates for the
// tenants given ("acme" or "acme/host-1"), the operator "dev" and the
// services "promote-hook" and "limited".
func New(t testing.TB, tenants ...string) *PKI {
	t.Helper()
	dir := t.TempDir()
	args := append([]string{"--out", dir, "--trust-domain", TrustDomain, "--services", "promote-hook,limited"}, tenants...)
	if err := devpki.Run(args, io.Discard); err != nil {
		t.Fatalf("devpki: %v", err)
	}
	ca, err := pki.LoadCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{Dir: dir, CA: ca}
}

// Files returns the mtls.Files of a certificate devpki wrote, by its file
// stem: "controlplane", "agent-acme", "operator-dev", "service-promote-hook".
func (p *PKI) Files(stem string) mtls.Files {
	return mtls.Files{
		Cert: filepath.Join(p.Dir, stem+".pem"),
		Key:  filepath.Join(p.Dir, stem+"-key.pem"),
		CA:   filepath.Join(p.Dir, "ca.pem"),
	}
}

// Source loads a Source for a certificate devpki wrote.
func (p *PKI) Source(t testing.TB, stem string) *mtls.Source {
	t.Helper()
	src, err := mtls.NewSource(p.Files(stem), nil)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// Issue signs leaf with this PKI's CA and writes it next to the others as
// stem.pem and stem-key.pem (replacing them), returning its files.
func (p *PKI) Issue(t testing.TB, stem string, leaf pki.Leaf) (mtls.Files, *pki.Issued) {
	t.Helper()
	return IssueWith(t, p.CA, p.Dir, stem, leaf)
}

// IssueWith signs leaf with ca and writes it into dir, trusting this
// PKI's CA bundle file for the peer.
func IssueWith(t testing.TB, ca *pki.CA, dir, stem string, leaf pki.Leaf) (mtls.Files, *pki.Issued) {
	t.Helper()
	issued, err := ca.Issue(leaf)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, err := pki.WriteFiles(dir, stem, issued.CertPEM, issued.KeyPEM, true)
	if err != nil {
		t.Fatal(err)
	}
	return mtls.Files{Cert: certPath, Key: keyPath, CA: filepath.Join(dir, "ca.pem")}, issued
}
