// Package sigverify verifies cosign-compatible, key-based signatures of an
// image digest, with no network but the registry: no transparency log, no
// keyless (Fulcio) certificates.
//
// A signature is found by digest with cosign's tag scheme: the image
// <repository>@sha256:<hex> is signed by the manifest tagged
// sha256-<hex>.sig, in the same repository or in a separate signature
// repository (cosign's COSIGN_REPOSITORY). Each layer of that manifest is
// one signature: the layer blob is the simple-signing JSON payload, and
// the layer's annotation dev.cosignproject.cosign/signature is the
// base64 signature over the payload bytes.
//
// When that tag has no signature that verifies, the digest's OCI 1.1
// referrers are looked at for sigstore bundles, what cosign v3 attaches
// (bundle.go).
//
// Only a payload whose signature verifies is read further, and it must
// name the digest being verified. Everything read from the registry is
// bounded: the manifest, the number of signature layers, each payload and
// each annotation; the referrers, each bundle and its signatures.
package sigverify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/molecule-ai/tenant-agent/pkg/imageref"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

const (
	// SignatureAnnotation is the layer annotation carrying the base64
	// signature.
	SignatureAnnotation = "dev.cosignproject.cosign/signature"
	// PayloadMediaType is the media type of a simple-signing payload layer.
	PayloadMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	// PayloadType is the simple-signing payload's critical.type.
	PayloadType = "cosign container image signature"

	// MaxManifest bounds the signature manifest read from the registry.
	MaxManifest = 256 << 10
	// MaxSignatures bounds the signature layers of one manifest.
	MaxSignatures = 64
	// MaxPayload bounds one simple-signing payload.
	MaxPayload = 64 << 10
	// MaxAnnotation bounds one base64 signature annotation (an RSA-4096
	// signature is 684 base64 characters).
	MaxAnnotation = 4 << 10
	// maxReasons bounds the per-signature reasons an error lists.
	maxReasons = 8
)

// Errors Verify returns, wrapped with the repository, digest and what was
// found; test them with errors.Is. Any other error (the registry
// unreachable, credentials refused, a malformed manifest) means the
// signatures could not be read, not that there are none.
var (
	// ErrNoSignature: no signature manifest for the digest, or one with no
	// signature layers.
	ErrNoSignature = errors.New("no signature")
	// ErrBadSignature: signatures were found, none verifies with any of the
	// keys.
	ErrBadSignature = errors.New("no signature verifies")
	// ErrWrongDigest: a signature verifies, but its payload is for another
	// digest (a signature copied from another image), and none is for this
	// one.
	ErrWrongDigest = errors.New("signature is for another digest")
)

// Options say where signatures are and how to reach them.
type Options struct {
	// SignatureRepository, if set, is the repository holding the
	// sha256-<hex>.sig manifests (cosign's COSIGN_REPOSITORY); by default
	// the image's own repository.
	SignatureRepository string
	// Keychain resolves the registry's credentials (for the signature
	// repository); nil is anonymous. The ambient Docker config is never
	// read unless the caller passes a keychain that does.
	Keychain authn.Keychain
	// Transport carries the requests; nil is remote.DefaultTransport.
	Transport http.RoundTripper
}

// Result is a verified signature.
type Result struct {
	// SignedBy is the index in Keys of the key that verified it.
	SignedBy int
	// SignatureTag is where a simple-signing signature was found:
	// "<repository>:sha256-<hex>.sig"; empty for a sigstore bundle.
	SignatureTag string
	// SignatureRef is where the signature was found, whatever its format:
	// the tag above, or "<repository>@sha256:<hex>" of the referrer
	// manifest holding the sigstore bundle.
	SignatureRef string
	// Format is the signature's format: FormatSimpleSigning or
	// FormatSigstoreBundle.
	Format string
	// DockerReference is the payload's critical.identity.docker-reference
	// (informational: cosign does not check it either), bounded.
	DockerReference string
}

// Result.Format values.
const (
	// FormatSimpleSigning is cosign's classic signature, at the
	// sha256-<hex>.sig tag.
	FormatSimpleSigning = "simple-signing"
	// FormatSigstoreBundle is a sigstore bundle attached as an OCI
	// referrer (cosign v3, `cosign sign --new-bundle-format`).
	FormatSigstoreBundle = "sigstore-bundle"
)

