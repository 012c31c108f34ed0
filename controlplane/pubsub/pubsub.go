// Package pubsub fans events out to in-process watchers (admin streams
// following a command, a rollout or the fleet) without ever blocking the
// publisher: a watcher that falls behind is cut off and told so.
package pubsub

import (
	"errors"
	"sync"
)

// ErrLagged is the cause given to a subscription cut off for falling behind.
var ErrLagged = errors.New("watcher fell behind; watch again to re-attach")

// Subscription receives the values published for its key.
type Subscription[V any] struct {
	C    <-chan V
	c    chan V
	once sync.Once
	hub  interface{ remove(*Subscription[V]) }
	err  error
	mu   sync.Mutex
	key  any
}

// Close stops the subscription; C is closed.
func (s *Subscription[V]) Close() { s.hub.remove(s) }

// Err is ErrLagged if the hub cut the subscription off, else nil.
func (s *Subscription[V]) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Hub delivers values by key. The zero key is a valid key.
type Hub[K comparable, V any] struct {
	mu     sync.Mutex
	subs   map[K]map[*Subscription[V]]struct{}
	buffer int
}

// NewHub returns a hub whose subscriptions buffer up to buffer values.
func NewHub[K comparable, V any](buffer int) *Hub[K, V] {
	return &Hub[K, V]{subs: map[K]map[*Subscription[V]]struct{}{}, buffer: buffer}
}

// Subscribe starts receiving the values published for key.
func (h *Hub[K, V]) Subscribe(key K) *Subscription[V] {
	c := make(chan V, h.buffer)
	s := &Subscription[V]{C: c, c: c, hub: h, key: key}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs[key] == nil {
		h.subs[key] = map[*Subscription[V]]struct{}{}
	}
	h.subs[key][s] = struct{}{}
	return s
}

// Publish delivers v to every subscription of key, cutting off any whose
// buffer is full.
func (h *Hub[K, V]) Publish(key K, v V) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[key] {
		select {
		case s.c <- v:
		default:
			s.mu.Lock()
			s.err = ErrLagged
			s.mu.Unlock()
			h.removeLocked(s)
		}
	}
}

// Watched reports whether key has a subscription.
func (h *Hub[K, V]) Watched(key K) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs[key]) > 0
}

// Keys returns every key with a subscription.
func (h *Hub[K, V]) Keys() []K {
	h.mu.Lock()
	defer h.mu.Unlock()
	keys := make([]K, 0, len(h.subs))
	for k := range h.subs {
		keys = append(keys, k)
	}
	return keys
}

func (h *Hub[K, V]) remove(s *Subscription[V]) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.removeLocked(s)
}

func (h *Hub[K, V]) removeLocked(s *Subscription[V]) {
	key := s.key.(K)
	if _, ok := h.subs[key][s]; !ok {
		return
	}
	delete(h.subs[key], s)
	if len(h.subs[key]) == 0 {
		delete(h.subs, key)
	}
	s.once.Do(func() { close(s.c) })
}
