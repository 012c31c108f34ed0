// Package sigpolicy is the signature policy of issue #15: which public
// keys must have signed an image repository's digests, and whether a
// missing or bad signature refuses the image (enforce) or is only
// reported (warn). It reads and validates the policy file and keeps it
// current (Source); it does not verify anything itself (see
// pkg/sigverify); the agent's agent/signature applies it.
//
// # File format
//
// A JSON object with one field, "rules", a list of 1 to MaxRules rules:
//
//	{
//	  "rules": [
//	    {
//	      "repository": "registry.example/molecule-ai/*",
//	      "keys": ["keys/release-2026.pub", "keys/release-2027.pub"],
//	      "mode": "enforce"
//	    },
//	    {
//	      "repository": "registry.example/molecule-ai/workspace-template-codex",
//	      "keys": ["-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE...\n-----END PUBLIC KEY-----\n"],
//	      "mode": "warn",
//	      "signature_repository": "registry.example/molecule-ai/signatures"
//	    }
//	  ]
//	}
//
// Unknown fields, anything after the object, and an empty rule list are
// errors. A rule's fields:
//
//   - "repository" (required): the pattern, see Patterns.
//   - "keys" (required, 1 to MaxKeysPerRule entries): each entry is either
//     inline PEM (an entry containing "-----BEGIN") or the path of a PEM
//     file, relative paths being relative to the directory of the policy
//     file. Every entry is parsed with sigverify.ParsePublicKeys (PKIX
//     "PUBLIC KEY" blocks, what cosign.pub holds: ECDSA P-256, Ed25519, RSA
//     ≥ 2048 bits); an entry may hold several blocks, and the rule's keys
//     are all of them, in order, at most MaxKeysPerRule in all. Several
//     keys are for rotation: a signature by any one of them is accepted.
//     A key file is at most MaxKeyFile bytes.
//   - "mode": "enforce" (the default when omitted) or "warn".
//   - "signature_repository" (optional): where the sha256-<hex>.sig
//     manifests are (cosign's COSIGN_REPOSITORY); by default the image's
//     own repository. It must be a plain repository name.
//
// The file is at most MaxFile bytes. Load validates everything at once,
// key files included, and an error names the rule ("rules[2]", counting
// from 0) and what is wrong, quoting at most 64 bytes of any input.
//
// # Patterns
//
// A pattern is either an exact repository name
// ("registry.example/molecule-ai/workspace-template-codex"), which matches
// that string only, or a prefix followed by a single trailing "*"
// ("registry.example/molecule-ai/*", "registry.example/molecule-ai/workspace-*"),
// which matches every repository starting with the prefix. The "*" matches
// any sequence of characters, "/" included, so "registry.example/team/*"
// also matches "registry.example/team/sub/app" (the same prefix semantics
// as the agent's --allow-repos entries ending in "/"). A bare "*" matches
// every repository (a catch-all rule). No other wildcard exists: a "*"
// anywhere but at the end, "?", "[" or "\" is refused, as is anything
// that is not a valid repository name once the "*" is replaced by a
// letter (uppercase, a tag, a digest). Repositories are compared as
// written, byte for byte: no normalization ("docker.io/library/" is not
// added).
//
// # Precedence
//
// Policy.Rule returns the most specific matching rule: an exact pattern
// beats every glob, and among globs the longer prefix wins. The same
// pattern may not appear twice in a file, so two different matching globs
// always have different prefix lengths and there are no ties; the
// deterministic fallback, were one possible, is the rule earlier in the
// file. With no matching rule, Rule reports false: the caller must then
// refuse the image when verification is on.
package sigpolicy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/molecule-ai/tenant-agent/pkg/imageref"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
	"github.com/molecule-ai/tenant-agent/pkg/sigverify"
)

// Bounds on a policy.
const (
	// MaxFile bounds the policy file.
	MaxFile = 1 << 20
	// MaxRules bounds the rules of a policy.
	MaxRules = 256
	// MaxKeysPerRule bounds the key entries of a rule, and the public keys
	// they hold in all.
	MaxKeysPerRule = 16
	// MaxKeyFile bounds one key file.
	MaxKeyFile = 64 << 10
)

// Mode says what a missing or bad signature does.
type Mode string

const (
	// Enforce refuses the image.
	Enforce Mode = "enforce"
	// Warn adopts the image and reports the failure.
	Warn Mode = "warn"
)

