// Package identity turns a verified certificate's SPIFFE ID into the typed
// identity the control plane authorizes: a tenant agent, an operator or a
// service. The tenant an agent speaks for comes only from here.
//
// Accepted forms (docs/security.md):
//
//	spiffe://<trust-domain>/tenant/<slug>
//	spiffe://<trust-domain>/tenant/<slug>/agent/<name>
//	spiffe://<trust-domain>/operator/<name>
//	spiffe://<trust-domain>/service/<name>
package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// Kind is the role family an identity belongs to.
type Kind int

const (
	// KindAgent is a tenant agent: spiffe://td/tenant/<slug>[/agent/<name>].
	KindAgent Kind = iota + 1
	// KindOperator is a human operator: spiffe://td/operator/<name>.
	KindOperator
	// KindService is an automated caller such as the promote hook:
	// spiffe://td/service/<name>.
	KindService
)

func (k Kind) String() string {
	switch k {
	case KindAgent:
		return "agent"
	case KindOperator:
		return "operator"
	case KindService:
		return "service"
	}
	return "unknown"
}

// Identity is who a verified peer is.
type Identity struct {
	// ID is the full SPIFFE ID, for logs and audit fields.
	ID string
	// TrustDomain is the SPIFFE trust domain, e.g. "molecule.local".
	TrustDomain string
	Kind        Kind
	// Tenant is the tenant slug; set only for agents.
	Tenant string
	// Name is the operator's or service's name, or an agent's optional name.
	Name string
}

func (id Identity) String() string { return id.ID }

// maxNameLen bounds slugs and names like a DNS label, so they fit in labels,
// file names and metrics.
const maxNameLen = 63

// ValidName reports whether s is a valid tenant slug or name: 1 to 63
// lowercase letters, digits and hyphens, starting and ending with a letter
// or digit.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Parse parses a SPIFFE ID and checks it belongs to trustDomain and has one
// of the accepted forms.
func Parse(raw, trustDomain string) (Identity, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Identity{}, fmt.Errorf("identity %q: not a URI: %w", raw, err)
	}
	return fromURI(u, trustDomain)
}

func fromURI(u *url.URL, trustDomain string) (Identity, error) {
	id, err := spiffeid.FromURI(u)
	if err != nil {
		return Identity{}, fmt.Errorf("identity %q: not a SPIFFE ID: %w", u, err)
	}
	if got := id.TrustDomain().Name(); got != trustDomain {
		return Identity{}, fmt.Errorf("identity %q: trust domain %q is not %q", id, got, trustDomain)
	}
	out := Identity{ID: id.String(), TrustDomain: trustDomain}
	segments := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	for _, s := range segments {
		if !ValidName(s) {
			return Identity{}, fmt.Errorf("identity %q: path segment %q must be 1-63 lowercase letters, digits or hyphens", id, s)
		}
	}
	switch {
	case len(segments) == 2 && segments[0] == "tenant":
		out.Kind, out.Tenant = KindAgent, segments[1]
	case len(segments) == 4 && segments[0] == "tenant" && segments[2] == "agent":
		out.Kind, out.Tenant, out.Name = KindAgent, segments[1], segments[3]
	case len(segments) == 2 && segments[0] == "operator":
		out.Kind, out.Name = KindOperator, segments[1]
	case len(segments) == 2 && segments[0] == "service":
		out.Kind, out.Name = KindService, segments[1]
	default:
		return Identity{}, fmt.Errorf("identity %q: path must be /tenant/<slug>[/agent/<name>], /operator/<name> or /service/<name>", id)
	}
	return out, nil
}

// FromCertificate reads the identity from a certificate's URI SANs. The
// certificate must carry exactly one spiffe:// URI.
func FromCertificate(cert *x509.Certificate, trustDomain string) (Identity, error) {
	var spiffe []*url.URL
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" {
			spiffe = append(spiffe, u)
		}
	}
	switch len(spiffe) {
	case 0:
		return Identity{}, fmt.Errorf("certificate %q (serial %s) has no SPIFFE ID", cert.Subject.CommonName, SerialHex(cert))
	case 1:
		return fromURI(spiffe[0], trustDomain)
	default:
		return Identity{}, fmt.Errorf("certificate %q (serial %s) has %d SPIFFE IDs; exactly one is allowed", cert.Subject.CommonName, SerialHex(cert), len(spiffe))
	}
}

// SerialHex is a certificate's serial number in lowercase hex without
// separators, the form deny lists use.
func SerialHex(cert *x509.Certificate) string {
	return fmt.Sprintf("%x", cert.SerialNumber)
}

// NormalizeSerial turns a serial as an operator may type it ("0A:1b:..",
// "0x0a1b", "a1b") into SerialHex's form.
func NormalizeSerial(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	s = strings.TrimPrefix(s, "0x")
	s = strings.NewReplacer(":", "", " ", "").Replace(s)
	s = strings.TrimLeft(s, "0")
	if s == "" {
		return "", errors.New("certificate serial is empty")
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", fmt.Errorf("certificate serial %s: %q is not a hex digit", limits.Quoted(s), c)
		}
	}
	return s, nil
}

type contextKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, contextKey{}, id)
}

// FromContext returns the identity an interceptor put in ctx.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(contextKey{}).(Identity)
	return id, ok
}
