// Package signature decides, before anything is pulled, whether the agent
// may adopt an image digest under its signature policy (issue #15,
// docs/signatures.md). It finds the policy rule of the image's repository
// (pkg/sigpolicy), verifies the digest's cosign signature with the rule's
// keys (pkg/sigverify) using the agent's own registry credentials, and
// remembers verified digests (Cache) so a digest is read from the registry
// once per key. It speaks Go types; agent/executor puts them on the wire.
package signature

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
	"github.com/molecule-ai/tenant-agent/pkg/sigpolicy"
	"github.com/molecule-ai/tenant-agent/pkg/sigverify"
)

// Outcome is how one check ended, for metrics.
type Outcome string

const (
	// Verified: a signature by a key of the rule was read from the registry.
	Verified Outcome = "verified"
	// Cached: the digest was verified before with a key the rule still holds.
	Cached Outcome = "cached"
	// Refused: the image is refused (no rule, or enforce mode and the
	// signature is missing or bad).
	Refused Outcome = "refused"
	// Warned: warn mode, the signature is missing or bad, the image is
	// adopted anyway.
	Warned Outcome = "warned"
	// Error: the signatures could not be read (a registry problem, never
	// "unsigned"); refused in enforce mode, adopted in warn mode.
	Error Outcome = "error"
)

// Outcomes lists every Outcome, for metrics to start each at zero.
var Outcomes = []Outcome{Verified, Cached, Refused, Warned, Error}

// verifyTimeout bounds one verification's registry reads.
const verifyTimeout = time.Minute

// Config configures a Verifier.
type Config struct {
	// Source is the signature policy, kept current (required).
	Source *sigpolicy.Source
	// Credentials are the agent's registry credentials, the ones its
	// pulls use; asked at every verification. Nil is anonymous.
	Credentials docker.CredentialFunc
	// Transport carries registry requests; nil is go-containerregistry's
	// default (which honours HTTPS_PROXY).
	Transport http.RoundTripper
	// Cache remembers verified digests; nil remembers nothing.
	Cache *Cache
	// Observe, if set, counts each check's Outcome.
	Observe func(Outcome)
	Logger  *slog.Logger
}

// Verifier checks images against the current policy. It is safe for
// concurrent use (the runner runs runtimes in parallel).
type Verifier struct{ cfg Config }

