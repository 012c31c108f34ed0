// Package signing is the control plane's optional signature check (issue
// #15): before a promote records a runtime's pin, the image digest must
// carry a signature that the signature policy's rule for its repository
// accepts (pkg/sigpolicy for the rules, pkg/sigverify for the check).
// The agents verify again before they adopt a digest; this check refuses
// an unsigned image before any command reaches the fleet.
//
// What Check answers:
//   - no rule matches the repository: refused (KindPrecondition), in any
//     mode, as the policy's package doc asks of every caller;
//   - an enforce rule and no valid signature (none, none by the rule's
//     keys, or one for another digest): refused (KindPrecondition);
//   - an enforce rule and the signatures could not be read (registry down,
//     credentials refused, no answer within the timeout): KindUnavailable,
//     a retry may succeed;
//   - a warn rule and either problem: allowed, with a warning for the
//     caller to tell, and logged.
package signing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	"github.com/molecule-ai/tenant-agent/pkg/imageref"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
	"github.com/molecule-ai/tenant-agent/pkg/sigpolicy"
	"github.com/molecule-ai/tenant-agent/pkg/sigverify"
)

// DefaultTimeout bounds one check when Config.Timeout is not set: a slow
// registry fails the promote with Unavailable rather than hanging it.
const DefaultTimeout = 30 * time.Second

// maxReason bounds the verifier's reason in a message.
const maxReason = 512

// Policy is the current signature policy (sigpolicy.Source).
type Policy interface {
	Current() *sigpolicy.Policy
}

// Config configures a Checker.
type Config struct {
	// Policy is the signature policy; required.
	Policy Policy
	// Keychain holds the registry credentials; nil is anonymous.
	Keychain authn.Keychain
	// Transport carries the registry requests; nil is the default.
	Transport http.RoundTripper
	// Timeout bounds one check; DefaultTimeout when zero.
	Timeout time.Duration
	Logger  *slog.Logger
}

// Checker checks images against the signature policy.
type Checker struct {
	cfg Config
}

// New returns a Checker.
func New(cfg Config) (*Checker, error) {
	if cfg.Policy == nil {
		return nil, errors.New("signing: Policy is required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Logger = cfg.Logger.With("component", "signing")
	return &Checker{cfg: cfg}, nil
}

// Check decides whether ref may be promoted (see the package doc). It
// returns nil, or a warning to tell the caller when a warn rule let a
// problem through; a refusal is an error of a cperr kind.
func (c *Checker) Check(ctx context.Context, ref imageref.Ref) (warning string, err error) {
	policy := c.cfg.Policy.Current()
	image := limits.Quoted(ref.Repository) + "@" + ref.Digest
	rule, ok := policy.Rule(ref.Repository)
	if !ok {
		c.cfg.Logger.Warn("promote refused: no signature rule for the repository", "image", ref.String(), "policy", policy.Path)
		return "", cperr.Precondition("no rule of signature policy %s matches repository %s", policy.Path, limits.Quoted(ref.Repository))
	}
	log := c.cfg.Logger.With("image", ref.String(), "rule", rule.String(), "mode", string(rule.Mode))

	vctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	opts := rule.Options()
	opts.Keychain, opts.Transport = c.cfg.Keychain, c.cfg.Transport
	res, err := sigverify.Verify(vctx, ref.String(), opts, rule.Keys)
	switch {
	case err == nil:
		log.Info("signature verified", "key", res.SignedBy, "signature", res.SignatureTag)
		return "", nil
	case ctx.Err() != nil:
		return "", ctx.Err() // the caller left; nothing to decide
	}

	invalid := errors.Is(err, sigverify.ErrNoSignature) || errors.Is(err, sigverify.ErrBadSignature) || errors.Is(err, sigverify.ErrWrongDigest)
	reason := limits.Truncate(err.Error(), maxReason)
	if !invalid && vctx.Err() != nil {
		reason = fmt.Sprintf("no answer from the registry within %s", c.cfg.Timeout)
	}
	problem := "has no valid signature"
	if !invalid {
		problem = "has signatures that could not be read"
	}
	if rule.Mode == sigpolicy.Warn {
		log.Warn("promoting an image whose signature is not verified (warn mode)", "problem", problem, "reason", reason)
		return fmt.Sprintf("WARNING: image %s %s (signature policy rule %s warns only): %s", image, problem, rule, reason), nil
	}
	log.Warn("promote refused: signature not verified", "problem", problem, "reason", reason)
	if invalid {
		return "", cperr.Precondition("image %s %s, refused by signature policy rule %s: %s", image, problem, rule, reason)
	}
	return "", cperr.Unavailable("image %s %s, so signature policy rule %s cannot be checked; a retry may succeed: %s", image, problem, rule, reason)
}
