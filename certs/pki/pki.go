// Package pki issues the development PKI: a CA and leaf certificates whose
// identity is a SPIFFE URI SAN (docs/security.md). The devpki command and the
// tests use it, so tests run on certificates made exactly as the tool makes
// them. Production uses any CA, SPIRE or cert-manager instead.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority that can sign leaf certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// CertPEM is Cert in PEM, ready for a CA bundle file.
	CertPEM []byte
	// KeyPEM is Key in PEM (PKCS #8).
	KeyPEM []byte
}

// NewCA makes a self-signed CA named after the trust domain.
func NewCA(trustDomain string, lifetime time.Duration) (*CA, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "tenant-agent dev CA " + trustDomain, Organization: []string{"tenant-agent dev"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(lifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

// LoadCA reads a CA written by WriteCA (or any PEM certificate and PKCS #8,
// EC or RSA key pair).
func LoadCA(certFile, keyFile string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load CA %s: %w", certFile, err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("load CA %s: key cannot sign", keyFile)
	}
	if !pair.Leaf.IsCA {
		return nil, fmt.Errorf("load CA %s: certificate is not a CA", certFile)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: pair.Leaf, Key: signer, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// Leaf describes a certificate to issue.
type Leaf struct {
	// CommonName is for humans; identity is in SPIFFEID.
	CommonName string
	// SPIFFEID becomes the URI SAN; empty issues a certificate without one
	// (tests use that to prove such certificates are refused).
	SPIFFEID string
	// DNSNames and IPs are for server certificates.
	DNSNames []string
	IPs      []net.IP
	// Server and Client set the extended key usages.
	Server, Client bool
	// NotBefore defaults to five minutes ago (clock skew), NotAfter to
	// NotBefore plus a day.
	NotBefore, NotAfter time.Time
}

// Issued is a signed leaf certificate and its key.
type Issued struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// TLSCertificate returns the pair for a tls.Config.
func (i *Issued) TLSCertificate() (tls.Certificate, error) {
	return tls.X509KeyPair(i.CertPEM, i.KeyPEM)
}

// Issue signs a leaf certificate.
func (ca *CA) Issue(l Leaf) (*Issued, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	if l.NotBefore.IsZero() {
		l.NotBefore = time.Now().Add(-5 * time.Minute)
	}
	if l.NotAfter.IsZero() {
		l.NotAfter = l.NotBefore.Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: l.CommonName, Organization: []string{"tenant-agent dev"}},
		NotBefore:    l.NotBefore,
		NotAfter:     l.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		DNSNames:     l.DNSNames,
		IPAddresses:  l.IPs,
	}
	if l.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	if l.SPIFFEID != "" {
		u, err := url.Parse(l.SPIFFEID)
		if err != nil {
			return nil, fmt.Errorf("SPIFFE ID %q: %w", l.SPIFFEID, err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign %q: %w", l.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Issued{Cert: cert, CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

// ErrExists is returned by WriteFiles when a file exists and force is off.
var ErrExists = errors.New("already exists (use --force to overwrite)")

// WriteFiles writes a certificate (mode 0644) and its key (mode 0600) as
// dir/name.pem and dir/name-key.pem. Without force it refuses to replace
// either file. Files are written under a temporary name and renamed, so a
// process re-reading them never sees half a file.
func WriteFiles(dir, name string, certPEM, keyPEM []byte, force bool) (certPath, keyPath string, err error) {
	certPath = filepath.Join(dir, name+".pem")
	keyPath = filepath.Join(dir, name+"-key.pem")
	if !force {
		for _, p := range []string{certPath, keyPath} {
			if _, err := os.Stat(p); err == nil {
				return certPath, keyPath, fmt.Errorf("%s: %w", p, ErrExists)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return certPath, keyPath, err
	}
	if err := writeAtomic(keyPath, keyPEM, 0o600); err != nil {
		return certPath, keyPath, err
	}
	return certPath, keyPath, writeAtomic(certPath, certPEM, 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func newKey() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
