package sigpolicy_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/internal/sigtest"
	"github.com/molecule-ai/tenant-agent/pkg/sigpolicy"
)

type rule struct {
	Repository          string   `json:"repository"`
	Keys                []string `json:"keys"`
	Mode                string   `json:"mode,omitempty"`
	SignatureRepository string   `json:"signature_repository,omitempty"`
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func writePolicy(t *testing.T, path string, rules ...rule) {
	t.Helper()
	data, err := json.MarshalIndent(map[string]any{"rules": rules}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, data)
}

func pemOf(t *testing.T) string { return string(sigtest.NewSigner(t).PublicKeyPEM) }

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	k := pemOf(t)
	path := filepath.Join(dir, "policy.json")
	writePolicy(t, path,
		rule{Repository: "*", Keys: []string{k}},
		rule{Repository: "registry.example/molecule-ai/*", Keys: []string{k}},
		rule{Repository: "registry.example/molecule-ai/workspace-*", Keys: []string{k}, Mode: "warn"},
		rule{Repository: "registry.example/molecule-ai/workspace-template-codex", Keys: []string{k}},
		rule{Repository: "registry.example/other/app", Keys: []string{k}},
	)
	p, err := sigpolicy.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		repo string
		want int
	}{
		{"registry.example/molecule-ai/workspace-template-codex", 3},  // exact beats every glob
		{"registry.example/molecule-ai/workspace-template-claude", 2}, // longer glob
		{"registry.example/molecule-ai/agent", 1},
		{"registry.example/molecule-ai/team/nested", 1}, // "*" crosses "/"
		{"registry.example/other/app", 4},
		{"registry.example/other/app2", 0}, // exact is exact; catch-all
		{"elsewhere.example/x", 0},
	} {
		r, ok := p.Rule(c.repo)
		if !ok || r.Index != c.want {
			t.Errorf("Rule(%q) = %v, %v; want rules[%d]", c.repo, r, ok, c.want)
		}
	}
}

func TestNoMatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.json")
	writePolicy(t, path, rule{Repository: "registry.example/molecule-ai/*", Keys: []string{pemOf(t)}})
	p, err := sigpolicy.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"registry.example/molecule-ai", "registry.example/molecule-aix/app", "other.example/molecule-ai/app", ""} {
		if r, ok := p.Rule(repo); ok {
			t.Errorf("Rule(%q) = %v, want no match", repo, r)
		}
	}
}

func TestModesAndSignatureRepository(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.json")
	k := pemOf(t)
	writePolicy(t, path,
		rule{Repository: "r.example/a", Keys: []string{k}, Mode: "enforce"},
		rule{Repository: "r.example/b", Keys: []string{k}, Mode: "warn", SignatureRepository: "r.example/sigs"},
		rule{Repository: "r.example/c", Keys: []string{k}},
	)
	p, err := sigpolicy.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for repo, want := range map[string]sigpolicy.Mode{"r.example/a": sigpolicy.Enforce, "r.example/b": sigpolicy.Warn, "r.example/c": sigpolicy.Enforce} {
		r, ok := p.Rule(repo)
		if !ok || r.Mode != want {
			t.Errorf("Rule(%q).Mode = %q (%v), want %q", repo, r.Mode, ok, want)
		}
	}
	r, _ := p.Rule("r.example/b")
	if r.SignatureRepository != "r.example/sigs" || r.Options().SignatureRepository != "r.example/sigs" {
		t.Errorf("signature repository = %q", r.SignatureRepository)
	}
	if r, _ := p.Rule("r.example/a"); r.SignatureRepository != "" {
		t.Errorf("default signature repository = %q, want empty", r.SignatureRepository)
	}
}

