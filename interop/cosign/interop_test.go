package cosign_test

import (
	"context"
	"crypto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/sigstore/cosign/v3/cmd/cosign/cli/options"
	"github.com/sigstore/cosign/v3/cmd/cosign/cli/sign"
	"github.com/sigstore/cosign/v3/pkg/cosign"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/sigtest"
	"github.com/molecule-ai/tenant-agent/pkg/sigverify"
)

// registries: without the OCI 1.1 referrers API (bundles are found by
// the referrers tag) and with it.
var registries = []struct {
	name  string
	start func(registrytest.T) *registrytest.Registry
}{
	{"referrers-tag", registrytest.StartRegistry},
	{"referrers-api", registrytest.StartReferrersRegistry},
}

// setup serves a loopback registry holding one small image, and returns
// its pinned reference.
func setup(t *testing.T, start func(registrytest.T) *registrytest.Registry) string {
	t.Helper()
	reg := start(t)
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	repo, digest := reg.Push(t, "molecule-ai/workspace-template-codex", img)
	return repo + "@" + digest
}

// cosignKey is a key pair made by `cosign generate-key-pair`'s code:
// cosign.key (encrypted) written to a file, and cosign.pub.
type cosignKey struct {
	path   string
	pub    []byte
	passFn cosign.PassFunc
}

