package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Against names what a client's verification of a server certificate
// compared it with.
type Against string

const (
	AgainstCA         Against = "ca"          // the CA bundle (chain, validity)
	AgainstServerName Against = "server-name" // the DNS name asked for
	AgainstServerID   Against = "server-id"   // ClientOptions.ServerID
)

// ServerRefusal is why a client refused a server's certificate, in one
// short line: crypto/tls's own message can carry a whole chain dump.
type ServerRefusal struct {
	Against Against
	Reason  string
}

// ServerCertRefusal reports whether err (a client handshake's error) is
// this side refusing the server's certificate, and why, briefly.
func ServerCertRefusal(err error) (ServerRefusal, bool) {
	if errors.Is(err, errServerID) {
		return ServerRefusal{AgainstServerID, strings.TrimPrefix(err.Error(), errServerID.Error()+": ")}, true
	}
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		return ServerRefusal{}, false
	}
	var (
		unknown   x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		untrusted = func(r string) (ServerRefusal, bool) { return ServerRefusal{AgainstCA, r}, true }
	)
	switch {
	case errors.As(verr.Err, &unknown):
		if c := unknown.Cert; c != nil {
			return untrusted(fmt.Sprintf("issued by %q, which the bundle does not hold", c.Issuer.CommonName))
		}
		return untrusted("issued by a CA the bundle does not hold")
	case errors.As(verr.Err, &hostname):
		return ServerRefusal{AgainstServerName, fmt.Sprintf("the certificate is for %s, not %q", certNames(hostname.Certificate), hostname.Host)}, true
	case errors.As(verr.Err, &invalid) && invalid.Reason == x509.Expired && invalid.Cert != nil:
		return untrusted(fmt.Sprintf("expired or not yet valid (valid %s to %s)", invalid.Cert.NotBefore.UTC().Format(time.RFC3339), invalid.Cert.NotAfter.UTC().Format(time.RFC3339)))
	}
	return untrusted(strings.TrimPrefix(verr.Err.Error(), "x509: "))
}

func certNames(c *x509.Certificate) string {
	if c == nil {
		return "other names"
	}
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return "no DNS name"
	}
	if len(names) > 4 {
		names = append(names[:4], fmt.Sprintf("and %d more", len(names)-4))
	}
	return strings.Join(names, ", ")
}
