package sigverify

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// The DSSE specification's example.
func TestPAE(t *testing.T) {
	got := pae("http://example.com/HelloWorld", []byte("hello world"))
	if want := "DSSEv1 29 http://example.com/HelloWorld 11 hello world"; string(got) != want {
		t.Fatalf("pae = %q, want %q", got, want)
	}
}

func TestCappedBody(t *testing.T) {
	for _, tc := range []struct {
		n       int
		wantErr bool
	}{{maxResponse, false}, {maxResponse + 1, true}} {
		body := &cappedBody{ReadCloser: io.NopCloser(bytes.NewReader(make([]byte, tc.n))), left: maxResponse}
		b, err := io.ReadAll(body)
		if (err != nil) != tc.wantErr || (err != nil && !strings.Contains(err.Error(), "more than")) {
			t.Fatalf("%d bytes: err = %v, want error %v", tc.n, err, tc.wantErr)
		}
		if len(b) > maxResponse+1 {
			t.Fatalf("%d bytes: read %d", tc.n, len(b))
		}
	}
}

// A signed payload that is not what it must be is refused for what it
// is; an unsigned one is never parsed.
func TestVerifyBundleMalformed(t *testing.T) {
	for _, tc := range []struct{ name, bundle, want string }{
		{"not JSON", "{", "not sigstore bundle JSON"},
		{"media type", `{"mediaType":"application/json"}`, "bundle media type"},
		{"no material", `{"mediaType":"` + BundleMediaType + `"}`, "no verification material"},
		{"message signature", `{"mediaType":"` + BundleMediaType + `","verificationMaterial":{"publicKey":{}},"messageSignature":{}}`, "no DSSE envelope"},
		{"payload type", `{"mediaType":"` + BundleMediaType + `","verificationMaterial":{"publicKey":{}},"dsseEnvelope":{"payloadType":"text/plain"}}`, "DSSE payload type"},
		{"no signatures", `{"mediaType":"` + BundleMediaType + `","verificationMaterial":{"publicKey":{}},"dsseEnvelope":{"payloadType":"` + InTotoPayloadType + `","signatures":[]}}`, "0 signatures"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := verifyBundle([]byte(tc.bundle), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