// SignatureTag returns the tag cosign signs digest under:
// "sha256-<hex>.sig".
func SignatureTag(digest string) string {
	return strings.Replace(digest, ":", "-", 1) + ".sig"
}

// Verify checks that ref ("<repository>@sha256:<hex>") carries a
// signature made with one of keys, and that the signed payload names
// ref's digest. It looks at cosign's sha256-<hex>.sig tag first, then at
// the digest's OCI referrers carrying a sigstore bundle (bundle.go), and
// returns the first signature that verifies. When none does, the error
// lists why, for each signature looked at (bounded).
func Verify(ctx context.Context, ref string, opts Options, keys Keys) (Result, error) {
	r, err := imageref.Parse(ref)
	if err != nil {
		return Result{}, fmt.Errorf("verify signature: %w", err)
	}
	if len(keys) == 0 {
		return Result{}, errors.New("verify signature: no public keys")
	}
	sigRepo := r.Repository
	if opts.SignatureRepository != "" {
		if err := imageref.ValidateRepository(opts.SignatureRepository); err != nil {
			return Result{}, fmt.Errorf("verify signature: signature repository: %w", err)
		}
		sigRepo = opts.SignatureRepository
	}
	repo, err := name.NewRepository(sigRepo)
	if err != nil {
		return Result{}, fmt.Errorf("verify signature: signature repository %s: %w", limits.Quoted(sigRepo), err)
	}
	subject := fmt.Sprintf("%s@%s", r.Repository, r.Digest)
	f, err := newFetcher(ctx, sigRepo, repo, opts)
	if err != nil {
		return Result{}, fmt.Errorf("verify signature of %s: %s: %w", subject, sigRepo, err)
	}
	var fs findings
	for _, find := range []func(*fetcher, string, Keys, *findings) (Result, bool, error){verifyTag, verifyReferrers} {
		res, ok, err := find(f, r.Digest, keys, &fs)
		if err != nil {
			return Result{}, fmt.Errorf("verify signature of %s: %w", subject, err)
		}
		if ok {
			return res, nil
		}
	}
	return Result{}, fs.err(subject)
}

// findings is what Verify learnt from the signatures that did not verify.
type findings struct {
	// found counts signatures looked at, per place ("2 signature(s) in
	// repo:sha256-….sig").
	found []string
	// absent says where nothing was found ("no manifest repo:sha256-….sig").
	absent []string
	// otherDigests are signatures that verify but name another digest.
	otherDigests []string
	// reasons say why each other signature does not verify.
	reasons []string
	// ignored are signatures that cannot be verified with a key at all (a
	// keyless bundle): they neither count as found nor as bad.
	ignored []string
}

func (fs *findings) err(subject string) error {
	switch {
	case len(fs.otherDigests) > 0:
		return fmt.Errorf("%w: %s: %s", ErrWrongDigest, subject, joinBounded(slices.Concat(fs.otherDigests, fs.reasons, fs.ignored)))
	case len(fs.found) > 0:
		return fmt.Errorf("%w for %s: found %s: %s", ErrBadSignature, subject, strings.Join(fs.found, " and "), joinBounded(slices.Concat(fs.reasons, fs.ignored)))
	default:
		return fmt.Errorf("%w for %s: %s", ErrNoSignature, subject, joinBounded(slices.Concat(fs.absent, fs.ignored)))
	}
}