// Rule is one validated rule.
type Rule struct {
	// Index is the rule's position in the file, from 0.
	Index int
	// Pattern is the "repository" pattern as written.
	Pattern string
	// Keys are the rule's public keys, in the order of the file.
	Keys sigverify.Keys
	// KeyNames name Keys[i] as the policy does, for reports: the file
	// path as written ("keys/release-2027.pub") or "keys[1] (inline PEM)",
	// with " #2" for the second key of an entry holding several.
	KeyNames []string
	// Mode is Enforce or Warn.
	Mode Mode
	// SignatureRepository is where signatures are, "" for the image's own
	// repository.
	SignatureRepository string

	prefix string // the literal part of a glob
	glob   bool
}

// String names the rule for error messages: `rules[2] "pattern"`.
func (r Rule) String() string {
	return fmt.Sprintf("rules[%d] %s", r.Index, limits.Quoted(r.Pattern))
}

// Glob reports whether the rule's pattern ends in "*".
func (r Rule) Glob() bool { return r.glob }

// Matches reports whether the rule's pattern matches repository.
func (r Rule) Matches(repository string) bool {
	if r.glob {
		return strings.HasPrefix(repository, r.prefix)
	}
	return repository == r.Pattern
}

// Options returns the sigverify options the rule implies
// (SignatureRepository); the caller adds keychain and transport.
func (r Rule) Options() sigverify.Options {
	return sigverify.Options{SignatureRepository: r.SignatureRepository}
}

// Policy is a loaded, validated policy. It is immutable.
type Policy struct {
	// Path is the file it was loaded from.
	Path  string
	rules []Rule
	files []fileStamp // the policy file and key files read, for Source
}

// Rules returns a copy of the rules in file order.
func (p *Policy) Rules() []Rule {
	return append([]Rule(nil), p.rules...)
}

// Rule returns the most specific rule matching repository (see the
// package doc), or false when none matches.
func (p *Policy) Rule(repository string) (Rule, bool) {
	best := -1
	for i, r := range p.rules {
		if !r.Matches(repository) {
			continue
		}
		if best < 0 || moreSpecific(r, p.rules[best]) {
			best = i
		}
	}
	if best < 0 {
		return Rule{}, false
	}
	return p.rules[best], true
}

// moreSpecific reports whether a beats b; equal specificity keeps b (the
// earlier rule).
func moreSpecific(a, b Rule) bool {
	if a.glob != b.glob {
		return !a.glob
	}
	return a.glob && len(a.prefix) > len(b.prefix)
}

// fileStamp is what Source compares to see a file changed.
type fileStamp struct {
	path    string
	exists  bool
	size    int64
	modTime time.Time
}

func stamp(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{path: path}
	}
	return fileStamp{path: path, exists: true, size: fi.Size(), modTime: fi.ModTime()}
}

type fileJSON struct {
	Rules []ruleJSON `json:"rules"`
}

type ruleJSON struct {
	Repository          string   `json:"repository"`
	Keys                []string `json:"keys"`
	Mode                string   `json:"mode"`
	SignatureRepository string   `json:"signature_repository"`
}

// Load reads and validates the policy file at path and every key file it
// names.
func Load(path string) (*Policy, error) {
	p, _, err := load(path)
	return p, err
}

