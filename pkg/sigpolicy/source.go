package sigpolicy

import (
	"context"
	"slices"
	"sync"
	"time"
)

// DefaultInterval is how often a Source looks at its files by default.
const DefaultInterval = 5 * time.Second

// SourceOptions configure a Source.
type SourceOptions struct {
	// Interval is how often Run looks at the files; DefaultInterval when
	// zero or negative.
	Interval time.Duration
	// OnChange, if set, is called with each new valid policy Poll adopts.
	OnChange func(*Policy)
	// OnError, if set, is called when a changed policy does not load; the
	// last good policy stays current. It is called once per change seen,
	// not at every poll while the file stays broken.
	OnError func(error)
}

// Source keeps the current policy of one file, re-reading it when the
// policy file or any key file it names changes modification time or size
// (or appears or disappears). It polls (no file-notification dependency):
// Run polls until its context ends, Poll looks once. A changed policy that
// does not load is reported and ignored: Current keeps returning the last
// good one. Source is safe for concurrent use.
type Source struct {
	path string
	opts SourceOptions

	pollMu  sync.Mutex // serializes Poll
	mu      sync.Mutex
	current *Policy
	seen    []fileStamp // the files of the last load attempted, good or not
}

// NewSource loads path, which must be valid, and returns a Source holding
// it.
func NewSource(path string, opts SourceOptions) (*Source, error) {
	p, files, err := load(path)
	if err != nil {
		return nil, err
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	return &Source{path: path, opts: opts, current: p, seen: files}, nil
}

// Current returns the last good policy; never nil.
func (s *Source) Current() *Policy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// Poll checks the files once and reloads when one changed. It returns
// whether a new policy was adopted and the load error, if the changed
// policy is invalid (then also passed to OnError).
func (s *Source) Poll() (changed bool, err error) {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	s.mu.Lock()
	seen := s.seen
	s.mu.Unlock()
	if !stale(seen) {
		return false, nil
	}
	p, files, err := load(s.path)
	s.mu.Lock()
	s.seen = files
	if err == nil {
		s.current = p
	}
	s.mu.Unlock()
	if err != nil {
		if s.opts.OnError != nil {
			s.opts.OnError(err)
		}
		return false, err
	}
	if s.opts.OnChange != nil {
		s.opts.OnChange(p)
	}
	return true, nil
}

// Run polls every Interval until ctx ends.
func (s *Source) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Poll()
		}
	}
}

// stale reports whether any of files differs from what it was.
func stale(files []fileStamp) bool {
	return slices.ContainsFunc(files, func(f fileStamp) bool {
		now := stamp(f.path)
		return now.exists != f.exists || now.size != f.size || !now.modTime.Equal(f.modTime)
	})
}
