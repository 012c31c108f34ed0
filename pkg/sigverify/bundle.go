package sigverify

// Sigstore bundles attached as OCI 1.1 referrers, what cosign v3 (and
// `cosign sign --new-bundle-format`) pushes: a manifest whose subject is
// the signed image, whose artifactType is the bundle media type, and whose
// one layer is the bundle JSON. The bundle's DSSE envelope signs an in-toto
// statement naming the image's digest.
//
// The bundle is parsed here with encoding/json rather than with
// sigstore-go: only the key-based subset is verified (no transparency log,
// no certificates), and sigstore-go would add about 7 MB and 54 modules to
// the agent for it.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

const (
	// BundleMediaType is the sigstore bundle's media type, the referrer's
	// artifactType and its layer's media type.
	BundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"
	// bundleMediaTypeV02 is the older spelling, accepted too.
	bundleMediaTypeV02 = "application/vnd.dev.sigstore.bundle+json;version=0.2"
	// InTotoPayloadType is the DSSE payload type of an in-toto statement.
	InTotoPayloadType = "application/vnd.in-toto+json"
	// SignPredicateType is the predicate type of the statement `cosign
	// sign` makes. An attestation by the same key (provenance, SBOM) names
	// the image too, but says something else than "run this": it is not
	// taken as a signature.
	SignPredicateType = "https://sigstore.dev/cosign/sign/v1"

	// MaxReferrers bounds the sigstore bundle referrers read.
	MaxReferrers = 16
	// MaxBundle bounds one bundle (a key-based one is about 1 KiB; one with
	// a certificate chain and log entries a few KiB).
	MaxBundle = 128 << 10
	// MaxEnvelopeSignatures bounds the signatures of one DSSE envelope
	// (sigstore makes one).
	MaxEnvelopeSignatures = 8
	// maxResponse bounds any registry response body: remote.Referrers
	// would read a referrers index of up to 100 MiB. Every other read has
	// its own, smaller bound.
	maxResponse = 1 << 20
)

var inTotoStatementTypes = []string{"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"}

func isBundleType(mt string) bool { return mt == BundleMediaType || mt == bundleMediaTypeV02 }

// errKeyless marks a bundle that no key can verify: it is ignored, not bad.
var errKeyless = errors.New("its verification material is a certificate (keyless signing), not a public key; only key-based bundles are verified")