// New returns a Verifier.
func New(cfg Config) (*Verifier, error) {
	if cfg.Source == nil {
		return nil, errors.New("signature: a policy Source is required")
	}
	if cfg.Credentials == nil {
		cfg.Credentials = docker.Anonymous
	}
	if cfg.Observe == nil {
		cfg.Observe = func(Outcome) {}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Logger = cfg.Logger.With("component", "signature")
	return &Verifier{cfg: cfg}, nil
}

// NewSource loads the policy file (an invalid one is the error, naming
// the file) and returns a Source that, once its Run is started, re-reads
// the policy and its key files when they change, logging each change and
// keeping the last good policy when an edit does not load.
func NewSource(path string, logger *slog.Logger) (*sigpolicy.Source, error) {
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("component", "signature")
	src, err := sigpolicy.NewSource(path, sigpolicy.SourceOptions{
		OnChange: func(p *sigpolicy.Policy) {
			logger.Info("signature policy reloaded", "file", p.Path, "rules", len(p.Rules()))
		},
		OnError: func(err error) {
			// sigpolicy's errors name the rule and quote input short; key
			// files hold public keys only.
			logger.Error("signature policy changed but does not load; keeping the last good one", "file", path, "error", err)
		},
	})
	if err != nil {
		return nil, err
	}
	logger.Info("signature policy loaded", "file", path, "rules", len(src.Current().Rules()))
	return src, nil
}

// Check is what a verification found; the executor reports it as the
// result's SignatureCheck.
type Check struct {
	// Rule is the pattern of the rule that applied; "" when none matched.
	Rule string
	// Mode is the rule's mode, "enforce" or "warn".
	Mode string
	// Verified is true when a signature by a key of the rule names the
	// digest.
	Verified bool
	// SignedBy names that key as the policy does, with its fingerprint.
	SignedBy string
	// SignatureRef is where the signature was found.
	SignatureRef string
	// Cached is true when the verification was remembered, not read now.
	Cached bool
	// Problem says why it is not verified (bounded).
	Problem string
}

// Verify decides whether repository@digest may be adopted. A nil error
// means go on (verified, or warn mode with Check.Problem saying what is
// wrong); an error is the refusal, naming the image, the rule and why.
// The caller has validated repository and digest.
func (v *Verifier) Verify(ctx context.Context, repository, digest string) (Check, error) {
	policy := v.cfg.Source.Current()
	ref := repository + "@" + digest
	rule, ok := policy.Rule(repository)
	if !ok {
		err := fmt.Errorf("refused: no rule of signature policy %s matches repository %s", policy.Path, repository)
		v.cfg.Observe(Refused)
		return Check{Problem: limits.Truncate(err.Error(), limits.Message)}, err
	}
	chk := Check{Rule: rule.Pattern, Mode: string(rule.Mode)}
	if e, ok := v.cfg.Cache.Lookup(ref, fingerprints(rule.Keys)); ok {
		chk.Verified, chk.Cached, chk.SignedBy, chk.SignatureRef = true, true, e.SignedBy, e.SignatureRef
		v.cfg.Observe(Cached)
		return chk, nil
	}
	res, err := v.verify(ctx, ref, rule)
	if err == nil {
		chk.Verified, chk.SignatureRef = true, res.SignatureRef
		key := fingerprint(rule.Keys[res.SignedBy])
		chk.SignedBy = fmt.Sprintf("%s (%s)", rule.KeyNames[res.SignedBy], shortFingerprint(key))
		v.cfg.Cache.Store(Entry{Image: ref, Key: key, SignedBy: chk.SignedBy, SignatureRef: chk.SignatureRef})
		v.cfg.Observe(Verified)
		return chk, nil
	}
	return v.failed(chk, ref, rule, policy.Path, err)
}

// verify reads and checks the signatures with the rule's keys, with the
// agent's credentials for the signature repository.
func (v *Verifier) verify(ctx context.Context, ref string, rule sigpolicy.Rule) (sigverify.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, verifyTimeout)
	defer cancel()
	opts := rule.Options()
	opts.Keychain = docker.Keychain(v.cfg.Credentials)
	opts.Transport = v.cfg.Transport
	return sigverify.Verify(ctx, ref, opts, rule.Keys)
}

// failed is a verification that did not pass: a refusal in enforce mode,
// a warning in warn mode.
func (v *Verifier) failed(chk Check, ref string, rule sigpolicy.Rule, policyPath string, err error) (Check, error) {
	why, outcome := reason(err)
	chk.Problem = limits.Truncate(why+": "+err.Error(), limits.Message)
	if rule.Mode == sigpolicy.Warn {
		if outcome == Refused {
			outcome = Warned
		}
		v.cfg.Observe(outcome)
		v.cfg.Logger.Warn("adopting an image whose signature does not verify (warn mode)", "image", ref, "rule", rule.String(), "problem", chk.Problem)
		return chk, nil
	}
	v.cfg.Observe(outcome)
	return chk, fmt.Errorf("refused: image %s fails %s of signature policy %s: %s: %v", ref, rule, policyPath, why, err)
}

// reason says in a few words why verification failed, and whether that
// is a verdict on the image (Refused) or a failure to read (Error).
func reason(err error) (string, Outcome) {
	switch {
	case errors.Is(err, sigverify.ErrNoSignature):
		return "unsigned", Refused
	case errors.Is(err, sigverify.ErrBadSignature):
		return "signed by no key of the rule", Refused
	case errors.Is(err, sigverify.ErrWrongDigest):
		return "the signature names another digest", Refused
	}
	return "could not read signatures (registry error)", Error
}

// fingerprint is "sha256:<hex>" of a key's PKIX encoding: what the cache
// remembers, so a key removed from the policy no longer vouches.
func fingerprint(key any) string {
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return "" // sigverify.ParsePublicKeys accepted it: cannot happen
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func fingerprints(keys sigverify.Keys) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = fingerprint(k)
	}
	return out
}

// shortFingerprint is enough of a fingerprint to tell keys apart in a
// report: "sha256:0123456789ab".
func shortFingerprint(fp string) string {
	if len(fp) > len("sha256:")+12 {
		return fp[:len("sha256:")+12]
	}
	return fp
}
