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
// Only a payload whose signature verifies is read further, and it must
// name the digest being verified. Everything read from the registry is
// bounded: the manifest, the number of signature layers, each payload and
// each annotation.
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
	// SignatureTag is where it was found: "<repository>:sha256-<hex>.sig".
	SignatureTag string
	// DockerReference is the payload's critical.identity.docker-reference
	// (informational: cosign does not check it either), bounded.
	DockerReference string
}

// SignatureTag returns the tag cosign signs digest under:
// "sha256-<hex>.sig".
func SignatureTag(digest string) string {
	return strings.Replace(digest, ":", "-", 1) + ".sig"
}

// Verify checks that ref ("<repository>@sha256:<hex>") carries a
// signature made with one of keys, and that the signed payload names
// ref's digest. It returns the first signature that does.
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
	tag := SignatureTag(r.Digest)
	where := sigRepo + ":" + tag
	subject := fmt.Sprintf("%s@%s", r.Repository, r.Digest)

	f, err := newFetcher(ctx, repo, opts)
	if err != nil {
		return Result{}, fmt.Errorf("verify signature of %s: %s: %w", subject, where, err)
	}
	m, found, err := f.manifest(tag)
	if err != nil {
		return Result{}, fmt.Errorf("verify signature of %s: %s: %w", subject, where, err)
	}
	if !found {
		return Result{}, fmt.Errorf("%w for %s: no manifest %s", ErrNoSignature, subject, where)
	}
	if len(m.Layers) == 0 {
		return Result{}, fmt.Errorf("%w for %s: manifest %s has no signature layers", ErrNoSignature, subject, where)
	}
	if len(m.Layers) > MaxSignatures {
		return Result{}, fmt.Errorf("verify signature of %s: manifest %s has %d layers, at most %d are read", subject, where, len(m.Layers), MaxSignatures)
	}

	var reasons []string
	var otherDigests []string // validated digests (parsePayload)
	for i, l := range m.Layers {
		res, payloadDigest, err := verifyLayer(f, l, keys, r.Digest)
		if err != nil {
			reasons = append(reasons, fmt.Sprintf("signature %d: %v", i+1, err))
			continue
		}
		if payloadDigest != r.Digest {
			otherDigests = append(otherDigests, fmt.Sprintf("signature %d (key %d, %s) is for %s", i+1, res.SignedBy, keyName(keys[res.SignedBy]), payloadDigest))
			continue
		}
		res.SignatureTag = where
		return res, nil
	}
	if len(otherDigests) > 0 {
		return Result{}, fmt.Errorf("%w: %s: in %s, %s", ErrWrongDigest, subject, where, joinBounded(append(otherDigests, reasons...)))
	}
	return Result{}, fmt.Errorf("%w for %s: %d signature(s) in %s: %s", ErrBadSignature, subject, len(m.Layers), where, joinBounded(reasons))
}

// verifyLayer reads one signature layer and checks it against keys. It
// returns the key that verified it and the digest the verified payload
// names.
func verifyLayer(f *fetcher, l v1.Descriptor, keys Keys, want string) (Result, string, error) {
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
	var failures []string
	signedBy := -1
	for i, k := range keys {
		if err := verifySignature(k, payload, sig); err != nil {
			failures = append(failures, fmt.Sprintf("key %d (%s): %v", i, keyName(k), err))
			continue
		}
		signedBy = i
		break
	}
	if signedBy < 0 {
		return Result{}, "", errors.New(joinBounded(failures))
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
	ctx    context.Context
	repo   name.Repository
	client *http.Client
}

func newFetcher(ctx context.Context, repo name.Repository, opts Options) (*fetcher, error) {
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
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, tr, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, err
	}
	return &fetcher{ctx: ctx, repo: repo, client: &http.Client{Transport: rt}}, nil
}

func (f *fetcher) url(kind, ref string) string {
	return fmt.Sprintf("%s://%s/v2/%s/%s/%s", f.repo.Registry.Scheme(), f.repo.RegistryStr(), f.repo.RepositoryStr(), kind, ref)
}

var manifestTypes = []string{string(types.OCIManifestSchema1), string(types.DockerManifestSchema2)}

// manifest reads the image manifest tagged tag; found is false when the
// registry has no such manifest (or no such repository).
func (f *fetcher) manifest(tag string) (m *v1.Manifest, found bool, err error) {
	req, err := http.NewRequestWithContext(f.ctx, http.MethodGet, f.url("manifests", tag), nil)
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
