// Package ticketkeys keeps the control plane's TLS session ticket keys in
// the store, so that an agent's session ticket outlives a restart (a kill
// -9 or a rolling deploy) and is good on every replica: the agents of a
// lost replica resume on the others instead of all making full handshakes
// at once. A new key is added every Rotation; keys are deleted once no
// ticket they encrypted can be used any more. The keys are secrets: they
// are never logged (store.TicketKey's String hides them).
package ticketkeys

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
)

const (
	// Rotation is how often a new key starts encrypting tickets.
	Rotation = 24 * time.Hour
	// TicketLifetime is how long crypto/tls accepts a ticket (its own
	// limit, seven days): a key is kept that long after it stopped
	// encrypting.
	TicketLifetime = 7 * 24 * time.Hour
	// Refresh is how often each replica reads the keys (and adds one when
	// due).
	Refresh = time.Minute
	// activation: a new key encrypts only once it is this old, by when
	// every replica has read it, so that a ticket one replica issues can be
	// decrypted by all.
	activation = 2 * Refresh
)

// Keys is the current key list of one control plane.
type Keys struct {
	store  store.Store
	logger *slog.Logger
	now    func() time.Time
	keys   atomic.Pointer[[][32]byte]
	newest time.Time // of the last refresh; only Run's goroutine uses it
}

// New reads the keys, adding the first one on a new store.
func New(ctx context.Context, s store.Store, logger *slog.Logger) (*Keys, error) {
	if logger == nil {
		logger = slog.Default()
	}
	k := &Keys{store: s, logger: logger.With("component", "ticketkeys"), now: time.Now}
	if err := k.refresh(ctx); err != nil {
		return nil, err
	}
	return k, nil
}

// Current returns the keys for tls.Config.SetSessionTicketKeys: the one
// that encrypts first, then every other one still decrypting.
func (k *Keys) Current() [][32]byte { return *k.keys.Load() }

// Run refreshes the keys every Refresh until ctx ends; a failed refresh
// keeps the keys it had.
func (k *Keys) Run(ctx context.Context) {
	t := time.NewTicker(Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := k.refresh(ctx); err != nil && ctx.Err() == nil {
				k.logger.Warn("cannot refresh the TLS session ticket keys; keeping the current ones", "error", err)
			}
		}
	}
}

func (k *Keys) refresh(ctx context.Context) error {
	now := k.now()
	fresh := store.TicketKey{CreatedAt: now}
	if _, err := rand.Read(fresh.Secret[:]); err != nil {
		return err
	}
	stored, err := k.store.RotateTicketKeys(ctx, fresh, now.Add(-Rotation), now.Add(-Rotation-TicketLifetime-activation))
	if err != nil {
		return err
	}
	if len(stored) == 0 {
		return errors.New("the store returned no TLS session ticket key")
	}
	if stored[0].CreatedAt.After(k.newest) && !k.newest.IsZero() {
		k.logger.Info("new TLS session ticket key", "created_at", stored[0].CreatedAt, "keys", len(stored))
	}
	k.newest = stored[0].CreatedAt
	k.keys.Store(ordered(stored, now))
	return nil
}

// ordered puts first the newest key old enough to encrypt (the newest of
// all if none is: a new store), then the others, newest first.
func ordered(stored []store.TicketKey, now time.Time) *[][32]byte {
	enc := 0
	for i, key := range stored {
		if now.Sub(key.CreatedAt) >= activation {
			enc = i
			break
		}
	}
	out := [][32]byte{stored[enc].Secret}
	for i, key := range stored {
		if i != enc {
			out = append(out, key.Secret)
		}
	}
	return &out
}
