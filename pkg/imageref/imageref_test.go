package imageref

import (
	"strings"
	"testing"
)

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParse(t *testing.T) {
	good := map[string]Ref{
		"registry.example/molecule-ai/workspace-template-codex@sha256:" + hex64: {"registry.example/molecule-ai/workspace-template-codex", "sha256:" + hex64},
		"127.0.0.1:5000/ws@sha256:" + hex64:                                     {"127.0.0.1:5000/ws", "sha256:" + hex64},
		"ubuntu@sha256:" + hex64:                                                {"ubuntu", "sha256:" + hex64},
	}
	for in, want := range good {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if got.String() != in {
			t.Errorf("String() = %q, want %q", got.String(), in)
		}
	}
	bad := map[string]string{
		"registry.example/ws:v2":                               "tags are refused",
		"registry.example/ws:v2@sha256:" + hex64:               "has a tag",
		"registry.example/ws@sha256:abc":                       "has 3 hex digits",
		"registry.example/ws@sha256:" + strings.ToUpper(hex64): "uppercase",
		"registry.example/ws@sha512:" + hex64:                  `must start with "sha256:"`,
		"registry.example/ws@sha256:" + hex64[:63] + "g":       "not a hex digit",
		"Registry.Example/WS@sha256:" + hex64:                  "image repository",
		"@sha256:" + hex64:                                     "empty",
		"":                                                     "not pinned by digest",
	}
	for in, want := range bad {
		_, err := Parse(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) err = %v, want it to mention %q", in, err, want)
		}
	}
}

// FuzzParse: never panics; anything accepted is a digest-pinned reference
// without a tag that prints back as it was given.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"a/b@sha256:" + hex64, "a:1@sha256:" + hex64, "a@sha256:" + hex64[:10], "localhost:5000/x@sha256:" + hex64, "a@@sha256:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ref, err := Parse(s)
		if err != nil {
			return
		}
		if ref.String() != s {
			t.Fatalf("Parse(%q).String() = %q", s, ref.String())
		}
		if ValidateDigest(ref.Digest) != nil || ValidateRepository(ref.Repository) != nil {
			t.Fatalf("Parse(%q) accepted an invalid part: %+v", s, ref)
		}
		if strings.Contains(ref.Repository, "@") {
			t.Fatalf("Parse(%q) repository holds a digest: %q", s, ref.Repository)
		}
	})
}

// TestErrorsQuoteAShortPrefix: a huge input never comes back whole in an
// error, which callers return and log.
func TestErrorsQuoteAShortPrefix(t *testing.T) {
	huge := strings.Repeat("x", 200<<10)
	checks := map[string]error{
		"Parse of a huge string":       func() error { _, err := Parse(huge); return err }(),
		"Parse of a huge repository":   func() error { _, err := Parse(huge[:400] + "@sha256:" + hex64); return err }(),
		"Parse of a huge digest":       func() error { _, err := Parse("a@sha256:" + huge); return err }(),
		"Parse of a huge tag":          func() error { _, err := Parse("a:" + huge[:400]); return err }(),
		"ValidateDigest, no prefix":    ValidateDigest(huge),
		"ValidateDigest, long hex":     ValidateDigest("sha256:" + huge),
		"ValidateRepository, huge":     ValidateRepository(huge),
		"ValidateRepository, invalid":  ValidateRepository("A" + huge[:500]),
		"ValidateDigest, bad hex late": ValidateDigest("sha256:" + hex64[:63] + "g"),
	}
	for name, err := range checks {
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		if len(err.Error()) > 300 {
			t.Errorf("%s: error is %d bytes: %.120s…", name, len(err.Error()), err)
		}
	}
}