func newCosignKey(t *testing.T) cosignKey {
	t.Helper()
	pass := func(bool) ([]byte, error) { return []byte("interop"), nil }
	kb, err := cosign.GenerateKeyPair(pass)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cosign.key")
	if err := os.WriteFile(path, kb.PrivateBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return cosignKey{path: path, pub: kb.PublicBytes, passFn: pass}
}

// cosignSign runs `cosign sign --key cosign.key --tlog-upload=false
// [--new-bundle-format] <ref>` through cosign's own command code: no
// transparency log, no Fulcio, nothing but the registry.
func cosignSign(t *testing.T, k cosignKey, ref string, newBundleFormat bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ko := options.KeyOpts{KeyRef: k.path, PassFunc: k.passFn, SkipConfirmation: true, NewBundleFormat: newBundleFormat}
	so := options.SignOptions{
		Key:              k.path,
		Upload:           true,
		TlogUpload:       false,
		SkipConfirmation: true,
		NewBundleFormat:  newBundleFormat,
	}
	if err := sign.SignCmd(ctx, &options.RootOptions{Timeout: time.Minute}, ko, so, []string{ref}); err != nil {
		t.Fatalf("cosign sign: %v", err)
	}
}

func parseKeys(t *testing.T, pems ...[]byte) sigverify.Keys {
	t.Helper()
	var all []byte
	for _, p := range pems {
		all = append(all, p...)
	}
	keys, err := sigverify.ParsePublicKeys(all)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// a. What cosign signs, sigverify verifies.

func TestCosignSignatureVerifies(t *testing.T) {
	ref := setup(t, registrytest.StartRegistry)
	k := newCosignKey(t)
	cosignSign(t, k, ref, false)
	res, err := sigverify.Verify(context.Background(), ref, sigverify.Options{}, parseKeys(t, k.pub))
	if err != nil {
		t.Fatal(err)
	}
	repo, digest, _ := strings.Cut(ref, "@")
	if res.Format != sigverify.FormatSimpleSigning || res.SignatureTag != repo+":"+sigverify.SignatureTag(digest) || res.DockerReference != repo {
		t.Fatalf("result %+v", res)
	}
	// Another key does not verify it.
	other := parseKeys(t, sigtest.NewSigner(t).PublicKeyPEM)
	if _, err := sigverify.Verify(context.Background(), ref, sigverify.Options{}, other); err == nil {
		t.Fatal("verified with another key")
	}
}

func TestCosignBundleVerifies(t *testing.T) {
	for _, r := range registries {
		t.Run(r.name, func(t *testing.T) {
			ref := setup(t, r.start)
			k := newCosignKey(t)
			cosignSign(t, k, ref, true)
			res, err := sigverify.Verify(context.Background(), ref, sigverify.Options{}, parseKeys(t, k.pub))
			if err != nil {
				t.Fatal(err)
			}
			repo, _, _ := strings.Cut(ref, "@")
			if res.Format != sigverify.FormatSigstoreBundle || !strings.HasPrefix(res.SignatureRef, repo+"@sha256:") || res.SignatureTag != "" {
				t.Fatalf("result %+v", res)
			}
			other := parseKeys(t, sigtest.NewSigner(t).PublicKeyPEM)
			if _, err := sigverify.Verify(context.Background(), ref, sigverify.Options{}, other); err == nil {
				t.Fatal("verified with another key")
			}
		})
	}
}

// b. What sigtest signs (and sigverify's tests trust), cosign verifies.

// checkOpts verifies with the public key only: no transparency log, no
// certificate timestamps, as sigverify does.
func checkOpts(t *testing.T, pubPEM []byte, newBundleFormat bool) *cosign.CheckOpts {
	t.Helper()
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	co := &cosign.CheckOpts{
		SigVerifier:     v,
		IgnoreTlog:      true,
		IgnoreSCT:       true,
		ClaimVerifier:   cosign.SimpleClaimVerifier,
		NewBundleFormat: newBundleFormat,
	}
	// As `cosign verify` does: a bundle's claim is an in-toto statement.
	if newBundleFormat {
		co.ClaimVerifier = cosign.IntotoSubjectClaimVerifier
	}
	return co
}

func TestSigtestSignatureVerifiesWithCosign(t *testing.T) {
	for _, kt := range sigtest.KeyTypes {
		t.Run(kt.Name, func(t *testing.T) {
			if kt.Name == "rsa-pss" {
				t.Skip("cosign verifies an RSA key with PKCS#1 v1.5 unless told otherwise")
			}
			ref := setup(t, registrytest.StartRegistry)
			s := kt.New(t)
			s.Sign(t, ref, sigtest.Options{})
			d, err := name.NewDigest(ref)
			if err != nil {
				t.Fatal(err)
			}
			sigs, _, err := cosign.VerifyImageSignatures(context.Background(), d, checkOpts(t, s.PublicKeyPEM, false))
			if err != nil || len(sigs) != 1 {
				t.Fatalf("cosign: %d signatures, %v", len(sigs), err)
			}
		})
	}
}

// cosign refuses what sigverify refuses: the checks above can fail.
func TestSigtestBadSignatureRefusedByCosign(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    sigtest.Options
	}{
		{"tampered", sigtest.Options{Tamper: true}},
		{"another digest", sigtest.Options{PayloadDigest: "sha256:" + strings.Repeat("ab", 32)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := setup(t, registrytest.StartRegistry)
			s := sigtest.NewSigner(t)
			s.Sign(t, ref, tc.o)
			d, err := name.NewDigest(ref)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := cosign.VerifyImageSignatures(context.Background(), d, checkOpts(t, s.PublicKeyPEM, false)); err == nil {
				t.Fatal("cosign verified it")
			} else {
				t.Logf("cosign refuses it: %v", err)
			}
		})
	}
}

// sigtest's bundle verifies with cosign's new-bundle verification, which is
// sigstore-go's (digest in the in-toto subject, DSSE signature by the key).
func TestSigtestBundleVerifiesWithCosign(t *testing.T) {
	for _, r := range registries {
		t.Run(r.name, func(t *testing.T) {
			ref := setup(t, r.start)
			s := sigtest.NewSigner(t)
			s.AttachBundle(t, ref, sigtest.BundleOptions{})
			d, err := name.NewDigest(ref)
			if err != nil {
				t.Fatal(err)
			}
			atts, _, err := cosign.VerifyImageAttestations(context.Background(), d, checkOpts(t, s.PublicKeyPEM, true))
			if err != nil || len(atts) != 1 {
				t.Fatalf("cosign: %d bundles, %v", len(atts), err)
			}
		})
	}
}

func TestSigtestBadBundleRefusedByCosign(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    sigtest.BundleOptions
	}{
		{"tampered", sigtest.BundleOptions{Options: sigtest.Options{Tamper: true}}},
		{"another digest", sigtest.BundleOptions{Options: sigtest.Options{PayloadDigest: "sha256:" + strings.Repeat("ab", 32)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := setup(t, registrytest.StartRegistry)
			s := sigtest.NewSigner(t)
			s.AttachBundle(t, ref, tc.o)
			d, err := name.NewDigest(ref)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := cosign.VerifyImageAttestations(context.Background(), d, checkOpts(t, s.PublicKeyPEM, true)); err == nil {
				t.Fatal("cosign verified it")
			} else {
				t.Logf("cosign refuses it: %v", err)
			}
		})
	}
}
