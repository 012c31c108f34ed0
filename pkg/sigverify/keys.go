package sigverify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// Keys are the public keys a signature may be made with, in order; a
// verified signature names the index of the key that verified it
// (Result.SignedBy). Several keys allow rotation: sign with the new key
// while the old one is still listed.
type Keys []crypto.PublicKey

// minRSABits is the smallest RSA modulus accepted.
const minRSABits = 2048

// maxKeys bounds the keys in one PEM input.
const maxKeys = 64

// ParsePublicKeys reads one or more PEM "PUBLIC KEY" blocks (PKIX, what
// `cosign generate-key-pair` writes to cosign.pub): ECDSA P-256, Ed25519
// or RSA of at least 2048 bits. Anything else in the input (another block
// type, another curve, text between blocks) is an error naming the block,
// so a wrong file fails at load rather than at the first verification.
func ParsePublicKeys(data []byte) (Keys, error) {
	var keys Keys
	rest := data
	for n := 1; ; n++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if len(keys) == maxKeys {
			return nil, fmt.Errorf("public keys: more than %d PEM blocks", maxKeys)
		}
		if block.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("public keys: PEM block %d is %q, want \"PUBLIC KEY\"", n, truncate(block.Type, 32))
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public keys: PEM block %d: %w", n, err)
		}
		if err := checkKey(pub); err != nil {
			return nil, fmt.Errorf("public keys: PEM block %d: %w", n, err)
		}
		keys = append(keys, pub)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("public keys: %d bytes after the last PEM block are not a PEM block", len(bytes.TrimSpace(rest)))
	}
	if len(keys) == 0 {
		return nil, errors.New("public keys: no PEM \"PUBLIC KEY\" block")
	}
	return keys, nil
}

func checkKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return fmt.Errorf("ECDSA key on %s; only P-256 is accepted", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return fmt.Errorf("RSA key of %d bits; at least %d are needed", k.N.BitLen(), minRSABits)
		}
	default:
		return fmt.Errorf("key type %T is not accepted (ECDSA P-256, Ed25519, RSA)", pub)
	}
	return nil
}

// verify checks sig over message with each key in turn and returns the
// index of the first that verifies it, or why none does.
func (keys Keys) verify(message, sig []byte) (int, error) {
	var failures []string
	for i, k := range keys {
		err := verifySignature(k, message, sig)
		if err == nil {
			return i, nil
		}
		failures = append(failures, fmt.Sprintf("key %d (%s): %v", i, keyName(k), err))
	}
	return -1, errors.New(joinBounded(failures))
}

// verifySignature checks sig over payload with key, the way cosign's
// key-based verification does: ECDSA (ASN.1) and RSA over the payload's
// SHA-256, Ed25519 over the payload itself. RSA accepts PKCS#1 v1.5 and
// PSS.
func verifySignature(key crypto.PublicKey, payload, sig []byte) error {
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		h := sha256.Sum256(payload)
		if !ecdsa.VerifyASN1(k, h[:], sig) {
			return errors.New("ECDSA signature does not verify")
		}
	case ed25519.PublicKey:
		if !ed25519.Verify(k, payload, sig) {
			return errors.New("Ed25519 signature does not verify")
		}
	case *rsa.PublicKey:
		h := sha256.Sum256(payload)
		if rsa.VerifyPKCS1v15(k, crypto.SHA256, h[:], sig) == nil {
			return nil
		}
		if rsa.VerifyPSS(k, crypto.SHA256, h[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) == nil {
			return nil
		}
		return errors.New("RSA signature (PKCS#1 v1.5 or PSS, SHA-256) does not verify")
	default:
		return fmt.Errorf("key type %T is not accepted", key)
	}
	return nil
}

// keyName is a short description of a key for error messages: its type
// and the start of its SHA-256 fingerprint (over the PKIX encoding).
func keyName(key crypto.PublicKey) string {
	kind := fmt.Sprintf("%T", key)
	switch key.(type) {
	case *ecdsa.PublicKey:
		kind = "ECDSA P-256"
	case ed25519.PublicKey:
		kind = "Ed25519"
	case *rsa.PublicKey:
		kind = "RSA"
	}
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return kind
	}
	sum := sha256.Sum256(der)
	return fmt.Sprintf("%s %x", kind, sum[:6])
}
