// Package mtls builds the mutual-TLS credentials both sides use: TLS 1.3
// only, client certificates required and verified by the server, the server
// name verified by the client, and certificate, key and CA bundle files
// re-read when they change, without a restart and without touching
// connections already established.
package mtls

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
)

// Files names the PEM files of one side.
type Files struct {
	// Cert is this side's certificate chain.
	Cert string
	// Key is the private key of Cert.
	Key string
	// CA is the bundle of CAs to trust for the peer; it may hold several
	// CAs while one is being rotated out.
	CA string
}

// CheckAndSetDefaults reports a missing or unreadable file by its flag name.
func (f Files) CheckAndSetDefaults() error {
	var errs []error
	for _, p := range []struct{ what, path string }{{"certificate", f.Cert}, {"key", f.Key}, {"CA bundle", f.CA}} {
		if p.path == "" {
			errs = append(errs, fmt.Errorf("%s file is not set", p.what))
			continue
		}
		if _, err := os.Stat(p.path); err != nil {
			errs = append(errs, fmt.Errorf("%s file: %w", p.what, err))
		}
	}
	return errors.Join(errs...)
}

// Material is one consistent load of the files.
type Material struct {
	Certificate tls.Certificate
	// Leaf is the parsed first certificate of the chain.
	Leaf *x509.Certificate
	// Roots is the CA bundle as a pool.
	Roots *x509.CertPool
}

// Source serves the current Material, re-reading the files on each call and
// re-parsing them when their bytes changed. A bad update (say, a new
// certificate written before its key) is logged and the last good material
// is kept, so a rotation in progress never breaks new handshakes.
type Source struct {
	files  Files
	logger *slog.Logger

	mu      sync.Mutex
	raw     [3][]byte
	current *Material
}

// NewSource loads the files once; it fails if they are not a valid set.
func NewSource(files Files, logger *slog.Logger) (*Source, error) {
	if err := files.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	s := &Source{files: files, logger: logger.With("component", "mtls")}
	raw, err := s.read()
	if err != nil {
		return nil, err
	}
	m, err := parse(raw)
	if err != nil {
		return nil, fmt.Errorf("load %s, %s, %s: %w", files.Cert, files.Key, files.CA, err)
	}
	s.raw, s.current = raw, m
	return s, nil
}

// Current returns the material to use for a new handshake.
func (s *Source) Current() *Material {
	raw, err := s.read()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.logger.Warn("cannot re-read TLS files; keeping the last good ones", "error", err)
		return s.current
	}
	if bytes.Equal(raw[0], s.raw[0]) && bytes.Equal(raw[1], s.raw[1]) && bytes.Equal(raw[2], s.raw[2]) {
		return s.current
	}
	m, err := parse(raw)
	if err != nil {
		s.logger.Warn("TLS files changed but do not load; keeping the last good ones", "cert", s.files.Cert, "error", err)
		return s.current
	}
	s.logger.Info("TLS files reloaded", "cert", s.files.Cert, "serial", fmt.Sprintf("%x", m.Leaf.SerialNumber), "not_after", m.Leaf.NotAfter)
	s.raw, s.current = raw, m
	return m
}

func (s *Source) read() ([3][]byte, error) {
	var raw [3][]byte
	for i, p := range []string{s.files.Cert, s.files.Key, s.files.CA} {
		b, err := os.ReadFile(p)
		if err != nil {
			return raw, err
		}
		raw[i] = b
	}
	return raw, nil
}

func parse(raw [3][]byte) (*Material, error) {
	cert, err := tls.X509KeyPair(raw[0], raw[1])
	if err != nil {
		return nil, fmt.Errorf("certificate and key: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(raw[2]) {
		return nil, errors.New("CA bundle holds no PEM certificate")
	}
	return &Material{Certificate: cert, Leaf: cert.Leaf, Roots: roots}, nil
}
