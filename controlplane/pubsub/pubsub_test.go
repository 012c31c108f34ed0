package pubsub

import (
	"errors"
	"testing"
)

func TestPublishSubscribeAndLag(t *testing.T) {
	h := NewHub[string, int](2)
	a := h.Subscribe("a")
	other := h.Subscribe("b")
	h.Publish("a", 1)
	h.Publish("a", 2)
	h.Publish("a", 3) // buffer full: cut off, never blocks
	if got := <-a.C; got != 1 {
		t.Fatalf("got %d, want 1", got)
	}
	<-a.C
	if _, open := <-a.C; open {
		t.Fatal("lagging subscription not closed")
	}
	if !errors.Is(a.Err(), ErrLagged) {
		t.Fatalf("Err = %v, want ErrLagged", a.Err())
	}
	select {
	case v := <-other.C:
		t.Fatalf("key b received %d published for a", v)
	default:
	}
	other.Close()
	other.Close() // idempotent
	if _, open := <-other.C; open {
		t.Fatal("closed subscription still open")
	}
	if other.Err() != nil {
		t.Fatalf("closed by caller: Err = %v, want nil", other.Err())
	}
}
