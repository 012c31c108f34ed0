package sigverify_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/sigtest"
	"github.com/molecule-ai/tenant-agent/pkg/sigverify"
)

func TestBundleSignedByAllowedKey(t *testing.T) {
	for _, r := range registrytest.Registries {
		t.Run(r.Name, func(t *testing.T) {
			_, ref := setupOn(t, r.Start)
			s := sigtest.NewSigner(t)
			referrer := s.AttachBundle(t, ref, sigtest.BundleOptions{})
			res, err := verify(t, ref, sigverify.Options{}, keys(t, sigtest.NewSigner(t), s))
			if err != nil {
				t.Fatal(err)
			}
			want := sigverify.Result{SignedBy: 1, SignatureRef: referrer, Format: sigverify.FormatSigstoreBundle}
			if res != want {
				t.Fatalf("result %+v, want %+v", res, want)
			}
			// The API registry kept the referrer to itself: no referrers
			// tag, so the API is what found it.
			repo, digest, _ := strings.Cut(ref, "@")
			fallback, err := name.NewTag(repo + ":" + strings.Replace(digest, ":", "-", 1))
			if err != nil {
				t.Fatal(err)
			}
			_, err = remote.Head(fallback)
			if hasTag := err == nil; hasTag != (r.Name == "referrers-tag") {
				t.Fatalf("referrers tag exists: %v (err %v)", hasTag, err)
			}
		})
	}
}

// The older bundle media type is accepted too.
func TestBundleV02(t *testing.T) {
	_, ref := setup(t)
	s := sigtest.NewSigner(t)
	s.AttachBundle(t, ref, sigtest.BundleOptions{MediaType: "application/vnd.dev.sigstore.bundle+json;version=0.2"})
	if _, err := verify(t, ref, sigverify.Options{}, keys(t, s)); err != nil {
		t.Fatal(err)
	}
}