func TestSeveralKeysAndRelativePaths(t *testing.T) {
	dir := t.TempDir()
	old, cur, inline := sigtest.NewSigner(t), sigtest.NewEd25519Signer(t), sigtest.NewSigner(t)
	writeFile(t, filepath.Join(dir, "keys", "old.pub"), old.PublicKeyPEM)
	abs := filepath.Join(t.TempDir(), "cur.pub")
	writeFile(t, abs, cur.PublicKeyPEM)
	path := filepath.Join(dir, "policy.json")
	writePolicy(t, path, rule{Repository: "r.example/app", Keys: []string{"keys/old.pub", abs, string(inline.PublicKeyPEM)}})
	// Loaded from another working directory: the relative path is the
	// policy file's.
	t.Chdir(t.TempDir())
	p, err := sigpolicy.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := p.Rule("r.example/app")
	if len(r.Keys) != 3 {
		t.Fatalf("%d keys, want 3", len(r.Keys))
	}
	if !r.Keys[0].(*ecdsa.PublicKey).Equal(old.Key.Public()) || !inline.Key.Public().(*ecdsa.PublicKey).Equal(r.Keys[2]) {
		t.Errorf("keys out of order")
	}
	if k, ok := r.Keys[1].(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(cur.Key.Public()) {
		t.Errorf("keys[1] is not the Ed25519 key")
	}
}

func TestInvalid(t *testing.T) {
	k := pemOf(t)
	priv := "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n"
	many := make([]rule, sigpolicy.MaxRules+1)
	for i := range many {
		many[i] = rule{Repository: fmt.Sprintf("r.example/app%d", i), Keys: []string{k}}
	}
	seventeen := make([]string, sigpolicy.MaxKeysPerRule+1)
	for i := range seventeen {
		seventeen[i] = k
	}
	long := "r.example/" + strings.Repeat("A", 300)
	for _, c := range []struct {
		name  string
		raw   string // used when set
		rules []rule
		want  []string
	}{
		{name: "bad JSON", raw: "{\"rules\": [\n{\"repository\": }]}", want: []string{"invalid JSON at line 2"}},
		{name: "not an object", raw: "[]", want: []string{"invalid JSON"}},
		{name: "trailing data", raw: `{"rules":[{"repository":"r.example/a","keys":[` + mustJSON(k) + `]}]} {}`, want: []string{"data after"}},
		{name: "unknown field", raw: `{"rules":[{"repository":"r.example/a","keys":[` + mustJSON(k) + `],"moed":"warn"}]}`, want: []string{"unknown field", "moed"}},
		{name: "long unknown field", raw: `{"rules":[{"` + strings.Repeat("x", 500) + `":1}]}`, want: []string{"unknown field", "…"}},
		{name: "long missing key path", rules: []rule{{Repository: "r.example/a", Keys: []string{strings.Repeat("k", 200) + ".pub"}}}, want: []string{"rules[0]", "bytes)", "no such file"}},
		{name: "no rules", raw: `{"rules":[]}`, want: []string{"no rules"}},
		{name: "unknown mode", rules: []rule{{Repository: "r.example/a", Keys: []string{k}}, {Repository: "r.example/b", Keys: []string{k}, Mode: "audit"}}, want: []string{"rules[1]", `mode "audit"`}},
		{name: "empty pattern", rules: []rule{{Keys: []string{k}}}, want: []string{"rules[0]", "repository is empty"}},
		{name: "inner star", rules: []rule{{Repository: "r.example/*/app", Keys: []string{k}}}, want: []string{"rules[0]", "only allowed once, at the end"}},
		{name: "question mark", rules: []rule{{Repository: "r.example/app?", Keys: []string{k}}}, want: []string{"rules[0]", "'?'"}},
		{name: "uppercase", rules: []rule{{Repository: "r.example/App", Keys: []string{k}}}, want: []string{"rules[0]", "repository"}},
		{name: "tag", rules: []rule{{Repository: "r.example/app:v2", Keys: []string{k}}}, want: []string{"rules[0]", "has a tag"}},
		{name: "glob after tag colon", rules: []rule{{Repository: "r.example/app:*", Keys: []string{k}}}, want: []string{"rules[0]", "not a repository prefix"}},
		{name: "long pattern quoted short", rules: []rule{{Repository: long, Keys: []string{k}}}, want: []string{"rules[0]", "bytes)"}},
		{name: "duplicate", rules: []rule{{Repository: "r.example/*", Keys: []string{k}}, {Repository: "r.example/*", Keys: []string{k}}}, want: []string{"rules[1]", "already rules[0]"}},
		{name: "no keys", rules: []rule{{Repository: "r.example/a"}}, want: []string{"rules[0]", "no keys"}},
		{name: "missing key file", rules: []rule{{Repository: "r.example/a", Keys: []string{"nope.pub"}}}, want: []string{"rules[0]", "keys[0]", "nope.pub", "no such file"}},
		{name: "private key", rules: []rule{{Repository: "r.example/a", Keys: []string{k, priv}}}, want: []string{"rules[0]", "keys[1] (inline PEM)", `"PRIVATE KEY"`}},
		{name: "not PEM file", rules: []rule{{Repository: "r.example/a", Keys: []string{"garbage.pub"}}}, want: []string{"rules[0]", "keys[0] (file", "not a PEM block"}},
		{name: "too many keys", rules: []rule{{Repository: "r.example/a", Keys: seventeen}}, want: []string{"rules[0]", "17 keys, at most 16"}},
		{name: "too many rules", rules: many, want: []string{"257 rules, at most 256"}},
		{name: "bad signature repository", rules: []rule{{Repository: "r.example/a", Keys: []string{k}, SignatureRepository: "r.example/sigs:latest"}}, want: []string{"rules[0]", "signature_repository"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "garbage.pub"), []byte("hello\n"))
			path := filepath.Join(dir, "policy.json")
			if c.raw != "" {
				writeFile(t, path, []byte(c.raw))
			} else {
				writePolicy(t, path, c.rules...)
			}
			p, err := sigpolicy.Load(path)
			if err == nil {
				t.Fatalf("Load = %v, want an error", p)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if len(err.Error()) > 400 {
				t.Errorf("error is %d bytes: %s", len(err.Error()), err)
			}
		})
	}
}

