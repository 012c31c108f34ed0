package session

import (
	"errors"
	"testing"
	"time"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

var acme = identity.Identity{ID: "spiffe://td/tenant/acme", Kind: identity.KindAgent, Tenant: "acme"}

func TestFullQueueDisconnectsInsteadOfBlocking(t *testing.T) {
	r := NewRegistry(2)
	s, _ := r.Register(acme, "1", time.Now())
	msg := &tenantagentv1.ControlMessage{}
	for i := 0; i < 2; i++ {
		if err := s.Send(msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Send(msg); !errors.Is(err, ErrSlow) {
		t.Fatalf("third send: %v, want ErrSlow", err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("slow session not closed")
	}
	if !errors.Is(s.Err(), ErrSlow) {
		t.Fatalf("Err = %v", s.Err())
	}
}

func TestSecondConnectionReplacesFirst(t *testing.T) {
	r := NewRegistry(1)
	first, _ := r.Register(acme, "1", time.Now())
	second, replaced := r.Register(acme, "2", time.Now())
	if replaced != first || !errors.Is(first.Err(), ErrReplaced) {
		t.Fatalf("replaced = %v, first.Err = %v", replaced, first.Err())
	}
	if r.Unregister(first) {
		t.Fatal("the replaced session unregistered the new one")
	}
	if r.Get(acme.ID) != second || r.Len() != 1 {
		t.Fatal("the new session is not current")
	}
	if n := r.CloseMatching(func(s *Session) bool { return s.Identity.Tenant == "acme" }, ErrDenied("test")); n != 1 || second.Err() == nil {
		t.Fatalf("CloseMatching closed %d", n)
	}
}

// A command goes down one stream once, whichever paths try to send it;
// a new stream of the agent carries it again.
func TestSendCommandOncePerStream(t *testing.T) {
	r := NewRegistry(8)
	s, _ := r.Register(acme, "1", time.Now())
	msg := &tenantagentv1.ControlMessage{}
	for i, want := range []bool{true, false, false} {
		if sent, err := s.SendCommand("c-1", msg); err != nil || sent != want {
			t.Fatalf("send #%d = %v, %v; want %v", i+1, sent, err, want)
		}
	}
	if sent, _ := s.SendCommand("c-2", msg); !sent {
		t.Error("another command was not sent")
	}
	if n := drain(s); n != 2 {
		t.Errorf("%d messages queued, want 2", n)
	}
	next, _ := r.Register(acme, "1", time.Now())
	if sent, _ := next.SendCommand("c-1", msg); !sent {
		t.Error("a new stream did not carry the command")
	}
}

// A forgotten command (its ack recorded) leaves nothing behind: the
// session keeps no map once it has forgotten every command it carried.
func TestForgetLeavesAnIdleSessionNoMemoryOfItsCommands(t *testing.T) {
	r := NewRegistry(8)
	s, _ := r.Register(acme, "1", time.Now())
	msg := &tenantagentv1.ControlMessage{}
	s.SendCommand("c-1", msg)
	s.SendCommand("c-2", msg)
	s.Forget("c-1")
	if sent, _ := s.SendCommand("c-2", msg); sent {
		t.Error("a command not forgotten was sent again")
	}
	s.Forget("c-2")
	s.Forget("c-3") // never carried: nothing happens
	if s.sent != nil {
		t.Errorf("the session still holds %d command IDs after forgetting them all", len(s.sent))
	}
	if sent, _ := s.SendCommand("c-1", msg); !sent {
		t.Error("a forgotten command was refused")
	}
}

// The queue holds what the writer has not taken, in order, up to its
// bound; taken messages make room again, and Ready has a token whenever
// something was queued since the writer last looked.
func TestQueueKeepsOrderAndMakesRoomAsTheWriterTakes(t *testing.T) {
	r := NewRegistry(3)
	s, _ := r.Register(acme, "1", time.Now())
	msgs := make([]*tenantagentv1.ControlMessage, 5)
	for i := range msgs {
		msgs[i] = &tenantagentv1.ControlMessage{}
	}
	for _, m := range msgs[:3] {
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-s.Ready():
	default:
		t.Fatal("no token after a send")
	}
	for _, want := range msgs[:2] {
		if got, ok := s.Next(); !ok || got != want {
			t.Fatalf("Next = %p, %v; want %p", got, ok, want)
		}
	}
	for _, m := range msgs[3:] {
		if err := s.Send(m); err != nil {
			t.Fatalf("a send after the writer took two: %v", err)
		}
	}
	for _, want := range []*tenantagentv1.ControlMessage{msgs[2], msgs[3], msgs[4]} {
		if got, ok := s.Next(); !ok || got != want {
			t.Fatalf("Next = %p, %v; want %p", got, ok, want)
		}
	}
	if _, ok := s.Next(); ok {
		t.Fatal("Next on an empty queue returned a message")
	}
}

func drain(s *Session) int {
	n := 0
	for _, ok := s.Next(); ok; _, ok = s.Next() {
		n++
	}
	return n
}

// After CloseAll, a stream that registers (one that was being set up
// when the control plane began to shut down) gets a session closed with
// the same cause, and is not registered.
func TestRegisterAfterCloseAllIsClosed(t *testing.T) {
	r := NewRegistry(4)
	before, _ := r.Register(acme, "1", time.Now())
	cause := errors.New("shutting down")
	r.CloseAll(cause)
	if !errors.Is(before.Err(), cause) {
		t.Fatalf("open session: Err = %v, want the cause", before.Err())
	}
	r.Unregister(before)
	after, replaced := r.Register(acme, "1", time.Now())
	if !errors.Is(after.Err(), cause) || replaced != nil || r.Len() != 0 {
		t.Fatalf("registered after CloseAll: Err = %v, replaced %v, %d registered; want closed with the cause, none", after.Err(), replaced, r.Len())
	}
}