func TestBundleRefused(t *testing.T) {
	other := "sha256:" + strings.Repeat("cd", 32)
	for _, tc := range []struct {
		name      string
		otherKey  bool
		o         sigtest.BundleOptions
		wantErr   error
		wantInErr string
	}{
		{"another key", true, sigtest.BundleOptions{}, sigverify.ErrBadSignature, "DSSE signature 1: key 0 (ECDSA P-256"},
		{"tampered", false, sigtest.BundleOptions{Options: sigtest.Options{Tamper: true}}, sigverify.ErrBadSignature, "ECDSA signature does not verify"},
		{"another digest", false, sigtest.BundleOptions{Options: sigtest.Options{PayloadDigest: other}}, sigverify.ErrWrongDigest, "is for " + other},
		{"attestation", false, sigtest.BundleOptions{PredicateType: "https://slsa.dev/provenance/v1"}, sigverify.ErrBadSignature, `predicate type is "https://slsa.dev/provenance/v1"`},
		{"oversized", false, sigtest.BundleOptions{Pad: sigverify.MaxBundle}, sigverify.ErrBadSignature, fmt.Sprintf("at most %d", sigverify.MaxBundle)},
		// Keyless: ignored, so the image counts as unsigned, with the
		// reason.
		{"certificate only", false, sigtest.BundleOptions{Certificate: true}, sigverify.ErrNoSignature, "keyless"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, ref := setup(t)
			s, allowed := sigtest.NewSigner(t), sigtest.NewSigner(t)
			if !tc.otherKey {
				allowed = s
			}
			referrer := s.AttachBundle(t, ref, tc.o)
			_, err := verify(t, ref, sigverify.Options{}, keys(t, allowed))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			for _, want := range []string{tc.wantInErr, referrer} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
}

// The classic tag is looked at first; a bundle is found when it has none
// that verifies, and every reason is told when neither does.
func TestTagThenReferrers(t *testing.T) {
	_, ref := setup(t)
	allowed, other := sigtest.NewSigner(t), sigtest.NewSigner(t)
	k := keys(t, allowed)

	other.Sign(t, ref, sigtest.Options{})
	other.AttachBundle(t, ref, sigtest.BundleOptions{})
	_, err := verify(t, ref, sigverify.Options{}, k)
	if !errors.Is(err, sigverify.ErrBadSignature) {
		t.Fatalf("err = %v, want ErrBadSignature", err)
	}
	for _, want := range []string{"found 1 signature(s) in " + strings.Split(ref, "@")[0] + ":sha256-", "1 sigstore bundle(s) among the referrers", "signature 1: key 0", "DSSE signature 1: key 0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}

	referrer := allowed.AttachBundle(t, ref, sigtest.BundleOptions{})
	res, err := verify(t, ref, sigverify.Options{}, k)
	if err != nil || res.SignatureRef != referrer {
		t.Fatalf("bundle after a bad tag: %+v, %v; want %s", res, err, referrer)
	}

	tag := allowed.Sign(t, ref, sigtest.Options{Append: true})
	res, err = verify(t, ref, sigverify.Options{}, k)
	if err != nil || res.Format != sigverify.FormatSimpleSigning || res.SignatureRef != tag || res.SignatureTag != tag {
		t.Fatalf("tag and bundle: %+v, %v; want the tag %s first", res, err, tag)
	}
}

func TestBundleSeparateSignatureRepository(t *testing.T) {
	reg, ref := setup(t)
	s := sigtest.NewSigner(t)
	sigRepo := reg.Host + "/molecule-ai/signatures"
	referrer := s.AttachBundle(t, ref, sigtest.BundleOptions{Options: sigtest.Options{SignatureRepository: sigRepo}})
	res, err := verify(t, ref, sigverify.Options{SignatureRepository: sigRepo}, keys(t, s))
	if err != nil || res.SignatureRef != referrer || !strings.HasPrefix(referrer, sigRepo+"@") {
		t.Fatalf("%+v, %v; want %s in %s", res, err, referrer, sigRepo)
	}
	if _, err := verify(t, ref, sigverify.Options{}, keys(t, s)); !errors.Is(err, sigverify.ErrNoSignature) {
		t.Fatalf("image repository: err = %v, want ErrNoSignature", err)
	}
}

func TestBundleRegistryCredentials(t *testing.T) {
	for _, r := range registrytest.Registries {
		t.Run(r.Name, func(t *testing.T) {
			reg, ref := setupOn(t, r.Start)
			reg.RequireBasicAuth("ci", func() string { return "secret" })
			s := sigtest.NewSigner(t)
			basic := &authn.Basic{Username: "ci", Password: "secret"}
			s.AttachBundle(t, ref, sigtest.BundleOptions{Options: sigtest.Options{Auth: basic}})
			if _, err := verify(t, ref, sigverify.Options{Keychain: staticKeychain{basic}}, keys(t, s)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Only the first MaxReferrers bundles are read, and the error says so.
func TestTooManyBundles(t *testing.T) {
	_, ref := setup(t)
	other := sigtest.NewSigner(t)
	for i := 0; i <= sigverify.MaxReferrers; i++ {
		// Distinct bundles (ECDSA signatures are randomized), so distinct
		// referrers.
		other.AttachBundle(t, ref, sigtest.BundleOptions{})
	}
	_, err := verify(t, ref, sigverify.Options{}, keys(t, sigtest.NewSigner(t)))
	if !errors.Is(err, sigverify.ErrBadSignature) {
		t.Fatalf("err = %v, want ErrBadSignature", err)
	}
	for _, want := range []string{
		fmt.Sprintf("%d sigstore bundles among the referrers of %s, only the first %d are read", sigverify.MaxReferrers+1, ref, sigverify.MaxReferrers),
		fmt.Sprintf("%d sigstore bundle(s) among the referrers", sigverify.MaxReferrers),
		"and 9 more", // 16 reasons and the one above, 8 shown
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if len(err.Error()) > 8192 {
		t.Errorf("error is %d bytes", len(err.Error()))
	}
}

// A signature tag of more than MaxSignatures layers is not read, and does
// not hide a bundle.
func TestTooManyTagSignaturesThenBundle(t *testing.T) {
	_, ref := setup(t)
	s := sigtest.NewSigner(t)
	repo, digest, _ := strings.Cut(ref, "@")
	payload := sigtest.Payload(repo, digest)
	for i := 0; i <= sigverify.MaxSignatures; i++ {
		sigtest.PushSignature(t, repo, digest, payload, "AAAA", sigtest.Options{Append: i > 0})
	}
	_, err := verify(t, ref, sigverify.Options{}, keys(t, s))
	if !errors.Is(err, sigverify.ErrBadSignature) || !strings.Contains(err.Error(), fmt.Sprintf("has %d layers, at most %d are read", sigverify.MaxSignatures+1, sigverify.MaxSignatures)) {
		t.Fatalf("err = %v, want ErrBadSignature saying the tag has too many layers", err)
	}
	s.AttachBundle(t, ref, sigtest.BundleOptions{})
	if res, err := verify(t, ref, sigverify.Options{}, keys(t, s)); err != nil || res.Format != sigverify.FormatSigstoreBundle {
		t.Fatalf("%+v, %v; want the bundle", res, err)
	}
}
