package signature

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/sigtest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
	"github.com/molecule-ai/tenant-agent/pkg/sigpolicy"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// WritePolicy writes a policy of one rule per pattern, each holding
// keys (PEM) in mode, and dates the file a second later than before, so
// a Source sees the edit however coarse the file system's clock.
func writePolicy(t *testing.T, path, mode string, keys []string, patterns ...string) {
	t.Helper()
	var rules []map[string]any
	for _, p := range patterns {
		rules = append(rules, map[string]any{"repository": p, "keys": keys, "mode": mode})
	}
	data, err := json.Marshal(map[string]any{"rules": rules})
	if err != nil {
		t.Fatal(err)
	}
	var next time.Time
	if fi, err := os.Stat(path); err == nil {
		next = fi.ModTime().Add(time.Second)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if !next.IsZero() {
		os.Chtimes(path, next, next)
	}
}

// counter is an Observe that counts.
type counter struct {
	mu sync.Mutex
	n  map[Outcome]int
}

func (c *counter) observe(o Outcome) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[Outcome]int{}
	}
	c.n[o]++
}

func (c *counter) get(o Outcome) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[o]
}

type fixture struct {
	reg        *registrytest.Registry
	repository string
	policy     string
	src        *sigpolicy.Source
	counts     *counter
	v          *Verifier
	stateDir   string
}

