// Package journal is the agent's durable memory in --state-dir: every
// command it accepted, how far each container's recreate got, and results
// not yet confirmed by the control plane (the outbox). Every write lands in
// a temporary file that is synced and renamed over the old one, so a crash
// leaves either the old record or the new one, never half of either.
package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// State is where a command is on the agent.
type State string

const (
	Queued   State = "queued"
	Running  State = "running"
	Finished State = "finished"
)

// Record is one accepted command.
type Record struct {
	ID         string    `json:"id"`
	AcceptedAt time.Time `json:"accepted_at"`
	State      State     `json:"state"`
	// Command is the ControlMessage that carried the command (refresh or
	// prefetch), as protobuf JSON.
	Command json.RawMessage `json:"command"`
	// Recreates is each container's recreate, by container name.
	Recreates map[string]docker.RecreateState `json:"recreates,omitempty"`
	// Result is the final result, as protobuf JSON, once finished.
	Result json.RawMessage `json:"result,omitempty"`
	// Confirmed is set when the control plane acknowledged the result.
	Confirmed bool `json:"confirmed,omitempty"`
	// ProgressSeq is the last progress sequence number sent, so that a
	// restarted agent goes on from it (runner.nextSeq).
	ProgressSeq uint64 `json:"progress_seq,omitempty"`
}

// Message decodes the command.
func (r *Record) Message() (*tenantagentv1.ControlMessage, error) {
	m := &tenantagentv1.ControlMessage{}
	return m, protojson.Unmarshal(r.Command, m)
}

// ResultMessage decodes the result, or nil if there is none.
func (r *Record) ResultMessage() (*tenantagentv1.CommandResult, error) {
	if len(r.Result) == 0 {
		return nil, nil
	}
	m := &tenantagentv1.CommandResult{}
	return m, protojson.Unmarshal(r.Result, m)
}

// Encode turns a protobuf message into a field of a Record.
func Encode(m proto.Message) json.RawMessage {
	b, err := protojson.Marshal(m)
	if err != nil {
		panic(err) // our own generated messages always marshal
	}
	return b
}

func (r *Record) clone() *Record {
	c := *r
	c.Recreates = make(map[string]docker.RecreateState, len(r.Recreates))
	for k, v := range r.Recreates {
		c.Recreates[k] = v
	}
	return &c
}

// Journal holds the records of one state directory.
type Journal struct {
	dir     string
	mu      sync.Mutex
	records map[string]*Record
}

// Open loads (creating if needed) the journal in dir/commands.
func Open(stateDir string) (*Journal, error) {
	dir := filepath.Join(stateDir, "commands")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	j := &Journal{dir: dir, records: map[string]*Record{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue // a temporary file a crash left behind
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		var r Record
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("journal record %s: %w", e.Name(), err)
		}
		j.records[r.ID] = &r
	}
	return j, nil
}

// ErrExists is returned by Add for a command ID already journaled.
var ErrExists = errors.New("command already journaled")

// Add journals a new command; it refuses an ID it already has.
func (j *Journal) Add(r *Record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.records[r.ID]; ok {
		return ErrExists
	}
	return j.writeLocked(r)
}

// Update applies fn to a record and writes it.
func (j *Journal) Update(id string, fn func(*Record)) (*Record, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r, ok := j.records[id]
	if !ok {
		return nil, fmt.Errorf("command %s is not in the journal", id)
	}
	next := r.clone()
	fn(next)
	if err := j.writeLocked(next); err != nil {
		return nil, err
	}
	return next.clone(), nil
}

// Get returns a copy of a record.
func (j *Journal) Get(id string) (*Record, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r, ok := j.records[id]
	if !ok {
		return nil, false
	}
	return r.clone(), true
}

// List returns copies of every record, oldest first.
func (j *Journal) List() []*Record {
	j.mu.Lock()
	out := make([]*Record, 0, len(j.records))
	for _, r := range j.records {
		out = append(out, r.clone())
	}
	j.mu.Unlock()
	sort.Slice(out, func(a, b int) bool { return out[a].AcceptedAt.Before(out[b].AcceptedAt) })
	return out
}

// Prune forgets confirmed records accepted before cutoff. IDs are kept for
// that long so a command resent after a long outage is still recognized.
func (j *Journal) Prune(cutoff time.Time) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for id, r := range j.records {
		if r.Confirmed && r.AcceptedAt.Before(cutoff) {
			if err := os.Remove(j.path(id)); err != nil && !os.IsNotExist(err) {
				return err
			}
			delete(j.records, id)
		}
	}
	return nil
}

func (j *Journal) path(id string) string { return filepath.Join(j.dir, id+".json") }

func (j *Journal) writeLocked(r *Record) error {
	if strings.ContainsAny(r.ID, `/\`) || r.ID == "" || strings.HasPrefix(r.ID, ".") {
		return fmt.Errorf("command ID %q cannot name a journal file", r.ID)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := WriteAtomic(j.path(r.ID), b); err != nil {
		return err
	}
	j.records[r.ID] = r.clone()
	return nil
}

// WriteAtomic replaces path with data so that a crash leaves either the
// old file or the new one, never a part: a temporary file beside it
// (named ".<name>.tmp*", which readers of the directory skip), synced,
// renamed over path, and the directory synced.
func WriteAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
