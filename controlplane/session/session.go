// Package session is the registry of connected agents: one session per
// agent identity, each with a bounded send queue. Sending never blocks: an
// agent that does not drain its queue is disconnected, so one stuck agent
// can never hold up a fan-out to the others.
package session

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

var (
	// ErrSlow closes a session whose send queue is full.
	ErrSlow = errors.New("agent is not reading its stream (send queue full); disconnected")
	// ErrReplaced closes a session when the same identity connects again.
	ErrReplaced = errors.New("replaced by a newer connection of the same agent")
	// ErrWriteFailed closes a session whose stream could not be written.
	ErrWriteFailed = errors.New("stream write failed")
)

// Session is one agent's open stream.
type Session struct {
	Identity    identity.Identity
	Serial      string
	ConnectedAt time.Time

	// queue holds what the stream's writer has yet to send, oldest
	// first, at most max; it grows as messages come and is let go once
	// empty, so an idle session keeps no buffer. A writer goroutine runs
	// only while something waits (writing), so an idle stream costs no
	// goroutine of ours: its handler reads.
	queueMu sync.Mutex
	queue   []*tenantagentv1.ControlMessage
	max     int
	writer  Writer
	writing bool
	closed  bool
	stopped bool
	// sendMu is held by the writer while it takes a message and sends
	// it, so that StopWriting can wait for a send in flight.
	sendMu sync.Mutex

	ctx      context.Context
	cancel   context.CancelCauseFunc
	lastSeen atomic.Int64
	epoch    atomic.Int64

	sentMu sync.Mutex
	sent   map[string]struct{} // command IDs this stream carried
}

// Writer is how a session reaches its stream.
type Writer struct {
	// Send sends one message on the stream; the session never calls it
	// from two goroutines at once.
	Send func(*tenantagentv1.ControlMessage) error
	// Last, if set, is sent once the session is closed, in place of
	// whatever was still queued: it asks the agent to end the stream.
	Last *tenantagentv1.ControlMessage
	// Closed, if set, is called once when the session is closed, in the
	// goroutine that closed it (in StartWriting's, if it was closed
	// before).
	Closed func()
}

// maxRemembered bounds the command IDs a session remembers sending; past
// it the memory starts again (a repeat costs the agent a dedupe, no more).
const maxRemembered = 4096

// SendCommand queues the message carrying command id, unless this stream
// already carried it: the command's journaling replica, a doorbell and
// the sweep may all try to deliver it at once. sent is false for a
// repeat.
func (s *Session) SendCommand(id string, msg *tenantagentv1.ControlMessage) (sent bool, err error) {
	s.sentMu.Lock()
	if _, dup := s.sent[id]; dup {
		s.sentMu.Unlock()
		return false, nil
	}
	if s.sent == nil || len(s.sent) >= maxRemembered {
		s.sent = map[string]struct{}{}
	}
	s.sent[id] = struct{}{}
	s.sentMu.Unlock()
	if err := s.Send(msg); err != nil {
		return false, err
	}
	return true, nil
}

// Forget drops command id from what the session remembers carrying, once
// the agent's ack or result for it is recorded: from then on the store
// says it is past SENT, so no delivery reads it as one to send, and a
// stream that lives for weeks does not keep every ID it ever carried (up
// to maxRemembered of them). An idle session keeps no map.
func (s *Session) Forget(id string) {
	s.sentMu.Lock()
	delete(s.sent, id)
	if len(s.sent) == 0 {
		s.sent = nil
	}
	s.sentMu.Unlock()
}

// SetEpoch records the epoch of the cluster's claim on this stream.
func (s *Session) SetEpoch(e int64) { s.epoch.Store(e) }

// Epoch is the cluster's epoch of this stream; 0 until it is claimed.
func (s *Session) Epoch() int64 { return s.epoch.Load() }

// Send queues msg for the agent without blocking. If the queue is full the
// session is closed with ErrSlow.
func (s *Session) Send(msg *tenantagentv1.ControlMessage) error {
	s.queueMu.Lock()
	if s.closed {
		s.queueMu.Unlock()
		return s.Err()
	}
	if len(s.queue) >= s.max {
		s.queueMu.Unlock()
		s.Close(ErrSlow)
		return ErrSlow
	}
	s.queue = append(s.queue, msg)
	start := s.startWriterLocked()
	s.queueMu.Unlock()
	if start {
		go s.write()
	}
	return nil
}

// StartWriting hands the session its stream: what is queued and what
// comes later is sent with w.Send, in order. Until then messages wait.
func (s *Session) StartWriting(w Writer) {
	s.queueMu.Lock()
	s.writer = w
	closed := s.closed
	if closed {
		s.queue = s.lastLocked()
	}
	start := s.startWriterLocked()
	s.queueMu.Unlock()
	if start {
		go s.write()
	}
	if closed && w.Closed != nil {
		w.Closed()
	}
}

// startWriterLocked reports whether a writer goroutine must start: there
// is a stream, something waits and no writer runs.
func (s *Session) startWriterLocked() bool {
	if s.writing || s.stopped || s.writer.Send == nil || len(s.queue) == 0 {
		return false
	}
	s.writing = true
	return true
}

func (s *Session) lastLocked() []*tenantagentv1.ControlMessage {
	if s.writer.Last == nil {
		return nil
	}
	return []*tenantagentv1.ControlMessage{s.writer.Last}
}

// write sends what is queued, oldest first, and returns once nothing
// waits or a send fails (which closes the session).
func (s *Session) write() {
	for {
		s.sendMu.Lock()
		msg, ok := s.Next()
		if !ok {
			s.sendMu.Unlock()
			return
		}
		err := s.writer.Send(msg)
		s.sendMu.Unlock()
		if err != nil {
			s.Close(ErrWriteFailed)
			s.queueMu.Lock()
			s.queue, s.writing = nil, false // the stream is gone: Last too
			s.queueMu.Unlock()
			return
		}
	}
}

