package sigverify_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/sigtest"
	"github.com/molecule-ai/tenant-agent/pkg/sigverify"
)

// setup serves a loopback registry (in-process, no Docker) holding one
// small image, and returns its pinned reference.
func setup(t *testing.T) (*registrytest.Registry, string) {
	t.Helper()
	return setupOn(t, registrytest.StartRegistry)
}

// setupOn is setup on a registry start makes (registrytest.Registries).
func setupOn(t *testing.T, start func(registrytest.T) *registrytest.Registry) (*registrytest.Registry, string) {
	t.Helper()
	reg := start(t)
	return reg, sigtest.PushImage(t, reg)
}

func keys(t *testing.T, signers ...*sigtest.Signer) sigverify.Keys {
	t.Helper()
	var pems []byte
	for _, s := range signers {
		pems = append(pems, s.PublicKeyPEM...)
	}
	k, err := sigverify.ParsePublicKeys(pems)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func verify(t *testing.T, ref string, opts sigverify.Options, k sigverify.Keys) (sigverify.Result, error) {
	t.Helper()
	return sigverify.Verify(context.Background(), ref, opts, k)
}

func TestSignedByAllowedKey(t *testing.T) {
	_, ref := setup(t)
	s := sigtest.NewSigner(t)
	tag := s.Sign(t, ref, sigtest.Options{})
	res, err := verify(t, ref, sigverify.Options{}, keys(t, s))
	if err != nil {
		t.Fatal(err)
	}
	repo, _, _ := strings.Cut(ref, "@")
	if res.SignedBy != 0 || res.SignatureTag != tag || res.DockerReference != repo {
		t.Fatalf("result %+v, want key 0, tag %s, reference %s", res, tag, repo)
	}
}

func TestUnsigned(t *testing.T) {
	_, ref := setup(t)
	_, err := verify(t, ref, sigverify.Options{}, keys(t, sigtest.NewSigner(t)))
	if !errors.Is(err, sigverify.ErrNoSignature) {
		t.Fatalf("err = %v, want ErrNoSignature", err)
	}
	repo, digest, _ := strings.Cut(ref, "@")
	for _, want := range []string{repo, digest, sigverify.SignatureTag(digest)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestUnsignedUnknownRepository(t *testing.T) {
	_, ref := setup(t)
	_, err := verify(t, ref, sigverify.Options{SignatureRepository: strings.Split(ref, "/")[0] + "/nobody/here"}, keys(t, sigtest.NewSigner(t)))
	if !errors.Is(err, sigverify.ErrNoSignature) {
		t.Fatalf("err = %v, want ErrNoSignature", err)
	}
}

func TestSignedByAnotherKey(t *testing.T) {
	_, ref := setup(t)
	allowed, other := sigtest.NewSigner(t), sigtest.NewSigner(t)
	other.Sign(t, ref, sigtest.Options{})
	_, err := verify(t, ref, sigverify.Options{}, keys(t, allowed))
	if !errors.Is(err, sigverify.ErrBadSignature) {
		t.Fatalf("err = %v, want ErrBadSignature", err)
	}
	if !strings.Contains(err.Error(), "ECDSA signature does not verify") {
		t.Errorf("error %q does not say why", err)
	}
}

func TestSignatureForAnotherDigest(t *testing.T) {
	_, ref := setup(t)
	s := sigtest.NewSigner(t)
	other := "sha256:" + strings.Repeat("ab", 32)
	s.Sign(t, ref, sigtest.Options{PayloadDigest: other})
	_, err := verify(t, ref, sigverify.Options{}, keys(t, s))
	if !errors.Is(err, sigverify.ErrWrongDigest) {
		t.Fatalf("err = %v, want ErrWrongDigest", err)
	}
	if !strings.Contains(err.Error(), other) {
		t.Errorf("error %q does not name the payload's digest", err)
	}
}

func TestTamperedPayload(t *testing.T) {
	_, ref := setup(t)
	s := sigtest.NewSigner(t)
	s.Sign(t, ref, sigtest.Options{Tamper: true})
	_, err := verify(t, ref, sigverify.Options{}, keys(t, s))
	if !errors.Is(err, sigverify.ErrBadSignature) {
		t.Fatalf("err = %v, want ErrBadSignature", err)
	}
}

func TestKeyRotation(t *testing.T) {
	_, ref := setup(t)
	oldKey, newKey := sigtest.NewSigner(t), sigtest.NewSigner(t)
	newKey.Sign(t, ref, sigtest.Options{})
	res, err := verify(t, ref, sigverify.Options{}, keys(t, oldKey, newKey))
	if err != nil {
		t.Fatal(err)
	}
	if res.SignedBy != 1 {
		t.Fatalf("SignedBy = %d, want 1", res.SignedBy)
	}
}

// A bad signature and a good one in the same manifest (cosign appends a
// layer per signing): the good one wins.
func TestAppendedSignatures(t *testing.T) {
	_, ref := setup(t)
	allowed, other := sigtest.NewSigner(t), sigtest.NewSigner(t)
	other.Sign(t, ref, sigtest.Options{})
	allowed.Sign(t, ref, sigtest.Options{Append: true})
	if _, err := verify(t, ref, sigverify.Options{}, keys(t, allowed)); err != nil {
		t.Fatal(err)
	}
}

func TestSeparateSignatureRepository(t *testing.T) {
	reg, ref := setup(t)
	s := sigtest.NewSigner(t)
	sigRepo := reg.Host + "/molecule-ai/signatures"
	s.Sign(t, ref, sigtest.Options{SignatureRepository: sigRepo})
	res, err := verify(t, ref, sigverify.Options{SignatureRepository: sigRepo}, keys(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res.SignatureTag, sigRepo+":sha256-") {
		t.Fatalf("SignatureTag = %s, want in %s", res.SignatureTag, sigRepo)
	}
	// Not in the image's own repository.
	if _, err := verify(t, ref, sigverify.Options{}, keys(t, s)); !errors.Is(err, sigverify.ErrNoSignature) {
		t.Fatalf("image repository: err = %v, want ErrNoSignature", err)
	}
}

func TestKeyTypes(t *testing.T) {
	for _, kt := range sigtest.KeyTypes {
		for _, format := range []string{sigverify.FormatSimpleSigning, sigverify.FormatSigstoreBundle} {
			t.Run(kt.Name+"/"+format, func(t *testing.T) {
				_, ref := setup(t)
				s := kt.New(t)
				if format == sigverify.FormatSimpleSigning {
					s.Sign(t, ref, sigtest.Options{})
				} else {
					s.AttachBundle(t, ref, sigtest.BundleOptions{})
				}
				// Listed second, after a key of another type.
				res, err := verify(t, ref, sigverify.Options{}, keys(t, sigtest.NewEd25519Signer(t), s))
				if err != nil || res.SignedBy != 1 || res.Format != format {
					t.Fatalf("%+v, %v; want key 1, %s", res, err, format)
				}
			})
		}
	}
}

func TestRegistryCredentials(t *testing.T) {
	reg, ref := setup(t)
	reg.RequireBasicAuth("ci", func() string { return "secret" })
	s := sigtest.NewSigner(t)
	s.Sign(t, ref, sigtest.Options{Auth: &authn.Basic{Username: "ci", Password: "secret"}})
	k := keys(t, s)
	if _, err := verify(t, ref, sigverify.Options{}, k); err == nil || errors.Is(err, sigverify.ErrNoSignature) {
		t.Fatalf("anonymous: err = %v, want an access error that is not ErrNoSignature", err)
	}
	kc := staticKeychain{&authn.Basic{Username: "ci", Password: "secret"}}
	if _, err := verify(t, ref, sigverify.Options{Keychain: kc}, k); err != nil {
		t.Fatal(err)
	}
}

type staticKeychain struct{ a authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.a, nil }

func TestMalformedSignatures(t *testing.T) {
	_, ref := setup(t)
	s := sigtest.NewSigner(t)
	repo, digest, _ := strings.Cut(ref, "@")
	payload := sigtest.Payload(repo, digest)
	sig := base64.StdEncoding.EncodeToString(s.SignPayload(t, payload))
	sigtest.PushSignature(t, repo, digest, payload, "not base64!", sigtest.Options{})
	sigtest.PushSignature(t, repo, digest, payload, strings.Repeat("A", sigverify.MaxAnnotation+4), sigtest.Options{Append: true})
	big := append(bytes.Clone(payload), bytes.Repeat([]byte(" "), sigverify.MaxPayload)...)
	sigtest.PushSignature(t, repo, digest, big, sig, sigtest.Options{Append: true})
	_, err := verify(t, ref, sigverify.Options{}, keys(t, s))
	if !errors.Is(err, sigverify.ErrBadSignature) {
		t.Fatalf("err = %v, want ErrBadSignature", err)
	}
	for _, want := range []string{"not base64", "at most 4096", "at most 65536"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if len(err.Error()) > 4096 {
		t.Errorf("error is %d bytes", len(err.Error()))
	}
	// The good signature appended last still verifies.
	sigtest.PushSignature(t, repo, digest, payload, sig, sigtest.Options{Append: true})
	if _, err := verify(t, ref, sigverify.Options{}, keys(t, s)); err != nil {
		t.Fatal(err)
	}
}

func TestParsePublicKeys(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", "no PEM"},
		{"private key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", `"PRIVATE KEY"`},
		{"P-384", p384PEM(t), "only P-256"},
		{"garbage after", string(sigtest.NewSigner(t).PublicKeyPEM) + "junk", "after the last PEM block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sigverify.ParsePublicKeys([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestVerifyRefusesTags(t *testing.T) {
	_, err := sigverify.Verify(context.Background(), "127.0.0.1:1/x:v2", sigverify.Options{}, keys(t, sigtest.NewSigner(t)))
	if err == nil || errors.Is(err, sigverify.ErrNoSignature) {
		t.Fatalf("err = %v", err)
	}
}

func p384PEM(t *testing.T) string {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}