func TestTooMuchKeyMaterial(t *testing.T) {
	dir := t.TempDir()
	var pems []byte
	for range sigpolicy.MaxKeysPerRule {
		pems = append(pems, sigtest.NewSigner(t).PublicKeyPEM...)
	}
	writeFile(t, filepath.Join(dir, "bundle.pub"), pems)
	path := filepath.Join(dir, "policy.json")
	writePolicy(t, path, rule{Repository: "r.example/a", Keys: []string{"bundle.pub"}})
	if _, err := sigpolicy.Load(path); err != nil {
		t.Fatalf("16 keys in one file: %v", err)
	}
	writePolicy(t, path, rule{Repository: "r.example/a", Keys: []string{"bundle.pub", pemOf(t)}})
	if _, err := sigpolicy.Load(path); err == nil || !strings.Contains(err.Error(), "more than 16 public keys") {
		t.Fatalf("17 keys: %v", err)
	}
}

func TestFileTooLarge(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.json")
	writeFile(t, path, make([]byte, sigpolicy.MaxFile+1))
	if _, err := sigpolicy.Load(path); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Load = %v", err)
	}
}

func mustJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// touch sets a distinct modification time, so a change is seen even on a
// file system with coarse timestamps.
func touch(t *testing.T, path string, n int) {
	t.Helper()
	tm := time.Unix(1_800_000_000+int64(n), 0)
	if err := os.Chtimes(path, tm, tm); err != nil {
		t.Fatal(err)
	}
}

func TestSourceReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.json")
	k1, k2 := sigtest.NewSigner(t), sigtest.NewSigner(t)
	writeFile(t, filepath.Join(dir, "k.pub"), k1.PublicKeyPEM)
	writePolicy(t, path, rule{Repository: "r.example/a", Keys: []string{"k.pub"}})
	touch(t, path, 1)

	var mu sync.Mutex
	var changes []*sigpolicy.Policy
	var errs []error
	s, err := sigpolicy.NewSource(path, sigpolicy.SourceOptions{
		OnChange: func(p *sigpolicy.Policy) { mu.Lock(); changes = append(changes, p); mu.Unlock() },
		OnError:  func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	first := s.Current()
	if changed, err := s.Poll(); changed || err != nil {
		t.Fatalf("Poll with nothing changed = %v, %v", changed, err)
	}

	// A valid change is adopted.
	writePolicy(t, path, rule{Repository: "r.example/a", Keys: []string{"k.pub"}, Mode: "warn"})
	touch(t, path, 2)
	if changed, err := s.Poll(); !changed || err != nil {
		t.Fatalf("Poll after a change = %v, %v", changed, err)
	}
	if r, _ := s.Current().Rule("r.example/a"); r.Mode != sigpolicy.Warn {
		t.Fatalf("mode = %q after reload, want warn", r.Mode)
	}
	good := s.Current()

	// A broken change is reported once and the last good policy kept.
	writeFile(t, path, []byte(`{"rules": [`))
	touch(t, path, 3)
	if changed, err := s.Poll(); changed || err == nil || !strings.Contains(err.Error(), "invalid JSON") {
		t.Fatalf("Poll after a broken change = %v, %v", changed, err)
	}
	if changed, err := s.Poll(); changed || err != nil {
		t.Fatalf("second Poll on the same broken file = %v, %v; want it reported once", changed, err)
	}
	if s.Current() != good {
		t.Fatal("the last good policy was not kept")
	}

	// Fixing it is picked up.
	writePolicy(t, path, rule{Repository: "r.example/*", Keys: []string{"k.pub"}})
	touch(t, path, 4)
	if changed, err := s.Poll(); !changed || err != nil {
		t.Fatalf("Poll after the fix = %v, %v", changed, err)
	}
	if _, ok := s.Current().Rule("r.example/b"); !ok {
		t.Fatal("the fixed policy was not adopted")
	}

	// A key file rotated in place (policy file unchanged) is picked up.
	writeFile(t, filepath.Join(dir, "k.pub"), k2.PublicKeyPEM)
	touch(t, filepath.Join(dir, "k.pub"), 5)
	if changed, err := s.Poll(); !changed || err != nil {
		t.Fatalf("Poll after a key change = %v, %v", changed, err)
	}
	if r, _ := s.Current().Rule("r.example/b"); !r.Keys[0].(*ecdsa.PublicKey).Equal(k2.Key.Public()) {
		t.Fatal("the rotated key was not loaded")
	}

	// A key file removed is a broken change; restoring it recovers.
	kept := s.Current()
	if err := os.Remove(filepath.Join(dir, "k.pub")); err != nil {
		t.Fatal(err)
	}
	if changed, err := s.Poll(); changed || err == nil {
		t.Fatalf("Poll after the key file was removed = %v, %v", changed, err)
	}
	if s.Current() != kept {
		t.Fatal("the last good policy was not kept")
	}
	writeFile(t, filepath.Join(dir, "k.pub"), k1.PublicKeyPEM)
	if changed, err := s.Poll(); !changed || err != nil {
		t.Fatalf("Poll after the key file came back = %v, %v", changed, err)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(changes) != 4 || len(errs) != 2 {
		t.Errorf("%d OnChange and %d OnError calls, want 4 and 2", len(changes), len(errs))
	}
	if first == good {
		t.Error("the first policy was not replaced")
	}
}

func TestNewSourceInvalid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.json")
	writeFile(t, path, []byte("{"))
	if _, err := sigpolicy.NewSource(path, sigpolicy.SourceOptions{}); err == nil {
		t.Fatal("NewSource of an invalid file succeeded")
	}
}

func TestSourceRun(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.json")
	k := pemOf(t)
	writePolicy(t, path, rule{Repository: "r.example/a", Keys: []string{k}})
	touch(t, path, 1)
	changed := make(chan *sigpolicy.Policy, 1)
	s, err := sigpolicy.NewSource(path, sigpolicy.SourceOptions{
		Interval: 10 * time.Millisecond,
		OnChange: func(p *sigpolicy.Policy) { changed <- p },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	writePolicy(t, path, rule{Repository: "r.example/b", Keys: []string{k}})
	touch(t, path, 2)
	select {
	case p := <-changed:
		if _, ok := p.Rule("r.example/b"); !ok || s.Current() != p {
			t.Fatal("Run adopted the wrong policy")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not pick up the change")
	}
}

// A rule names each key as the file does, so a report can say which key
// signed: a key file by its path as written, inline PEM by its entry, and
// the later keys of an entry holding several by number.
func TestKeyNames(t *testing.T) {
	dir := t.TempDir()
	two := pemOf(t) + pemOf(t)
	writeFile(t, filepath.Join(dir, "release.pub"), []byte(two))
	path := filepath.Join(dir, "policy.json")
	writePolicy(t, path, rule{Repository: "r.example/a", Keys: []string{"release.pub", pemOf(t)}})
	p, err := sigpolicy.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := p.Rule("r.example/a")
	want := []string{"release.pub", "release.pub #2", "keys[1] (inline PEM)"}
	if len(r.Keys) != 3 || strings.Join(r.KeyNames, "|") != strings.Join(want, "|") {
		t.Errorf("%d keys named %q, want %q", len(r.Keys), r.KeyNames, want)
	}
}
