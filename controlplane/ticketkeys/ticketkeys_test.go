package ticketkeys

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/internal/teststore"
)

// Two replicas on one store share the keys; a new key is read by both
// before either encrypts with it; an old one goes once its tickets would
// be refused anyway.
func TestReplicasShareRotatedKeys(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	now := time.Now() // New reads the real clock; the test moves on from it
	clock := func() time.Time { return now }
	a, err := New(ctx, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.now = clock
	b, err := New(ctx, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.now = clock
	first := a.Current()
	if len(first) != 1 || !slices.Equal(b.Current(), first) {
		t.Fatalf("replicas disagree on a new store: %d and %d keys", len(first), len(b.Current()))
	}
	refresh := func(k *Keys) [][32]byte {
		t.Helper()
		if err := k.refresh(ctx); err != nil {
			t.Fatal(err)
		}
		return k.Current()
	}

	now = now.Add(Rotation + time.Hour)
	rotated := refresh(a)
	if len(rotated) != 2 || rotated[0] != first[0] {
		t.Fatal("a new key encrypted before every replica could have read it")
	}
	if !slices.Equal(refresh(b), rotated) {
		t.Fatal("the other replica added a key of its own")
	}
	now = now.Add(activation)
	active := refresh(a)
	if len(active) != 2 || active[0] != rotated[1] || active[1] != first[0] {
		t.Fatal("the new key does not encrypt after activation, or the old one no longer decrypts")
	}
	if !slices.Equal(refresh(b), active) {
		t.Fatal("replicas disagree after activation")
	}
	now = now.Add(TicketLifetime + activation)
	// The key of the last rotation encrypts until the next one is active.
	if kept := refresh(a); len(kept) != 2 || kept[0] != active[0] || slices.Contains(kept, first[0]) {
		t.Fatal("a key past every ticket's lifetime was kept, or the rotation after it is missing")
	}
}
