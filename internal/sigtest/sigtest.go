// Package sigtest signs images in a test registry the way `cosign sign
// --key` does: a simple-signing payload naming the digest, signed with a
// private key, pushed as the single layer of an image tagged
// sha256-<hex>.sig, with the base64 signature in the layer's
// dev.cosignproject.cosign/signature annotation. Or, the way cosign v3
// (`--new-bundle-format`) does, a sigstore bundle attached as an OCI 1.1
// referrer (bundle.go). It also makes the bad signatures verification must
// refuse: another key, another digest, a tampered payload.
package sigtest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

const (
	signatureAnnotation = "dev.cosignproject.cosign/signature"
	payloadMediaType    = "application/vnd.dev.cosign.simplesigning.v1+json"
)

// Signer signs with one private key.
type Signer struct {
	// Key is the private key: *ecdsa.PrivateKey, ed25519.PrivateKey or
	// *rsa.PrivateKey.
	Key crypto.Signer
	// PSS makes an RSA key sign with PSS instead of PKCS#1 v1.5.
	PSS bool
	// PublicKeyPEM is the public key as cosign.pub holds it (PKIX "PUBLIC
	// KEY").
	PublicKeyPEM []byte
}

// NewSigner generates an ECDSA P-256 key, what `cosign generate-key-pair`
// makes.
func NewSigner(t registrytest.T) *Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return SignerFor(t, k)
}

// NewEd25519Signer generates an Ed25519 key.
func NewEd25519Signer(t registrytest.T) *Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return SignerFor(t, k)
}

// NewRSASigner generates a 2048-bit RSA key, signing with PKCS#1 v1.5 or,
// if pss, PSS.
func NewRSASigner(t registrytest.T, pss bool) *Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s := SignerFor(t, k)
	s.PSS = pss
	return s
}

// KeyTypes are the keys cosign signs with, for table tests.
var KeyTypes = []struct {
	Name string
	New  func(registrytest.T) *Signer
}{
	{"ecdsa-p256", NewSigner},
	{"ed25519", NewEd25519Signer},
	{"rsa-pkcs1v15", func(t registrytest.T) *Signer { return NewRSASigner(t, false) }},
	{"rsa-pss", func(t registrytest.T) *Signer { return NewRSASigner(t, true) }},
}

// SignerFor signs with a given key.
func SignerFor(t registrytest.T, key crypto.Signer) *Signer {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return &Signer{Key: key, PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})}
}

// Options vary a signature; the zero value signs like cosign.
type Options struct {
	// SignatureRepository is the full repository (host/path) the signature
	// is pushed to (cosign's COSIGN_REPOSITORY); default the image's.
	SignatureRepository string
	// PayloadDigest is the digest the payload names; default the digest
	// signed (set it to sign "for another digest").
	PayloadDigest string
	// Tamper changes the payload after it is signed, keeping the digest it
	// names.
	Tamper bool
	// Append adds the signature as another layer of an existing signature
	// image, as cosign does when an image is signed again.
	Append bool
	// Auth pushes with these credentials; default anonymous.
	Auth authn.Authenticator
}

// Payload is the simple-signing payload cosign signs for digest of
// repository.
func Payload(repository, digest string) []byte {
	p := map[string]any{
		"critical": map[string]any{
			"identity": map[string]any{"docker-reference": repository},
			"image":    map[string]any{"docker-manifest-digest": digest},
			"type":     "cosign container image signature",
		},
		"optional": nil,
	}
	return mustJSON(p)
}

// SignPayload signs payload as cosign does with this key.
func (s *Signer) SignPayload(t registrytest.T, payload []byte) []byte {
	t.Helper()
	var sig []byte
	var err error
	switch k := s.Key.(type) {
	case ed25519.PrivateKey:
		sig, err = k.Sign(rand.Reader, payload, crypto.Hash(0))
	case *rsa.PrivateKey:
		h := sha256.Sum256(payload)
		if s.PSS {
			sig, err = rsa.SignPSS(rand.Reader, k, crypto.SHA256, h[:], nil)
		} else {
			sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, h[:])
		}
	default:
		h := sha256.Sum256(payload)
		sig, err = s.Key.Sign(rand.Reader, h[:], crypto.SHA256)
	}
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// Sign signs ref ("<repository>@sha256:<hex>") and pushes the signature
// image; it returns the signature's tag reference.
func (s *Signer) Sign(t registrytest.T, ref string, o Options) string {
	t.Helper()
	repository, digest := splitRef(t, ref)
	payloadDigest := digest
	if o.PayloadDigest != "" {
		payloadDigest = o.PayloadDigest
	}
	payload := Payload(repository, payloadDigest)
	sig := s.SignPayload(t, payload)
	if o.Tamper {
		payload = bytes.Replace(payload, []byte(`"optional":null`), []byte(`"optional":{"tampered":"yes"}`), 1)
	}
	sigRepo := repository
	if o.SignatureRepository != "" {
		sigRepo = o.SignatureRepository
	}
	return PushSignature(t, sigRepo, digest, payload, base64.StdEncoding.EncodeToString(sig), o)
}

// PushSignature pushes payload, with sigB64 as its signature annotation,
// as a signature layer of sigRepo's sha256-<hex>.sig for digest (the only
// layer unless o.Append), and returns the tag reference. Sign uses it; a
// test can use it directly for a malformed signature.
func PushSignature(t registrytest.T, sigRepo, digest string, payload []byte, sigB64 string, o Options) string {
	t.Helper()
	tag, err := name.NewTag(sigRepo + ":" + strings.Replace(digest, ":", "-", 1) + ".sig")
	if err != nil {
		t.Fatal(err)
	}
	auth := o.Auth
	if auth == nil {
		auth = authn.Anonymous
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	if o.Append {
		existing, err := remote.Image(tag, remote.WithAuth(auth))
		if err != nil {
			t.Fatalf("sigtest: read %s to append: %v", tag, err)
		}
		base = existing
	}
	layer := static.NewLayer(payload, types.MediaType(payloadMediaType))
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, Annotations: map[string]string{signatureAnnotation: sigB64}})
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, remote.WithAuth(auth)); err != nil {
		t.Fatalf("sigtest: push %s: %v", tag, err)
	}
	return tag.String()
}

// PushImage pushes a small random image to reg and returns its pinned
// reference, "<repository>@sha256:<hex>", to sign.
func PushImage(t registrytest.T, reg *registrytest.Registry) string {
	t.Helper()
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	repo, digest := reg.Push(t, "molecule-ai/workspace-template-codex", img)
	return repo + "@" + digest
}

// splitRef splits "<repository>@<digest>".
func splitRef(t registrytest.T, ref string) (repository, digest string) {
	t.Helper()
	repository, digest, ok := strings.Cut(ref, "@")
	if !ok {
		t.Fatalf("sigtest: %q is not <repository>@<digest>", ref)
	}
	return repository, digest
}

// Digest is the digest of img, for tests.
func Digest(t registrytest.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}
