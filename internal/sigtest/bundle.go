package sigtest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

const (
	// BundleMediaType is the sigstore bundle media type cosign v3 pushes.
	BundleMediaType   = "application/vnd.dev.sigstore.bundle.v0.3+json"
	inTotoPayloadType = "application/vnd.in-toto+json"
	// SignPredicateType is the predicate type of `cosign sign`'s statement.
	SignPredicateType = "https://sigstore.dev/cosign/sign/v1"
	// emptyConfigMediaType is the OCI 1.1 empty descriptor's, the config
	// of an artifact manifest; its content is "{}".
	emptyConfigMediaType = "application/vnd.oci.empty.v1+json"
)

// BundleOptions vary a sigstore bundle; the zero value makes what `cosign
// sign --key --new-bundle-format --tlog-upload=false` (cosign v3) makes.
type BundleOptions struct {
	// SignatureRepository, PayloadDigest (the digest the statement names),
	// Tamper and Auth as for Sign; Append has no meaning here: every
	// bundle is a referrer of its own.
	Options
	// Certificate puts a self-signed certificate of the key as the
	// verification material, as keyless signing does, instead of a
	// public-key hint.
	Certificate bool
	// MediaType is the bundle's media type; default BundleMediaType.
	MediaType string
	// PredicateType is the statement's; default SignPredicateType.
	PredicateType string
	// Pad adds that many spaces to the bundle JSON (for size bounds).
	Pad int
}

// Statement is the in-toto statement `cosign sign --new-bundle-format`
// signs for digest: one subject with only a digest.
func Statement(digest, predicateType string) []byte {
	algo, hex, _ := strings.Cut(digest, ":")
	st := map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []any{map[string]any{"digest": map[string]string{algo: hex}}},
		"predicateType": predicateType,
		"predicate":     map[string]any{},
	}
	return mustJSON(st)
}

// PAE is DSSE's pre-authentication encoding, what a DSSE signature signs.
func PAE(payloadType string, payload []byte) []byte {
	return fmt.Appendf(nil, "DSSEv1 %d %s %d %s", len(payloadType), payloadType, len(payload), payload)
}

// Bundle makes a sigstore bundle signing digest ("sha256:<hex>") with this
// key: a DSSE envelope around Statement, no transparency log entry.
func (s *Signer) Bundle(t registrytest.T, digest string, o BundleOptions) []byte {
	t.Helper()
	if o.PayloadDigest != "" {
		digest = o.PayloadDigest
	}
	predicateType := SignPredicateType
	if o.PredicateType != "" {
		predicateType = o.PredicateType
	}
	payload := Statement(digest, predicateType)
	sig := s.SignPayload(t, PAE(inTotoPayloadType, payload))
	if o.Tamper {
		payload = bytes.Replace(payload, []byte(`"predicate":{}`), []byte(`"predicate":{"tampered":"yes"}`), 1)
	}
	der, err := x509.MarshalPKIXPublicKey(s.Key.Public())
	if err != nil {
		t.Fatal(err)
	}
	hint := sha256.Sum256(der)
	material := map[string]any{"publicKey": map[string]any{"hint": hint[:]}}
	if o.Certificate {
		material = map[string]any{"certificate": map[string]any{"rawBytes": s.certificate(t)}}
	}
	mediaType := BundleMediaType
	if o.MediaType != "" {
		mediaType = o.MediaType
	}
	b := mustJSON(map[string]any{
		"mediaType":            mediaType,
		"verificationMaterial": material,
		"dsseEnvelope": map[string]any{
			"payload":     payload, // []byte: base64, as protobuf JSON has it
			"payloadType": inTotoPayloadType,
			"signatures":  []any{map[string]any{"sig": sig, "keyid": ""}},
		},
	})
	return append(b, bytes.Repeat([]byte(" "), o.Pad)...)
}

// certificate is a self-signed certificate of the key, standing in for a
// Fulcio one.
func (s *Signer) certificate(t registrytest.T) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "sigtest"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, s.Key.Public(), s.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// AttachBundle signs ref ("<repository>@sha256:<hex>") with a bundle and
// pushes it as a referrer of ref (PushBundle); it returns the referrer
// manifest's reference.
func (s *Signer) AttachBundle(t registrytest.T, ref string, o BundleOptions) string {
	t.Helper()
	_, digest := splitRef(t, ref)
	return PushBundle(t, ref, s.Bundle(t, digest, o), o.Options)
}

// PushBundle pushes bundle as an OCI 1.1 referrer of ref the way cosign
// v3 does (WriteAttestationNewBundleFormat): an image manifest of
// artifactType BundleMediaType with the empty config, the bundle as its
// one layer and ref as its subject, in o.SignatureRepository or ref's
// repository. A registry without the referrers API gets the referrers tag
// updated (go-containerregistry does it). It returns
// "<repository>@<manifest digest>".
func PushBundle(t registrytest.T, ref string, bundle []byte, o Options) string {
	t.Helper()
	subjectRef, err := name.NewDigest(ref)
	if err != nil {
		t.Fatal(err)
	}
	repo := subjectRef.Context()
	if o.SignatureRepository != "" {
		if repo, err = name.NewRepository(o.SignatureRepository); err != nil {
			t.Fatal(err)
		}
	}
	auth := o.Auth
	if auth == nil {
		auth = authn.Anonymous
	}
	subject, err := remote.Head(subjectRef, remote.WithAuth(auth))
	if err != nil {
		t.Fatalf("sigtest: %s: %v", ref, err)
	}
	config := static.NewLayer([]byte("{}"), emptyConfigMediaType)
	layer := static.NewLayer(bundle, BundleMediaType)
	for _, l := range []v1.Layer{config, layer} {
		if err := remote.WriteLayer(repo, l, remote.WithAuth(auth)); err != nil {
			t.Fatalf("sigtest: push bundle blob: %v", err)
		}
	}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  BundleMediaType,
		Config:        descriptor(t, config),
		Layers:        []v1.Descriptor{descriptor(t, layer)},
		Subject:       &v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
		Annotations: map[string]string{
			"dev.sigstore.bundle.content":       "dsse-envelope",
			"dev.sigstore.bundle.predicateType": SignPredicateType,
		},
	}
	raw := mustJSON(m)
	d, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	target := repo.Digest(d.String())
	if err := remote.Put(target, rawManifest(raw), remote.WithAuth(auth)); err != nil {
		t.Fatalf("sigtest: push %s: %v", target, err)
	}
	return target.String()
}

func descriptor(t registrytest.T, l v1.Layer) v1.Descriptor {
	t.Helper()
	d, err := partial.Descriptor(l)
	if err != nil {
		t.Fatal(err)
	}
	return *d
}

// rawManifest is a manifest to push as it is.
type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
