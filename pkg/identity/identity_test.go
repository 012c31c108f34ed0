package identity

import (
	"crypto/x509"
	"math/big"
	"net/url"
	"strings"
	"testing"
)

const td = "molecule.local"

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Identity
		wantErr string
	}{
		{in: "spiffe://molecule.local/tenant/agents-team", want: Identity{Kind: KindAgent, Tenant: "agents-team"}},
		{in: "spiffe://molecule.local/tenant/acme/agent/host-1", want: Identity{Kind: KindAgent, Tenant: "acme", Name: "host-1"}},
		{in: "spiffe://molecule.local/operator/alice", want: Identity{Kind: KindOperator, Name: "alice"}},
		{in: "spiffe://molecule.local/service/promote-hook", want: Identity{Kind: KindService, Name: "promote-hook"}},
		{in: "spiffe://other.example/tenant/acme", wantErr: "trust domain"},
		{in: "https://molecule.local/tenant/acme", wantErr: "not a SPIFFE ID"},
		{in: "spiffe://molecule.local/tenant", wantErr: "path must be"},
		{in: "spiffe://molecule.local/tenant/acme/extra", wantErr: "path must be"},
		{in: "spiffe://molecule.local/tenant/acme/agent", wantErr: "path must be"},
		{in: "spiffe://molecule.local/admin/root", wantErr: "path must be"},
		{in: "spiffe://molecule.local/tenant/Acme", wantErr: "lowercase"},
		{in: "spiffe://molecule.local/tenant/-acme", wantErr: "lowercase"},
		{in: "spiffe://molecule.local/tenant/" + strings.Repeat("a", 64), wantErr: "1-63"},
		{in: "spiffe://molecule.local/tenant/acme?x=1", wantErr: "not a SPIFFE ID"},
		{in: "spiffe://molecule.local/tenant/acme/", wantErr: "not a SPIFFE ID"},
		{in: "spiffe://molecule.local", wantErr: "path segment"},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in, td)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Parse(%q) err = %v, want it to mention %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.in, err)
			continue
		}
		tt.want.ID, tt.want.TrustDomain = tt.in, td
		if got != tt.want {
			t.Errorf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestFromCertificate(t *testing.T) {
	cert := &x509.Certificate{SerialNumber: big.NewInt(0xabc)}
	if _, err := FromCertificate(cert, td); err == nil || !strings.Contains(err.Error(), "no SPIFFE ID") {
		t.Errorf("no URI: err = %v", err)
	}
	cert.URIs = []*url.URL{mustURL(t, "https://example.com/x"), mustURL(t, "spiffe://molecule.local/tenant/acme")}
	id, err := FromCertificate(cert, td)
	if err != nil || id.Tenant != "acme" {
		t.Errorf("one SPIFFE URI among others: %+v, %v", id, err)
	}
	cert.URIs = append(cert.URIs, mustURL(t, "spiffe://molecule.local/tenant/other"))
	if _, err := FromCertificate(cert, td); err == nil || !strings.Contains(err.Error(), "2 SPIFFE IDs") {
		t.Errorf("two SPIFFE URIs: err = %v", err)
	}
}

func TestNormalizeSerial(t *testing.T) {
	for in, want := range map[string]string{"0A:1B:2c": "a1b2c", "0x00ff": "ff", " 7f ": "7f"} {
		if got, err := NormalizeSerial(in); err != nil || got != want {
			t.Errorf("NormalizeSerial(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "00", "xyz", "12:zz"} {
		if _, err := NormalizeSerial(bad); err == nil {
			t.Errorf("NormalizeSerial(%q) accepted", bad)
		}
	}
}

// FuzzParse checks the parser never panics, and that whatever it accepts
// is a well-formed identity of this trust domain that parses back the same.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"spiffe://molecule.local/tenant/acme",
		"spiffe://molecule.local/tenant/acme/agent/a1",
		"spiffe://molecule.local/operator/bob",
		"spiffe://molecule.local/service/hook",
		"spiffe://evil.example/tenant/acme",
		"spiffe://molecule.local/tenant/acme/../x",
		"spiffe://molecule.local/tenant/%61cme",
		"spiffe://user@molecule.local:443/tenant/acme",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		id, err := Parse(raw, td)
		if err != nil {
			return
		}
		if id.TrustDomain != td || !strings.HasPrefix(id.ID, "spiffe://"+td+"/") {
			t.Fatalf("Parse(%q) accepted a foreign identity %+v", raw, id)
		}
		switch id.Kind {
		case KindAgent:
			if !ValidName(id.Tenant) || (id.Name != "" && !ValidName(id.Name)) {
				t.Fatalf("Parse(%q) = %+v: invalid agent fields", raw, id)
			}
		case KindOperator, KindService:
			if id.Tenant != "" || !ValidName(id.Name) {
				t.Fatalf("Parse(%q) = %+v: invalid name", raw, id)
			}
		default:
			t.Fatalf("Parse(%q) = %+v: no kind", raw, id)
		}
		again, err := Parse(id.ID, td)
		if err != nil || again != id {
			t.Fatalf("Parse(%q) = %+v does not round-trip: %+v, %v", raw, id, again, err)
		}
	})
}