// load also returns the stamps of the files it looked at, so a Source can
// tell when a broken policy may have been fixed.
func load(path string) (*Policy, []fileStamp, error) {
	files := []fileStamp{stamp(path)} // before reading: a later change is seen at the next poll
	data, err := readBounded(path, MaxFile)
	if err != nil {
		return nil, files, fmt.Errorf("signature policy: %w", err)
	}
	p := &Policy{Path: path}
	var doc fileJSON
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, files, fmt.Errorf("signature policy %s: %s", path, jsonError(data, err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, files, fmt.Errorf("signature policy %s: data after the JSON object", path)
	}
	switch {
	case len(doc.Rules) == 0:
		return nil, files, fmt.Errorf("signature policy %s: no rules (want {\"rules\": [...]})", path)
	case len(doc.Rules) > MaxRules:
		return nil, files, fmt.Errorf("signature policy %s: %d rules, at most %d", path, len(doc.Rules), MaxRules)
	}
	dir := filepath.Dir(path)
	seen := make(map[string]int, len(doc.Rules))
	for i, rj := range doc.Rules {
		r, keyFiles, err := parseRule(i, rj, dir)
		files = append(files, keyFiles...)
		if err != nil {
			return nil, files, fmt.Errorf("signature policy %s: rules[%d]: %w", path, i, err)
		}
		if j, dup := seen[r.Pattern]; dup {
			return nil, files, fmt.Errorf("signature policy %s: rules[%d]: repository %s is already rules[%d]'s", path, i, limits.Quoted(r.Pattern), j)
		}
		seen[r.Pattern] = i
		p.rules = append(p.rules, r)
	}
	p.files = files
	return p, files, nil
}

func parseRule(i int, rj ruleJSON, dir string) (Rule, []fileStamp, error) {
	r := Rule{Index: i, Pattern: rj.Repository}
	var err error
	if r.prefix, r.glob, err = parsePattern(rj.Repository); err != nil {
		return r, nil, err
	}
	switch Mode(rj.Mode) {
	case "", Enforce:
		r.Mode = Enforce
	case Warn:
		r.Mode = Warn
	default:
		return r, nil, fmt.Errorf("mode %s: want \"enforce\" or \"warn\"", limits.Quoted(rj.Mode))
	}
	if rj.SignatureRepository != "" {
		if err := imageref.ValidateRepository(rj.SignatureRepository); err != nil {
			return r, nil, fmt.Errorf("signature_repository: %w", err)
		}
		r.SignatureRepository = rj.SignatureRepository
	}
	switch {
	case len(rj.Keys) == 0:
		return r, nil, errors.New("no keys")
	case len(rj.Keys) > MaxKeysPerRule:
		return r, nil, fmt.Errorf("%d keys, at most %d", len(rj.Keys), MaxKeysPerRule)
	}
	var files []fileStamp
	for k, entry := range rj.Keys {
		var data []byte
		what := fmt.Sprintf("keys[%d] (inline PEM)", k)
		name := what
		if strings.Contains(entry, "-----BEGIN") {
			data = []byte(entry)
		} else {
			if entry == "" {
				return r, files, fmt.Errorf("keys[%d] is empty: want a PEM file path or inline PEM", k)
			}
			p := entry
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			what = fmt.Sprintf("keys[%d] (file %s)", k, limits.Quoted(p))
			name = limits.Truncate(entry, limits.Quote)
			files = append(files, stamp(p))
			if data, err = readBounded(p, MaxKeyFile); err != nil {
				return r, files, fmt.Errorf("keys[%d]: %w", k, err)
			}
		}
		keys, err := sigverify.ParsePublicKeys(data)
		if err != nil {
			return r, files, fmt.Errorf("%s: %w", what, err)
		}
		if len(r.Keys)+len(keys) > MaxKeysPerRule {
			return r, files, fmt.Errorf("%s: more than %d public keys in the rule", what, MaxKeysPerRule)
		}
		r.Keys = append(r.Keys, keys...)
		for b := range keys {
			if b == 0 {
				r.KeyNames = append(r.KeyNames, name)
			} else {
				r.KeyNames = append(r.KeyNames, fmt.Sprintf("%s #%d", name, b+1))
			}
		}
	}
	return r, files, nil
}

// parsePattern validates a repository pattern and returns its literal
// prefix and whether it is a glob.
func parsePattern(pat string) (prefix string, glob bool, err error) {
	if pat == "" {
		return "", false, errors.New("repository is empty: want a repository or a prefix ending in \"*\"")
	}
	if i := strings.IndexAny(pat, "?[]\\"); i >= 0 {
		return "", false, fmt.Errorf("repository %s: %q is not allowed; the only wildcard is a trailing \"*\"", limits.Quoted(pat), pat[i])
	}
	prefix, glob = strings.CutSuffix(pat, "*")
	if strings.Contains(prefix, "*") {
		return "", false, fmt.Errorf("repository %s: \"*\" is only allowed once, at the end", limits.Quoted(pat))
	}
	if !glob {
		if err := imageref.ValidateRepository(pat); err != nil {
			return "", false, fmt.Errorf("repository: %w", err)
		}
		return pat, false, nil
	}
	// A prefix is valid when some repository starts with it: try it with a
	// letter in place of the "*".
	if err := imageref.ValidateRepository(prefix + "x"); err != nil {
		return "", false, fmt.Errorf("repository %s is not a repository prefix followed by \"*\": %w", limits.Quoted(pat), err)
	}
	return prefix, true, nil
}

func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		// The path may come from the policy file: quote it bounded.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("open %s: %w", limits.Quoted(path), err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", limits.Quoted(path), err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", limits.Quoted(path), max)
	}
	return data, nil
}

// jsonError says where a JSON error is, by line, without repeating input.
func jsonError(data []byte, err error) string {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
	}
	if off < 0 || off > int64(len(data)) {
		return "invalid JSON: " + limits.Truncate(err.Error(), maxJSONError)
	}
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	return fmt.Sprintf("invalid JSON at line %d: %s", line, limits.Truncate(err.Error(), maxJSONError))
}

// maxJSONError bounds the decoder's message, which may repeat an unknown
// field's name: `json: unknown field "` and 64 bytes of it.
const maxJSONError = 100
