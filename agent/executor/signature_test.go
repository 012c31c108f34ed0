package executor

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/agent/signature"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/sigtest"
	"github.com/molecule-ai/tenant-agent/pkg/sigpolicy"
)

// The signature policy on the real Engine and a loopback registry
// (docs/signatures.md): an image is verified before anything is pulled,
// and a refusal leaves the host exactly as it was.

const verifying = tenantagentv1.CommandPhase_COMMAND_PHASE_VERIFYING

// policyFile writes a policy of one rule for pattern holding keys, dated
// a second after the file it replaces so a Source sees every edit.
func policyFile(t *testing.T, path, pattern, mode string, keys ...*sigtest.Signer) {
	t.Helper()
	var pems []string
	for _, k := range keys {
		pems = append(pems, string(k.PublicKeyPEM))
	}
	data, err := json.Marshal(map[string]any{"rules": []map[string]any{{"repository": pattern, "keys": pems, "mode": mode}}})
	if err != nil {
		t.Fatal(err)
	}
	next := time.Now()
	if fi, err := os.Stat(path); err == nil {
		next = fi.ModTime().Add(time.Second)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(path, next, next)
}

// signedExecutor is an executor of f whose verifier follows the policy
// file at path (src), with a cache in its own state dir.
func (f *runtimeFixture) signedExecutor(src *sigpolicy.Source) *Executor {
	f.t.Helper()
	cache, err := signature.OpenCache(f.t.TempDir(), f.logs.Logger(f.t, "signature"))
	if err != nil {
		f.t.Fatal(err)
	}
	v, err := signature.New(signature.Config{Source: src, Cache: cache, Logger: f.logs.Logger(f.t, "signature")})
	if err != nil {
		f.t.Fatal(err)
	}
	return f.executor(Config{Signatures: v})
}

func (f *runtimeFixture) refresh(x *Executor, id, version string, rec *recorder) *tenantagentv1.CommandResult {
	f.t.Helper()
	res, err := x.Refresh(f.ctx, &tenantagentv1.RefreshRuntimeImage{CommandId: id, Runtime: "codex", ImageRepository: f.repo, ImageDigest: f.digest[version]}, rec.hooks())
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

// assertRefused checks a refusal in VERIFYING: FAILED, an error naming
// the image, the rule and why, nothing pulled (the image is not in the
// Engine, unless it was adopted before), no recreate step, and the
// managed container still the one with containerID, running.
func (f *runtimeFixture) assertRefused(t *testing.T, res *tenantagentv1.CommandResult, rec *recorder, version, containerID, why string, adoptedBefore bool) {
	t.Helper()
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED || res.GetFailedPhase() != verifying {
		t.Errorf("outcome %v in %v, want FAILED in VERIFYING: %s", res.GetOutcome(), res.GetFailedPhase(), res.GetError())
	}
	for _, want := range []string{f.ref(version), fmt.Sprintf("rules[0] %q", f.repo), why} {
		if !strings.Contains(res.GetError(), want) {
			t.Errorf("error lacks %q: %s", want, res.GetError())
		}
	}
	if s := res.GetSignature(); s.GetVerified() || !strings.HasPrefix(s.GetProblem(), why) || s.GetRule() != f.repo || s.GetMode() != "enforce" {
		t.Errorf("signature check %v", s)
	}
	if !adoptedBefore && f.present(version) {
		t.Errorf("%s was pulled", f.ref(version))
	}
	rec.mu.Lock()
	if rec.steps > 0 || !slices.Contains(rec.phases, verifying) || slices.Contains(rec.phases, tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING) {
		t.Errorf("%d recreate steps, phases %v; want VERIFYING and no pull", rec.steps, rec.phases)
	}
	rec.mu.Unlock()
	in, err := f.cli.ContainerInspect(f.ctx, f.managed)
	if err != nil || in.ID != containerID || !in.State.Running {
		t.Errorf("the managed container: %v; want %s untouched and running", err, containerID[:12])
	}
}

// Unsigned, signed by another key, a signature copied from another
// digest, a tampered payload, no rule for the repository: each refresh
// (and a prefetch) is refused before anything is pulled or stopped.
func TestSignatureRefusals(t *testing.T) {
	t.Parallel()
	f := newRuntimeFixture(t, []string{"v1", "unsigned", "other-key", "other-digest", "tampered", "no-rule", "prefetch"})
	id := f.run(f.managed, "v1", f.sel, true)
	signer := sigtest.NewSigner(t)
	path := filepath.Join(t.TempDir(), "policy.json")
	policyFile(t, path, f.repo, "enforce", signer)
	src, err := sigpolicy.NewSource(path, sigpolicy.SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	x := f.signedExecutor(src)
	sign := func(version string, o sigtest.Options) { signer.Sign(t, f.ref(version), o) }

	sigtest.NewSigner(t).Sign(t, f.ref("other-key"), sigtest.Options{})
	sign("other-digest", sigtest.Options{PayloadDigest: f.digest["v1"]})
	sign("tampered", sigtest.Options{Tamper: true})
	for _, c := range []struct{ version, why string }{
		{"unsigned", "unsigned"},
		{"other-key", "signed by no key of the rule"},
		{"other-digest", "the signature names another digest"},
		{"tampered", "signed by no key of the rule"},
	} {
		t.Run(c.version, func(t *testing.T) {
			var rec recorder
			res := f.refresh(x, "c-"+c.version, c.version, &rec)
			f.assertRefused(t, res, &rec, c.version, id, c.why, false)
		})
	}

	t.Run("prefetch", func(t *testing.T) {
		var rec recorder
		res := x.Prefetch(f.ctx, &tenantagentv1.PrefetchRuntimeImage{CommandId: "c-prefetch", Runtime: "codex", ImageRepository: f.repo, ImageDigest: f.digest["prefetch"]}, rec.hooks())
		f.assertRefused(t, res, &rec, "prefetch", id, "unsigned", false)
	})

	t.Run("no rule", func(t *testing.T) {
		sign("no-rule", sigtest.Options{})
		other := filepath.Join(t.TempDir(), "policy.json")
		policyFile(t, other, "registry.example/other/*", "warn", signer)
		src, err := sigpolicy.NewSource(other, sigpolicy.SourceOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var rec recorder
		res := f.refresh(f.signedExecutor(src), "c-no-rule", "no-rule", &rec)
		want := fmt.Sprintf("refused: no rule of signature policy %s matches repository %s", other, f.repo)
		if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED || res.GetFailedPhase() != verifying || !strings.Contains(res.GetError(), want) {
			t.Errorf("%v in %v: %s; want %q", res.GetOutcome(), res.GetFailedPhase(), res.GetError(), want)
		}
		if f.present("no-rule") {
			t.Errorf("pulled without a rule")
		}
	})
}

// A signed image is adopted and its verification remembered; a policy
// edited while the agent runs takes effect, and once the key that signed
// it is removed, the same digest is verified again and refused.
func TestSignatureAdoptedUntilItsKeyIsRemoved(t *testing.T) {
	t.Parallel()
	f := newRuntimeFixture(t, []string{"v1", "v2"})
	f.run(f.managed, "v1", f.sel, true)
	oldKey, newKey := sigtest.NewSigner(t), sigtest.NewSigner(t)
	path := filepath.Join(t.TempDir(), "policy.json")
	policyFile(t, path, f.repo, "enforce", oldKey)
	changed := make(chan *sigpolicy.Policy, 1)
	src, err := sigpolicy.NewSource(path, sigpolicy.SourceOptions{Interval: 10 * time.Millisecond, OnChange: func(p *sigpolicy.Policy) { changed <- p }})
	if err != nil {
		t.Fatal(err)
	}
	go src.Run(f.ctx)
	x := f.signedExecutor(src)
	oldKey.Sign(t, f.ref("v2"), sigtest.Options{})

	var rec recorder
	res := f.refresh(x, "c-signed", "v2", &rec)
	sig := res.GetSignature()
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED || !sig.GetVerified() || sig.GetCached() ||
		!strings.HasPrefix(sig.GetSignedBy(), "keys[0] (inline PEM) (sha256:") || !strings.HasSuffix(sig.GetSignatureRef(), ".sig") {
		t.Fatalf("signed refresh: %v %s, signature %v", res.GetOutcome(), res.GetError(), sig)
	}
	if rec.phases[0] != verifying {
		t.Errorf("first phase %v, want VERIFYING before anything else", rec.phases[0])
	}
	in, err := f.cli.ContainerInspect(f.ctx, f.managed)
	if err != nil || in.Config.Image != f.ref("v2") || !in.State.Running {
		t.Fatalf("after the refresh: %v; want %s running on v2", err, f.managed)
	}

	res = x.Prefetch(f.ctx, &tenantagentv1.PrefetchRuntimeImage{CommandId: "c-again", Runtime: "codex", ImageRepository: f.repo, ImageDigest: f.digest["v2"]}, (&recorder{}).hooks())
	if !res.GetSignature().GetCached() || !res.GetSignature().GetVerified() || res.GetSignature().GetSignedBy() != sig.GetSignedBy() {
		t.Errorf("second check of the digest: %v, want it from the cache", res.GetSignature())
	}

	policyFile(t, path, f.repo, "enforce", newKey) // rotated, the old key dropped
	select {
	case <-changed:
	case <-f.ctx.Done():
		t.Fatal("the running Source never adopted the edited policy")
	}
	rec = recorder{}
	res = f.refresh(x, "c-key-removed", "v2", &rec)
	f.assertRefused(t, res, &rec, "v2", in.ID, "signed by no key of the rule", true)
	if res.GetSignature().GetCached() {
		t.Errorf("refused from the cache: %v", res.GetSignature())
	}
}

// Warn mode adopts an unsigned image and reports the problem.
func TestSignatureWarnModeAdopts(t *testing.T) {
	t.Parallel()
	f := newRuntimeFixture(t, []string{"v1", "v2"})
	f.run(f.managed, "v1", f.sel, true)
	path := filepath.Join(t.TempDir(), "policy.json")
	policyFile(t, path, f.repo, "warn", sigtest.NewSigner(t))
	src, err := sigpolicy.NewSource(path, sigpolicy.SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res := f.refresh(f.signedExecutor(src), "c-warn", "v2", &recorder{})
	sig := res.GetSignature()
	if res.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED || sig.GetVerified() || sig.GetMode() != "warn" || !strings.HasPrefix(sig.GetProblem(), "unsigned: ") {
		t.Fatalf("warn mode: %v %s, signature %v", res.GetOutcome(), res.GetError(), sig)
	}
	if in, err := f.cli.ContainerInspect(f.ctx, f.managed); err != nil || in.Config.Image != f.ref("v2") {
		t.Errorf("warn mode did not adopt v2: %v", err)
	}
}