// verifyReferrers looks for a sigstore bundle among the referrers of
// digest in the signature repository: the Referrers API, or the referrers
// tag (sha256-<hex>) on a registry without it.
func verifyReferrers(f *fetcher, digest string, keys Keys, fs *findings) (Result, bool, error) {
	where := "referrers of " + f.name + "@" + digest
	idx, err := remote.Referrers(f.repo.Digest(digest), remote.WithContext(f.ctx), remote.WithTransport(f.rt))
	if err != nil {
		return Result{}, false, fmt.Errorf("%s: %w", where, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return Result{}, false, fmt.Errorf("%s: %w", where, err)
	}
	var bundles []v1.Descriptor
	for _, d := range im.Manifests {
		if isBundleType(d.ArtifactType) {
			bundles = append(bundles, d)
		}
	}
	if len(bundles) == 0 {
		fs.absent = append(fs.absent, "no sigstore bundle among the "+where)
		return Result{}, false, nil
	}
	if len(bundles) > MaxReferrers {
		fs.reasons = append(fs.reasons, fmt.Sprintf("%d sigstore bundles among the %s, only the first %d are read", len(bundles), where, MaxReferrers))
		bundles = bundles[:MaxReferrers]
	}
	verifiable := 0
	for _, d := range bundles {
		ref := f.name + "@" + d.Digest.String()
		res, subjects, err := verifyBundleReferrer(f, d, keys)
		switch {
		case errors.Is(err, errKeyless):
			fs.ignored = append(fs.ignored, fmt.Sprintf("bundle %s ignored: %v", ref, err))
			continue
		case err != nil:
			fs.reasons = append(fs.reasons, fmt.Sprintf("bundle %s: %v", ref, err))
		case !slices.Contains(subjects, digest):
			fs.otherDigests = append(fs.otherDigests, fmt.Sprintf("bundle %s (key %d, %s) is for %s", ref, res.SignedBy, keyName(keys[res.SignedBy]), strings.Join(subjects, ", ")))
		default:
			res.SignatureRef, res.Format = ref, FormatSigstoreBundle
			return res, true, nil
		}
		verifiable++
	}
	if verifiable > 0 {
		fs.found = append(fs.found, fmt.Sprintf("%d sigstore bundle(s) among the %s", verifiable, where))
	}
	return Result{}, false, nil
}

// verifyBundleReferrer reads the referrer manifest d and its bundle layer,
// and verifies the bundle (verifyBundle).
func verifyBundleReferrer(f *fetcher, d v1.Descriptor, keys Keys) (Result, []string, error) {
	if d.Size > MaxManifest {
		return Result{}, nil, fmt.Errorf("manifest is %d bytes, at most %d", d.Size, MaxManifest)
	}
	m, found, err := f.manifest(d.Digest.String())
	if err != nil {
		return Result{}, nil, err
	}
	if !found {
		return Result{}, nil, errors.New("listed among the referrers, but no such manifest")
	}
	i := slices.IndexFunc(m.Layers, func(l v1.Descriptor) bool { return isBundleType(string(l.MediaType)) })
	if i < 0 {
		return Result{}, nil, fmt.Errorf("no layer of media type %q", BundleMediaType)
	}
	l := m.Layers[i]
	if l.Size < 0 || l.Size > MaxBundle {
		return Result{}, nil, fmt.Errorf("bundle is %d bytes, at most %d", l.Size, MaxBundle)
	}
	b, err := f.blob(l.Digest, l.Size)
	if err != nil {
		return Result{}, nil, fmt.Errorf("bundle %s: %w", l.Digest, err)
	}
	return verifyBundle(b, keys)
}

// bundle is the part of a sigstore bundle (protobuf JSON) read here.
type bundle struct {
	MediaType            string `json:"mediaType"`
	VerificationMaterial struct {
		PublicKey            *struct{} `json:"publicKey"`
		Certificate          *struct{} `json:"certificate"`
		X509CertificateChain *struct{} `json:"x509CertificateChain"`
	} `json:"verificationMaterial"`
	DSSEEnvelope *struct {
		// Payload and Sig are base64 in JSON: encoding/json decodes []byte
		// from standard base64, which protobuf JSON writes.
		Payload     []byte `json:"payload"`
		PayloadType string `json:"payloadType"`
		Signatures  []struct {
			Sig []byte `json:"sig"`
		} `json:"signatures"`
	} `json:"dsseEnvelope"`
}

// statement is the part of an in-toto statement read here.
type statement struct {
	Type    string `json:"_type"`
	Subject []struct {
		Name   string            `json:"name"`
		Digest map[string]string `json:"digest"`
	} `json:"subject"`
	PredicateType string `json:"predicateType"`
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// verifyBundle checks a sigstore bundle's DSSE signature with keys and
// returns the key that verified it and the sha256 digests
// ("sha256:<hex>") its statement's subjects name. Only a verified payload
// is parsed.
func verifyBundle(b []byte, keys Keys) (Result, []string, error) {
	var bu bundle
	if err := json.Unmarshal(b, &bu); err != nil {
		return Result{}, nil, fmt.Errorf("not sigstore bundle JSON: %v", err)
	}
	if !isBundleType(bu.MediaType) {
		return Result{}, nil, fmt.Errorf("bundle media type %s, want %q", limits.Quoted(bu.MediaType), BundleMediaType)
	}
	vm := bu.VerificationMaterial
	if vm.PublicKey == nil {
		if vm.Certificate != nil || vm.X509CertificateChain != nil {
			return Result{}, nil, errKeyless
		}
		return Result{}, nil, errors.New("no verification material")
	}
	env := bu.DSSEEnvelope
	if env == nil {
		return Result{}, nil, errors.New("no DSSE envelope (a message signature is not an image signature)")
	}
	if env.PayloadType != InTotoPayloadType {
		return Result{}, nil, fmt.Errorf("DSSE payload type %s, want %q", limits.Quoted(env.PayloadType), InTotoPayloadType)
	}
	if n := len(env.Signatures); n == 0 || n > MaxEnvelopeSignatures {
		return Result{}, nil, fmt.Errorf("DSSE envelope has %d signatures, want 1 to %d", n, MaxEnvelopeSignatures)
	}
	message := pae(env.PayloadType, env.Payload)
	var failures []string
	signedBy := -1
	for i, s := range env.Signatures {
		k, err := keys.verify(message, s.Sig)
		if err == nil {
			signedBy = k
			break
		}
		failures = append(failures, fmt.Sprintf("DSSE signature %d: %v", i+1, err))
	}
	if signedBy < 0 {
		return Result{}, nil, errors.New(strings.Join(failures, "; "))
	}
	var st statement
	if err := json.Unmarshal(env.Payload, &st); err != nil {
		return Result{}, nil, fmt.Errorf("signed payload (key %d) is not an in-toto statement: %v", signedBy, err)
	}
	if !slices.Contains(inTotoStatementTypes, st.Type) {
		return Result{}, nil, fmt.Errorf("signed statement's _type is %s, want %q", limits.Quoted(st.Type), inTotoStatementTypes[0])
	}
	if st.PredicateType != SignPredicateType {
		return Result{}, nil, fmt.Errorf("signed statement's predicate type is %s, want %q (cosign sign)", limits.Quoted(st.PredicateType), SignPredicateType)
	}
	res := Result{SignedBy: signedBy}
	var digests []string
	for _, s := range st.Subject {
		if h := s.Digest["sha256"]; sha256Hex.MatchString(h) {
			digests = append(digests, "sha256:"+h)
			if res.DockerReference == "" {
				res.DockerReference = limits.Truncate(s.Name, limits.ImageRef)
			}
		}
	}
	if len(digests) == 0 {
		return Result{}, nil, fmt.Errorf("signed statement (key %d) names no sha256 digest", signedBy)
	}
	return res, digests, nil
}

// pae is DSSE's pre-authentication encoding, what a DSSE signature signs:
// "DSSEv1 <len(type)> <type> <len(payload)> <payload>".
func pae(payloadType string, payload []byte) []byte {
	return fmt.Appendf(nil, "DSSEv1 %d %s %d %s", len(payloadType), payloadType, len(payload), payload)
}

// cappedTransport fails a response body past maxResponse bytes.
type cappedTransport struct{ inner http.RoundTripper }

func (c cappedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.inner.RoundTrip(req)
	if err == nil {
		resp.Body = &cappedBody{ReadCloser: resp.Body, left: maxResponse}
	}
	return resp, err
}

type cappedBody struct {
	io.ReadCloser
	left int64
}

func (c *cappedBody) Read(p []byte) (int, error) {
	// One byte past the bound, to tell "exactly the bound" from "more".
	if int64(len(p)) > c.left+1 {
		p = p[:c.left+1]
	}
	n, err := c.ReadCloser.Read(p)
	c.left -= int64(n)
	if c.left < 0 {
		return n, fmt.Errorf("registry response of more than %d bytes", maxResponse)
	}
	return n, err
}