// verifyTag looks for the signature at cosign's sha256-<hex>.sig tag.
func verifyTag(f *fetcher, digest string, keys Keys, fs *findings) (Result, bool, error) {
	tag := SignatureTag(digest)
	where := f.name + ":" + tag
	m, found, err := f.manifest(tag)
	if err != nil {
		return Result{}, false, fmt.Errorf("%s: %w", where, err)
	}
	if !found {
		fs.absent = append(fs.absent, "no manifest "+where)
		return Result{}, false, nil
	}
	if len(m.Layers) == 0 {
		fs.absent = append(fs.absent, "manifest "+where+" has no signature layers")
		return Result{}, false, nil
	}
	fs.found = append(fs.found, fmt.Sprintf("%d signature(s) in %s", len(m.Layers), where))
	if len(m.Layers) > MaxSignatures {
		// None read, and the referrers are still looked at. If nothing
		// verifies, this is a bad signature rather than a registry problem:
		// asking again will not help.
		fs.reasons = append(fs.reasons, fmt.Sprintf("manifest %s has %d layers, at most %d are read", where, len(m.Layers), MaxSignatures))
		return Result{}, false, nil
	}
	for i, l := range m.Layers {
		res, payloadDigest, err := verifyLayer(f, l, keys)
		if err != nil {
			fs.reasons = append(fs.reasons, fmt.Sprintf("signature %d: %v", i+1, err))
			continue
		}
		if payloadDigest != digest {
			fs.otherDigests = append(fs.otherDigests, fmt.Sprintf("signature %d (key %d, %s) in %s is for %s", i+1, res.SignedBy, keyName(keys[res.SignedBy]), where, payloadDigest))
			continue
		}
		res.SignatureTag, res.SignatureRef, res.Format = where, where, FormatSimpleSigning
		return res, true, nil
	}
	return Result{}, false, nil
}

// verifyLayer reads one signature layer and checks it against keys. It
// returns the key that verified it and the digest the verified payload
// names.
func verifyLayer(f *fetcher, l v1.Descriptor, keys Keys) (Result, string, error) {
	if string(l.MediaType) != PayloadMediaType {
		return Result{}, "", fmt.Errorf("layer media type %s, want %q", limits.Quoted(string(l.MediaType)), PayloadMediaType)
	}
	b64, ok := l.Annotations[SignatureAnnotation]
	if !ok {
		return Result{}, "", fmt.Errorf("no %s annotation", SignatureAnnotation)
	}
	if len(b64) > MaxAnnotation {
		return Result{}, "", fmt.Errorf("%s annotation is %d bytes, at most %d", SignatureAnnotation, len(b64), MaxAnnotation)
	}
	sig, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return Result{}, "", fmt.Errorf("%s annotation %s is not base64", SignatureAnnotation, limits.Quoted(b64))
	}
	if l.Size < 0 || l.Size > MaxPayload {
		return Result{}, "", fmt.Errorf("payload is %d bytes, at most %d", l.Size, MaxPayload)
	}
	payload, err := f.blob(l.Digest, l.Size)
	if err != nil {
		return Result{}, "", fmt.Errorf("payload %s: %w", l.Digest, err)
	}
	signedBy, err := keys.verify(payload, sig)
	if err != nil {
		return Result{}, "", err
	}
	// Only now, with the payload's signature verified, is its content
	// trusted enough to read.
	p, err := parsePayload(payload)
	if err != nil {
		return Result{}, "", fmt.Errorf("signed payload (key %d): %w", signedBy, err)
	}
	return Result{SignedBy: signedBy, DockerReference: limits.Truncate(p.Critical.Identity.DockerReference, limits.ImageRef)}, p.Critical.Image.DockerManifestDigest, nil
}

// payload is cosign's simple-signing payload; "optional" is ignored.
type payload struct {
	Critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
}

func parsePayload(b []byte) (payload, error) {
	var p payload
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("not simple-signing JSON: %v", err)
	}
	if p.Critical.Type != PayloadType {
		return p, fmt.Errorf("critical.type is %s, want %q", limits.Quoted(p.Critical.Type), PayloadType)
	}
	if err := imageref.ValidateDigest(p.Critical.Image.DockerManifestDigest); err != nil {
		return p, fmt.Errorf("critical.image.docker-manifest-digest: %w", err)
	}
	return p, nil
}

