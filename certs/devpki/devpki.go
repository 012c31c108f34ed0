// Package devpki is the dev PKI command: one call writes a CA, a control
// plane server certificate, agent certificates for named tenants, an
// operator certificate and a promote-hook service certificate.
package devpki

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/molecule-ai/tenant-agent/certs/pki"
	"github.com/molecule-ai/tenant-agent/pkg/cliflag"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/version"
)

const summary = `devpki writes a development PKI into --out: ca.pem (the CA bundle to trust),
controlplane.pem (server cert for localhost, 127.0.0.1, ::1 and --dns/--ip),
agent-<tenant>.pem for each tenant named as an argument ("acme" or
"acme/host-1" for spiffe://<td>/tenant/acme/agent/host-1), operator-<name>.pem
and service-<name>.pem; each with its -key.pem (mode 0600).

Existing files are kept (an existing CA signs the new certificates) unless
--force is given. Example:

  go run ./certs/cmd/devpki --out certs/dev agents-team acme`

// Run is the devpki command line.
func Run(args []string, stdout io.Writer) error {
	cmd := cliflag.Command{Name: "devpki", Summary: summary, EnvPrefix: "DEVPKI", Version: version.String(), Args: "[tenant[/agent-name] ...]"}
	fs := flag.NewFlagSet(cmd.Name, flag.ContinueOnError)
	var (
		out         = fs.String("out", "certs/dev", "folder to write into (created with mode 0700)")
		trustDomain = fs.String("trust-domain", "molecule.local", "SPIFFE trust domain of every identity")
		operators   = fs.String("operators", "dev", "comma-separated operator names (spiffe://<td>/operator/<name>)")
		services    = fs.String("services", "promote-hook", "comma-separated service names (spiffe://<td>/service/<name>)")
		dnsNames    = fs.String("dns", "", "comma-separated extra DNS names for the control plane certificate")
		ips         = fs.String("ip", "", "comma-separated extra IP addresses for the control plane certificate")
		caLifetime  = fs.Duration("ca-lifetime", 30*24*time.Hour, "lifetime of a new CA")
		lifetime    = fs.Duration("lifetime", 7*24*time.Hour, "lifetime of each leaf certificate")
		force       = fs.Bool("force", false, "overwrite existing files, including the CA")
	)
	tenants, err := cmd.Parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if err := checkLifetimes(*caLifetime, *lifetime); err != nil {
		return err
	}
	extraIPs, err := parseIPs(*ips)
	if err != nil {
		return err
	}
	plan, err := planLeaves(*trustDomain, tenants, splitList(*operators), splitList(*services))
	if err != nil {
		return err
	}

	ca, caNote, err := loadOrCreateCA(*out, *trustDomain, *caLifetime, *force)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%-28s %s\n", filepath.Join(*out, "ca.pem"), caNote)

	server := pki.Leaf{
		CommonName: "controlplane",
		DNSNames:   append([]string{"localhost"}, splitList(*dnsNames)...),
		IPs:        append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, extraIPs...),
		Server:     true,
	}
	plan = append([]plannedLeaf{{file: "controlplane", leaf: server}}, plan...)
	for _, p := range plan {
		p.leaf.NotAfter = time.Now().Add(*lifetime)
		issued, err := ca.Issue(p.leaf)
		if err != nil {
			return err
		}
		certPath, _, err := pki.WriteFiles(*out, p.file, issued.CertPEM, issued.KeyPEM, *force)
		switch {
		case errors.Is(err, pki.ErrExists):
			fmt.Fprintf(stdout, "%-28s kept (exists)\n", certPath)
		case err != nil:
			return err
		default:
			fmt.Fprintf(stdout, "%-28s %s, serial %s, until %s\n", certPath, describe(p.leaf), identity.SerialHex(issued.Cert), issued.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

type plannedLeaf struct {
	file string
	leaf pki.Leaf
}

// planLeaves validates every name before anything is written.
func planLeaves(trustDomain string, tenants, operators, services []string) ([]plannedLeaf, error) {
	var plan []plannedLeaf
	add := func(file, cn, spiffeID string) error {
		if _, err := identity.Parse(spiffeID, trustDomain); err != nil {
			return err
		}
		plan = append(plan, plannedLeaf{file: file, leaf: pki.Leaf{CommonName: cn, SPIFFEID: spiffeID, Client: true}})
		return nil
	}
	base := "spiffe://" + trustDomain
	for _, t := range tenants {
		slug, name, hasName := strings.Cut(t, "/")
		id, file := base+"/tenant/"+slug, "agent-"+slug
		if hasName {
			id, file = id+"/agent/"+name, file+"-"+name
		}
		if err := add(file, "agent "+t, id); err != nil {
			return nil, fmt.Errorf("tenant %q: %w", t, err)
		}
	}
	for _, n := range operators {
		if err := add("operator-"+n, "operator "+n, base+"/operator/"+n); err != nil {
			return nil, fmt.Errorf("operator %q: %w", n, err)
		}
	}
	for _, n := range services {
		if err := add("service-"+n, "service "+n, base+"/service/"+n); err != nil {
			return nil, fmt.Errorf("service %q: %w", n, err)
		}
	}
	return plan, nil
}

func loadOrCreateCA(dir, trustDomain string, lifetime time.Duration, force bool) (*pki.CA, string, error) {
	certPath, keyPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if _, err := os.Stat(certPath); err == nil && !force {
		ca, err := pki.LoadCA(certPath, keyPath)
		if err != nil {
			return nil, "", err
		}
		if time.Now().After(ca.Cert.NotAfter) {
			return nil, "", fmt.Errorf("CA %s expired at %s; use --force to make a new PKI", certPath, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
		return ca, "kept (exists; signs the new certificates)", nil
	}
	ca, err := pki.NewCA(trustDomain, lifetime)
	if err != nil {
		return nil, "", err
	}
	if _, _, err := pki.WriteFiles(dir, "ca", ca.CertPEM, ca.KeyPEM, force); err != nil {
		return nil, "", err
	}
	return ca, fmt.Sprintf("new CA for %s, until %s", trustDomain, ca.Cert.NotAfter.UTC().Format(time.RFC3339)), nil
}

func describe(l pki.Leaf) string {
	if l.SPIFFEID != "" {
		return l.SPIFFEID
	}
	names := append([]string{}, l.DNSNames...)
	for _, ip := range l.IPs {
		names = append(names, ip.String())
	}
	return "server " + strings.Join(names, ",")
}

func checkLifetimes(ca, leaf time.Duration) error {
	if ca <= 0 || leaf <= 0 {
		return errors.New("--ca-lifetime and --lifetime must be positive")
	}
	return nil
}

func parseIPs(list string) ([]net.IP, error) {
	var out []net.IP
	for _, s := range splitList(list) {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("--ip %q is not an IP address", s)
		}
		out = append(out, ip)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
