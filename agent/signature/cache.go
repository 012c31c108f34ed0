package signature

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/molecule-ai/tenant-agent/agent/journal"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// CacheFile is the cache's file in the state dir.
const CacheFile = "signatures.json"

// MaxCacheEntries bounds the cache; the oldest verifications go first.
// A host sees a few digests per runtime per release, so this is months.
const MaxCacheEntries = 512

// maxCacheFile bounds what is read of the file: MaxCacheEntries entries
// of bounded fields, with room to spare.
const maxCacheFile = 2 << 20

// Entry is one verified digest.
type Entry struct {
	// Image is "<repository>@sha256:<hex>".
	Image string `json:"image"`
	// Key is the fingerprint ("sha256:<hex>" of the PKIX encoding) of the
	// key that verified it. A hit needs the rule that matches now to hold
	// this key, so removing a key from the policy makes its digests be
	// verified again.
	Key string `json:"key"`
	// SignedBy and SignatureRef are reported again on a hit.
	SignedBy     string    `json:"signed_by"`
	SignatureRef string    `json:"signature_ref"`
	VerifiedAt   time.Time `json:"verified_at"`
}

type cacheFile struct {
	Verified []Entry `json:"verified"`
}

// Cache remembers verified digests in <state-dir>/signatures.json. It is
// an optimization only: a file that cannot be read or parsed is logged
// and replaced at the next store, and a failed write is logged, never
// fatal. A nil *Cache remembers nothing.
type Cache struct {
	path   string
	logger *slog.Logger

	mu      sync.Mutex
	entries map[string]Entry // by Image
}

// OpenCache loads the cache of stateDir, creating the directory if
// needed; only a state dir that cannot be created is an error.
func OpenCache(stateDir string, logger *slog.Logger) (*Cache, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if logger == nil {
		logger = slog.Default()
	}
	c := &Cache{path: filepath.Join(stateDir, CacheFile), logger: logger.With("component", "signature"), entries: map[string]Entry{}}
	entries, err := readCache(c.path)
	if err != nil {
		c.logger.Warn("ignoring the signature cache; digests will be verified again", "file", c.path, "error", err)
	}
	for _, e := range entries {
		c.entries[e.Image] = e
	}
	c.trim()
	return c, nil
}

func readCache(path string) ([]Entry, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCacheFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxCacheFile {
		return nil, fmt.Errorf("larger than %d bytes", maxCacheFile)
	}
	var doc cacheFile
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil {
		return nil, fmt.Errorf("not a signature cache: %s", limits.Truncate(err.Error(), 100))
	}
	// Drop what this agent could not have written.
	return slices.DeleteFunc(doc.Verified, func(e Entry) bool {
		return e.Image == "" || len(e.Image) > limits.ImageRef || len(e.Key) > 100 || len(e.SignedBy) > limits.Message || len(e.SignatureRef) > limits.ImageRef
	}), nil
}

// Lookup returns the entry of image if one of keys (fingerprints)
// verified it.
func (c *Cache) Lookup(image string, keys []string) (Entry, bool) {
	if c == nil {
		return Entry{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[image]
	if !ok || !slices.Contains(keys, e.Key) {
		return Entry{}, false
	}
	return e, true
}

// Store remembers a verification and writes the file.
func (c *Cache) Store(e Entry) {
	if c == nil {
		return
	}
	if e.VerifiedAt.IsZero() {
		e.VerifiedAt = time.Now().UTC()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[e.Image] = e
	c.trim()
	if err := c.writeLocked(); err != nil {
		c.logger.Warn("cannot write the signature cache", "file", c.path, "error", err)
	}
}

// trim drops the oldest entries beyond MaxCacheEntries.
func (c *Cache) trim() {
	if len(c.entries) <= MaxCacheEntries {
		return
	}
	all := slices.SortedFunc(maps.Values(c.entries), byAge)
	for _, e := range all[:len(all)-MaxCacheEntries] {
		delete(c.entries, e.Image)
	}
}

// byAge orders entries oldest first.
func byAge(a, b Entry) int { return a.VerifiedAt.Compare(b.VerifiedAt) }

func (c *Cache) writeLocked() error {
	// Oldest first, so the file reads as a history.
	doc := cacheFile{Verified: slices.SortedFunc(maps.Values(c.entries), byAge)}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return journal.WriteAtomic(c.path, data)
}