// newFixture starts a registry, writes a policy for its repository
// "app" with keys in mode, and returns a Verifier with a cache.
func newFixture(t *testing.T, mode string, keys ...*sigtest.Signer) *fixture {
	t.Helper()
	f := &fixture{reg: registrytest.StartRegistry(t), counts: &counter{}, stateDir: t.TempDir()}
	f.repository = f.reg.Host + "/app"
	f.policy = filepath.Join(t.TempDir(), "policy.json")
	writePolicy(t, f.policy, mode, pems(keys...), f.repository)
	var err error
	if f.src, err = NewSource(f.policy, quiet); err != nil {
		t.Fatal(err)
	}
	cache, err := OpenCache(f.stateDir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if f.v, err = New(Config{Source: f.src, Cache: cache, Observe: f.counts.observe, Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	return f
}

func pems(keys ...*sigtest.Signer) []string {
	var out []string
	for _, k := range keys {
		out = append(out, string(k.PublicKeyPEM))
	}
	return out
}

// push pushes a small random image to the fixture's repository.
func (f *fixture) push(t *testing.T) string {
	t.Helper()
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, digest := f.reg.Push(t, "app", img)
	return digest
}

// A digest verified once is taken from the cache while the rule holds
// the key that verified it, even from a new process; once the key is
// removed from the policy it is verified again, and refused.
func TestVerifiedThenCachedThenKeyRemoved(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	signer, other := sigtest.NewSigner(t), sigtest.NewSigner(t)
	f := newFixture(t, "enforce", other, signer)
	digest := f.push(t)
	signer.Sign(t, f.repository+"@"+digest, sigtest.Options{})

	chk, err := f.v.Verify(ctx, f.repository, digest)
	if err != nil || !chk.Verified || chk.Cached || chk.Rule != f.repository || chk.Mode != "enforce" {
		t.Fatalf("first check: %+v, %v; want verified from the registry", chk, err)
	}
	if !strings.HasPrefix(chk.SignedBy, "keys[1] (inline PEM) (sha256:") || chk.SignatureRef != f.repository+":"+strings.Replace(digest, ":", "-", 1)+".sig" {
		t.Errorf("signed by %q at %q", chk.SignedBy, chk.SignatureRef)
	}

	// A new cache from the same state dir: what a restarted agent reads.
	cache, err := OpenCache(f.stateDir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	v2, _ := New(Config{Source: f.src, Cache: cache, Observe: f.counts.observe, Logger: quiet})
	f.reg.Stop() // a cache hit does not need the registry
	again, err := v2.Verify(ctx, f.repository, digest)
	if err != nil || !again.Cached || !again.Verified || again.SignedBy != chk.SignedBy || again.SignatureRef != chk.SignatureRef {
		t.Fatalf("second check: %+v, %v; want it from the cache", again, err)
	}
	f.reg.Restart(t)

	writePolicy(t, f.policy, "enforce", pems(other), f.repository)
	if changed, err := f.src.Poll(); !changed || err != nil {
		t.Fatalf("policy edit not adopted: %v, %v", changed, err)
	}
	refused, err := v2.Verify(ctx, f.repository, digest)
	if err == nil || refused.Verified || refused.Cached || !strings.Contains(err.Error(), "signed by no key of the rule") {
		t.Fatalf("after the key was removed: %+v, %v; want a refusal", refused, err)
	}
	for o, want := range map[Outcome]int{Verified: 1, Cached: 1, Refused: 1} {
		if got := f.counts.get(o); got != want {
			t.Errorf("%s counted %d times, want %d", o, got, want)
		}
	}
}

// Each refusal names the image, the rule and why, and says whether it is
// a verdict or a registry problem.
func TestRefusals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	signer := sigtest.NewSigner(t)
	f := newFixture(t, "enforce", signer)
	other := f.push(t)
	for _, c := range []struct {
		name, why string
		outcome   Outcome
		sign      func(ref string)
	}{
		{"unsigned", "unsigned", Refused, func(string) {}},
		{"another key", "signed by no key of the rule", Refused, func(ref string) { sigtest.NewSigner(t).Sign(t, ref, sigtest.Options{}) }},
		{"another digest", "the signature names another digest", Refused, func(ref string) { signer.Sign(t, ref, sigtest.Options{PayloadDigest: other}) }},
		{"tampered", "signed by no key of the rule", Refused, func(ref string) { signer.Sign(t, ref, sigtest.Options{Tamper: true}) }},
	} {
		digest := f.push(t)
		c.sign(f.repository + "@" + digest)
		before := f.counts.get(c.outcome)
		chk, err := f.v.Verify(ctx, f.repository, digest)
		if err == nil {
			t.Errorf("%s: adopted: %+v", c.name, chk)
			continue
		}
		for _, want := range []string{f.repository + "@" + digest, fmt.Sprintf("rules[0] %q", f.repository), f.policy, c.why} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error lacks %q: %v", c.name, want, err)
			}
		}
		if chk.Verified || !strings.HasPrefix(chk.Problem, c.why+": ") || chk.Rule != f.repository {
			t.Errorf("%s: check %+v", c.name, chk)
		}
		if f.counts.get(c.outcome) != before+1 {
			t.Errorf("%s: not counted as %s", c.name, c.outcome)
		}
	}

	// No rule matches: refused whatever the mode.
	_, err := f.v.Verify(ctx, f.reg.Host+"/elsewhere", other)
	if want := fmt.Sprintf("refused: no rule of signature policy %s matches repository %s/elsewhere", f.policy, f.reg.Host); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("no rule: %v, want %q", err, want)
	}

	// The registry down is not "unsigned".
	f.reg.Stop()
	_, err = f.v.Verify(ctx, f.repository, other)
	if err == nil || !strings.Contains(err.Error(), "could not read signatures (registry error)") || f.counts.get(Error) != 1 {
		t.Errorf("registry down: %v (errors counted %d)", err, f.counts.get(Error))
	}
}

// Warn mode adopts and says what is wrong.
func TestWarnMode(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "warn", sigtest.NewSigner(t))
	digest := f.push(t)
	chk, err := f.v.Verify(context.Background(), f.repository, digest)
	if err != nil || chk.Verified || chk.Mode != "warn" || !strings.HasPrefix(chk.Problem, "unsigned: ") || f.counts.get(Warned) != 1 {
		t.Errorf("warn mode: %+v, %v", chk, err)
	}
}