// joinBounded joins at most maxReasons reasons, each bounded, and says how
// many were left out.
func joinBounded(reasons []string) string {
	var b strings.Builder
	for i, r := range reasons {
		if i == maxReasons {
			fmt.Fprintf(&b, "; and %d more", len(reasons)-maxReasons)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(limits.Truncate(r, 512))
	}
	return b.String()
}

func truncate(s string, n int) string { return limits.Truncate(s, n) }

// fetcher reads the signature repository's manifests and blobs with
// bounded reads, over go-containerregistry's authenticating transport.
type fetcher struct {
	ctx context.Context
	// name is the repository as the caller spelled it, for messages.
	name   string
	repo   name.Repository
	rt     http.RoundTripper
	client *http.Client
}

func newFetcher(ctx context.Context, repoName string, repo name.Repository, opts Options) (*fetcher, error) {
	auth := authn.Anonymous
	if opts.Keychain != nil {
		a, err := opts.Keychain.Resolve(repo)
		if err != nil {
			return nil, fmt.Errorf("registry credentials: %w", err)
		}
		auth = a
	}
	tr := opts.Transport
	if tr == nil {
		tr = remote.DefaultTransport
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, cappedTransport{tr}, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, err
	}
	return &fetcher{ctx: ctx, name: repoName, repo: repo, rt: rt, client: &http.Client{Transport: rt}}, nil
}

func (f *fetcher) url(kind, ref string) string {
	return fmt.Sprintf("%s://%s/v2/%s/%s/%s", f.repo.Registry.Scheme(), f.repo.RegistryStr(), f.repo.RepositoryStr(), kind, ref)
}

var manifestTypes = []string{string(types.OCIManifestSchema1), string(types.DockerManifestSchema2)}

// manifest reads the image manifest ref (a tag, or a sha256 digest, which
// the manifest read must match); found is false when the registry has no
// such manifest (or no such repository).
func (f *fetcher) manifest(ref string) (m *v1.Manifest, found bool, err error) {
	req, err := http.NewRequestWithContext(f.ctx, http.MethodGet, f.url("manifests", ref), nil)
	if err != nil {
		return nil, false, err
	}
	req.Header.Set("Accept", strings.Join(manifestTypes, ","))
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, false, nil
	}
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		var terr *transport.Error
		if errors.As(err, &terr) {
			for _, d := range terr.Errors {
				if d.Code == transport.ManifestUnknownErrorCode || d.Code == transport.NameUnknownErrorCode {
					return nil, false, nil
				}
			}
		}
		return nil, false, err
	}
	body, err := readBounded(resp.Body, MaxManifest)
	if err != nil {
		return nil, false, fmt.Errorf("manifest: %w", err)
	}
	if want, ok := strings.CutPrefix(ref, "sha256:"); ok {
		if sum := sha256.Sum256(body); hex.EncodeToString(sum[:]) != want {
			return nil, false, errors.New("manifest does not match its digest")
		}
	}
	mt := resp.Header.Get("Content-Type")
	if mt, _, _ = strings.Cut(mt, ";"); mt != "" && mt != manifestTypes[0] && mt != manifestTypes[1] {
		return nil, false, fmt.Errorf("manifest media type %s, want an image manifest", limits.Quoted(mt))
	}
	m, err = v1.ParseManifest(bytes.NewReader(body))
	if err != nil {
		return nil, false, fmt.Errorf("manifest: %w", err)
	}
	return m, true, nil
}

// blob reads the blob d of the given size and checks its digest.
func (f *fetcher) blob(d v1.Hash, size int64) ([]byte, error) {
	if d.Algorithm != "sha256" {
		return nil, fmt.Errorf("digest algorithm %s, want sha256", limits.Quoted(d.Algorithm))
	}
	req, err := http.NewRequestWithContext(f.ctx, http.MethodGet, f.url("blobs", d.String()), nil)
	if err != nil {
		return nil, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return nil, err
	}
	body, err := readBounded(resp.Body, size)
	if err != nil {
		return nil, err
	}
	if int64(len(body)) != size {
		return nil, fmt.Errorf("blob is %d bytes, the manifest says %d", len(body), size)
	}
	sum := sha256.Sum256(body)
	if hex.EncodeToString(sum[:]) != d.Hex {
		return nil, errors.New("blob does not match its digest")
	}
	return body, nil
}

// readBounded reads all of r, failing if it holds more than n bytes.
func readBounded(r io.Reader, n int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, n+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > n {
		return nil, fmt.Errorf("more than %d bytes", n)
	}
	return b, nil
}
