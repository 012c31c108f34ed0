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
	"github.com/sigstore/cosign/v3/cmd/cosign/cli/options"
	"github.com/sigstore/cosign/v3/cmd/cosign/cli/sign"
	"github.com/sigstore/cosign/v3/pkg/cosign"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/sigtest"
	"github.com/molecule-ai/tenant-agent/pkg/sigverify"
)

// setup serves a registry start makes (registrytest.Registries), holding
// one small image, and returns its pinned reference.
func setup(t *testing.T, start func(registrytest.T) *registrytest.Registry) string {
	t.Helper()
	return sigtest.PushImage(t, start(t))
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
	for _, r := range registrytest.Registries {
		t.Run(r.Name, func(t *testing.T) {
			ref := setup(t, r.Start)
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

// cosignVerify verifies ref's signatures, or its sigstore bundles, with
// cosign's library and the public key only (no transparency log, no
// certificate timestamps, as sigverify does), the way `cosign verify
// --key --insecure-ignore-tlog` does; it returns how many verify.
func cosignVerify(t *testing.T, ref string, pubPEM []byte, bundles bool) (int, error) {
	t.Helper()
	d, err := name.NewDigest(ref)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	co := &cosign.CheckOpts{SigVerifier: v, IgnoreTlog: true, IgnoreSCT: true, ClaimVerifier: cosign.SimpleClaimVerifier}
	if bundles {
		// As `cosign verify` does: a bundle's claim is an in-toto
		// statement, verified by sigstore-go.
		co.NewBundleFormat, co.ClaimVerifier = true, cosign.IntotoSubjectClaimVerifier
		atts, _, err := cosign.VerifyImageAttestations(context.Background(), d, co)
		return len(atts), err
	}
	sigs, _, err := cosign.VerifyImageSignatures(context.Background(), d, co)
	return len(sigs), err
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
			if n, err := cosignVerify(t, ref, s.PublicKeyPEM, false); err != nil || n != 1 {
				t.Fatalf("cosign: %d signatures, %v", n, err)
			}
		})
	}
}

func TestSigtestBundleVerifiesWithCosign(t *testing.T) {
	for _, r := range registrytest.Registries {
		t.Run(r.Name, func(t *testing.T) {
			ref := setup(t, r.Start)
			s := sigtest.NewSigner(t)
			s.AttachBundle(t, ref, sigtest.BundleOptions{})
			if n, err := cosignVerify(t, ref, s.PublicKeyPEM, true); err != nil || n != 1 {
				t.Fatalf("cosign: %d bundles, %v", n, err)
			}
		})
	}
}

// cosign refuses what sigverify refuses: the checks above can fail.
func TestSigtestBadSignaturesRefusedByCosign(t *testing.T) {
	other := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name    string
		bundles bool
		sign    func(*testing.T, *sigtest.Signer, string)
	}{
		{"tampered", false, func(t *testing.T, s *sigtest.Signer, ref string) { s.Sign(t, ref, sigtest.Options{Tamper: true}) }},
		{"another digest", false, func(t *testing.T, s *sigtest.Signer, ref string) {
			s.Sign(t, ref, sigtest.Options{PayloadDigest: other})
		}},
		{"tampered bundle", true, func(t *testing.T, s *sigtest.Signer, ref string) {
			s.AttachBundle(t, ref, sigtest.BundleOptions{Options: sigtest.Options{Tamper: true}})
		}},
		{"bundle for another digest", true, func(t *testing.T, s *sigtest.Signer, ref string) {
			s.AttachBundle(t, ref, sigtest.BundleOptions{Options: sigtest.Options{PayloadDigest: other}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := setup(t, registrytest.StartRegistry)
			s := sigtest.NewSigner(t)
			tc.sign(t, s, ref)
			n, err := cosignVerify(t, ref, s.PublicKeyPEM, tc.bundles)
			if err == nil {
				t.Fatalf("cosign verified %d", n)
			}
			t.Logf("cosign refuses it: %v", err)
		})
	}
}