// Signatures are read with the agent's registry credentials, asked at
// each verification (so a rotated password is used).
func TestVerifyUsesTheAgentsCredentials(t *testing.T) {
	t.Parallel()
	signer := sigtest.NewSigner(t)
	f := newFixture(t, "enforce", signer)
	digest := f.push(t)
	signer.Sign(t, f.repository+"@"+digest, sigtest.Options{})
	var mu sync.Mutex
	password := "first"
	f.reg.RequireBasicAuth("agent", func() string { mu.Lock(); defer mu.Unlock(); return password })
	var asked []string
	creds := func(repository string) (registry.AuthConfig, error) {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, repository)
		return registry.AuthConfig{Username: "agent", Password: password}, nil
	}
	v, _ := New(Config{Source: f.src, Credentials: creds, Logger: quiet}) // no cache: every check reads
	for _, pw := range []string{"first", "rotated"} {
		mu.Lock()
		password = pw
		mu.Unlock()
		if chk, err := v.Verify(context.Background(), f.repository, digest); err != nil || !chk.Verified {
			t.Fatalf("password %s: %+v, %v", pw, chk, err)
		}
	}
	if len(asked) != 2 || asked[0] != f.repository {
		t.Errorf("credentials asked for %q; want the repository, once per check", asked)
	}
}

// A corrupt cache file is ignored and replaced; the cache keeps at most
// MaxCacheEntries, dropping the oldest, whether read or stored.
func TestCacheToleratesCorruptionAndIsBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, CacheFile)
	os.WriteFile(path, []byte("{not json"), 0o600)
	c, err := OpenCache(dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Lookup("r/a@sha256:x", []string{"k"}); ok {
		t.Fatal("a hit from a corrupt file")
	}
	image := func(i int) string { return fmt.Sprintf("r/a@sha256:%d", i) }
	start := time.Now().Add(-time.Hour)
	var doc cacheFile
	for i := range MaxCacheEntries + 5 {
		doc.Verified = append(doc.Verified, Entry{Image: image(i), Key: "k", VerifiedAt: start.Add(time.Duration(i) * time.Second)})
	}
	data, _ := json.Marshal(doc)
	os.WriteFile(path, data, 0o600)
	if c, err = OpenCache(dir, quiet); err != nil {
		t.Fatal(err)
	}
	c.Store(Entry{Image: "r/a@sha256:new", Key: "k"})
	if c, err = OpenCache(dir, quiet); err != nil {
		t.Fatal(err)
	}
	if len(c.entries) != MaxCacheEntries {
		t.Errorf("%d entries after reopening, want %d", len(c.entries), MaxCacheEntries)
	}
	for i, want := range map[int]bool{0: false, 5: false, 6: true, MaxCacheEntries + 4: true} {
		if _, ok := c.Lookup(image(i), []string{"k"}); ok != want {
			t.Errorf("entry %d kept: %v, want %v", i, ok, want)
		}
	}
	if _, ok := c.Lookup("r/a@sha256:new", []string{"another key"}); ok {
		t.Error("a hit for a key that did not verify it")
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("cache file: %v, %v; want 0600", fi.Mode(), err)
	}
}

// A bad edit of a running policy is logged at error level and the last
// good policy stays in force.
func TestBadEditKeepsTheLastGoodPolicy(t *testing.T) {
	t.Parallel()
	var logs testlog.Buffer
	logger := logs.Logger(t, "signature")
	path := filepath.Join(t.TempDir(), "policy.json")
	writePolicy(t, path, "enforce", pems(sigtest.NewSigner(t)), "r.example/app")
	src, err := NewSource(path, logger)
	if err != nil {
		t.Fatal(err)
	}
	next := time.Now().Add(time.Hour)
	os.WriteFile(path, []byte(`{"rules": [{"repository": "r.example/app", "keys": ["gone.pub"]}]}`), 0o600)
	os.Chtimes(path, next, next)
	if changed, err := src.Poll(); changed || err == nil {
		t.Fatalf("a bad edit was adopted: %v, %v", changed, err)
	}
	if _, ok := src.Current().Rule("r.example/app"); !ok {
		t.Error("the last good policy was dropped")
	}
	if !strings.Contains(logs.String(), `level=ERROR msg="signature policy changed but does not load; keeping the last good one" component=signature file=`+path) {
		t.Errorf("no error logged:\n%s", logs.String())
	}
}