// StopWriting drops what is queued, starts no writer again, closes the
// session with cause if it is open (without sending Last: the handler is
// done with the stream) and waits for a send in flight: the stream's
// handler calls it before it returns, as gRPC allows no send after that.
// A send stuck on an agent that stopped reading ends when its connection
// does (Writer.Closed, called by the close, may see to that).
func (s *Session) StopWriting(cause error) {
	s.queueMu.Lock()
	s.stopped, s.queue = true, nil
	s.queueMu.Unlock()
	s.Close(cause)
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
}

// Next takes the oldest queued message, if there is one; with none, the
// writer (if one runs) is done.
func (s *Session) Next() (*tenantagentv1.ControlMessage, bool) {
	s.queueMu.Lock()
	defer s.queueMu.Unlock()
	if len(s.queue) == 0 || s.stopped {
		s.writing = false
		return nil, false
	}
	msg := s.queue[0]
	s.queue[0] = nil
	if s.queue = s.queue[1:]; len(s.queue) == 0 {
		s.queue = nil // the buffer goes with the burst that grew it
	}
	return msg, true
}

// Done is closed when the session is closed.
func (s *Session) Done() <-chan struct{} { return s.ctx.Done() }

// Err is why the session was closed, or nil while it is open.
func (s *Session) Err() error {
	if s.ctx.Err() == nil {
		return nil
	}
	return context.Cause(s.ctx)
}

// Close ends the session; the first cause wins. What is still queued is
// dropped for the writer's Last, and the writer's Closed is called.
func (s *Session) Close(cause error) {
	s.queueMu.Lock()
	if s.closed {
		s.queueMu.Unlock()
		return
	}
	s.closed = true
	s.cancel(cause)
	if !s.stopped {
		s.queue = s.lastLocked()
	}
	start := s.startWriterLocked()
	closed := s.writer.Closed
	s.queueMu.Unlock()
	if start {
		go s.write()
	}
	if closed != nil {
		closed()
	}
}

// Touch records that the agent sent something.
func (s *Session) Touch(now time.Time) { s.lastSeen.Store(now.UnixNano()) }

// LastSeen is when the agent last sent something.
func (s *Session) LastSeen() time.Time { return time.Unix(0, s.lastSeen.Load()) }

// Registry holds the open sessions, keyed by SPIFFE ID.
type Registry struct {
	queueSize int
	mu        sync.RWMutex
	sessions  map[string]*Session
	// closed, once set (CloseAll), closes every session registered
	// after.
	closed error
}

// NewRegistry returns a registry whose sessions queue up to queueSize
// messages.
func NewRegistry(queueSize int) *Registry {
	return &Registry{queueSize: queueSize, sessions: map[string]*Session{}}
}

// Register opens a session for id. A session the same identity already
// had is closed with ErrReplaced and returned.
func (r *Registry) Register(id identity.Identity, serial string, now time.Time) (s *Session, replaced *Session) {
	ctx, cancel := context.WithCancelCause(context.Background())
	s = &Session{Identity: id, Serial: serial, ConnectedAt: now, max: r.queueSize, ctx: ctx, cancel: cancel}
	s.Touch(now)
	r.mu.Lock()
	if r.closed != nil {
		r.mu.Unlock()
		s.Close(r.closed)
		return s, nil
	}
	replaced = r.sessions[id.ID]
	r.sessions[id.ID] = s
	r.mu.Unlock()
	if replaced != nil {
		replaced.Close(ErrReplaced)
	}
	return s, replaced
}

// Unregister removes s if it is still the identity's current session, and
// reports whether it was.
func (r *Registry) Unregister(s *Session) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessions[s.Identity.ID] != s {
		return false
	}
	delete(r.sessions, s.Identity.ID)
	return true
}

// CloseOlder closes id's session with ErrReplaced if it was claimed with
// an epoch below epoch (a newer stream of the agent is on another
// replica), and reports whether it did. A session not yet claimed is
// left alone: its claim settles which stream is newer.
func (r *Registry) CloseOlder(id string, epoch int64) bool {
	s := r.Get(id)
	if s == nil || s.Epoch() == 0 || s.Epoch() >= epoch {
		return false
	}
	s.Close(ErrReplaced)
	return true
}

// Get returns the open session of an identity, or nil.
func (r *Registry) Get(id string) *Session {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.sessions[id]
}

// Online reports whether id has an open session.
func (r *Registry) Online(id string) bool { return r.Get(id) != nil }

// List returns every open session.
func (r *Registry) List() []*Session {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*Session, 0, len(r.sessions))
	for _, s := range r.sessions {
		out = append(out, s)
	}
	return out
}

// Len is the number of open sessions.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.sessions)
}

// CloseMatching closes every session match selects, with cause, and
// returns how many it closed.
func (r *Registry) CloseMatching(match func(*Session) bool, cause error) int {
	n := 0
	for _, s := range r.List() {
		if match(s) {
			s.Close(cause)
			n++
		}
	}
	return n
}

// CloseAll closes every session with cause, and every session
// registered from now on (a stream that was being set up when the
// control plane began to shut down).
func (r *Registry) CloseAll(cause error) {
	r.mu.Lock()
	r.closed = cause
	r.mu.Unlock()
	r.CloseMatching(func(*Session) bool { return true }, cause)
}

// ErrDenied wraps a denial reason as a session close cause.
func ErrDenied(reason string) error { return fmt.Errorf("denied: %s", reason) }
