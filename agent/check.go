package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/molecule-ai/tenant-agent/agent/channel"
	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/executor"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
	"github.com/molecule-ai/tenant-agent/pkg/sigpolicy"
)

// checkTimeout bounds each check that talks to something.
const checkTimeout = 15 * time.Second

// Check verifies what the agent needs with cfg (its signature policy, its
// certificate, key and CA, the control plane, Docker, the containers it would manage), prints
// one line per check to w ("ok   ..." or "FAIL ..."), and reports whether
// all passed. It changes nothing: the control plane sees a stream opened
// and closed before Hello.
func Check(ctx context.Context, cfg Config, w io.Writer) bool {
	c := &checker{w: w, ok: true}
	if err := cfg.CheckAndSetDefaults(); err != nil && cfg.TLS.CheckAndSetDefaults() == nil {
		c.fail("flags", err) // TLS file errors get their own line below
	}
	c.signaturePolicy(cfg)
	src, id := c.certificate(cfg)
	if src != nil {
		c.controlPlane(ctx, cfg, src)
	}
	engine := c.docker(ctx, cfg)
	if engine != nil && src != nil {
		c.containers(ctx, cfg, engine, id)
	}
	if engine != nil {
		engine.Close()
	}
	return c.ok
}

type checker struct {
	w  io.Writer
	ok bool
}

func (c *checker) pass(what, format string, args ...any) {
	fmt.Fprintf(c.w, "ok   %s: %s\n", what, fmt.Sprintf(format, args...))
}

func (c *checker) fail(what string, err error) {
	c.ok = false
	fmt.Fprintf(c.w, "FAIL %s: %s\n", what, strings.ReplaceAll(err.Error(), "\n", "; "))
}

// certificate checks the certificate, key and CA files: readable, the key
// matching, valid now, a tenant's SPIFFE ID; and says whether --ca holds
// the certificate's issuer (not required: the control plane's own CA
// bundle decides).
func (c *checker) certificate(cfg Config) (*mtls.Source, identity.Identity) {
	src, err := mtls.NewSource(cfg.TLS, cfg.Logger)
	if err != nil {
		c.fail("certificate", err)
		return nil, identity.Identity{}
	}
	m := src.Current()
	leaf, now := m.Leaf, time.Now()
	id, err := identity.FromCertificate(leaf, cfg.TrustDomain)
	switch {
	case now.After(leaf.NotAfter):
		c.fail("certificate", fmt.Errorf("%s expired %s ago (%s)", cfg.TLS.Cert, roughly(now.Sub(leaf.NotAfter)), leaf.NotAfter.UTC().Format(time.RFC3339)))
	case now.Before(leaf.NotBefore):
		c.fail("certificate", fmt.Errorf("%s is not valid for another %s", cfg.TLS.Cert, roughly(leaf.NotBefore.Sub(now))))
	case err != nil:
		c.fail("certificate", err)
	case id.Kind != identity.KindAgent:
		c.fail("certificate", fmt.Errorf("%s is for %s %s, not a tenant agent", cfg.TLS.Cert, id.Kind, id.ID))
	default:
		c.pass("certificate", "%s, expires in %s", id.ID, roughly(leaf.NotAfter.Sub(now)))
	}
	intermediates := x509.NewCertPool()
	for _, der := range m.Certificate.Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			intermediates.AddCert(ic)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.Roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		c.pass("ca", "%s loads; it does not hold this certificate's issuer %q (fine if the control plane trusts it)", cfg.TLS.CA, leaf.Issuer.CommonName)
	} else {
		c.pass("ca", "%s loads and holds this certificate's issuer %q", cfg.TLS.CA, leaf.Issuer.CommonName)
	}
	if !c.ok {
		return nil, id
	}
	return src, id
}

// signaturePolicy loads --signature-policy and its key files, as the
// agent's start does.
func (c *checker) signaturePolicy(cfg Config) {
	if cfg.SignaturePolicy == "" {
		c.pass("signature policy", "off (no --signature-policy): images are adopted without verifying signatures")
		return
	}
	p, err := sigpolicy.Load(cfg.SignaturePolicy)
	if err != nil {
		c.fail("signature policy", err)
		return
	}
	modes := map[sigpolicy.Mode]int{}
	for _, r := range p.Rules() {
		modes[r.Mode]++
	}
	c.pass("signature policy", "%s: %d rules (%d enforce, %d warn)", cfg.SignaturePolicy, len(p.Rules()), modes[sigpolicy.Enforce], modes[sigpolicy.Warn])
}

func (c *checker) controlPlane(ctx context.Context, cfg Config, src *mtls.Source) {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	creds := mtls.ClientCredentialsWith(src, mtls.ClientOptions{ServerName: cfg.ServerName, ServerID: cfg.ControlPlaneID})
	if err := channel.Probe(ctx, cfg.ControlPlane, creds, cfg.TLS.CA); err != nil {
		c.fail("control plane", fmt.Errorf("%s: %w", cfg.ControlPlane, err))
		return
	}
	c.pass("control plane", "%s: mTLS handshake done, stream admitted", cfg.ControlPlane)
}

func (c *checker) docker(ctx context.Context, cfg Config) *docker.Engine {
	engine, err := docker.New(cfg.DockerHost, cfg.Logger)
	if err != nil {
		c.fail("docker", err)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	v, err := engine.Version(ctx)
	if err != nil {
		c.fail("docker", err)
		engine.Close()
		return nil
	}
	c.pass("docker", "Engine %s at %s", v, engine.Client().DaemonHost())
	return engine
}

// containers lists the managed containers, one line per runtime.
func (c *checker) containers(ctx context.Context, cfg Config, engine *docker.Engine, id identity.Identity) {
	selector := docker.Selector{}
	for k, v := range cfg.Labels {
		selector[k] = strings.ReplaceAll(v, "{tenant}", id.Tenant)
	}
	x, err := executor.New(executor.Config{Engine: engine, Selector: selector, RepositoryPattern: cfg.RepositoryPattern, RuntimeLabel: cfg.RuntimeLabel, Logger: cfg.Logger})
	if err != nil {
		c.fail("containers", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	byRuntime, err := x.Containers(ctx)
	if err != nil {
		c.fail("containers", err)
		return
	}
	if len(byRuntime) == 0 {
		c.pass("containers", "none managed (labels %s, repository pattern %s)", selectorString(selector), cfg.RepositoryPattern)
		return
	}
	runtimes := make([]string, 0, len(byRuntime))
	for rt := range byRuntime {
		runtimes = append(runtimes, rt)
	}
	sort.Strings(runtimes)
	for _, rt := range runtimes {
		var names []string
		for _, ctr := range byRuntime[rt] {
			names = append(names, fmt.Sprintf("%s (%s)", ctr.Name(), ctr.Inspect.State.Status))
		}
		sort.Strings(names)
		c.pass("runtime "+rt, "%d on %s: %s", len(names), byRuntime[rt][0].Repository, strings.Join(names, ", "))
	}
}

func selectorString(s docker.Selector) string {
	kv := make([]string, 0, len(s))
	for k, v := range s {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

// roughly is d in its largest whole unit: 89d, 23h, 14m, 5s.
func roughly(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	case d >= time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	case d >= time.Minute:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	}
	return fmt.Sprintf("%ds", int(d/time.Second))
}
