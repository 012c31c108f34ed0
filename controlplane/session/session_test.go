package session

import (
	"errors"
	"sync"
	"sync/atomic"
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
// bound; taken messages make room again.
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

// stream records what a session's writer sends; block, if set, holds
// each send until a value comes.
type stream struct {
	mu     sync.Mutex
	sent   []*tenantagentv1.ControlMessage
	block  chan struct{}
	active atomic.Int32 // sends in flight at once
	twice  atomic.Bool  // two sends were in flight at once
}

func (st *stream) send(m *tenantagentv1.ControlMessage) error {
	if st.active.Add(1) > 1 {
		st.twice.Store(true)
	}
	defer st.active.Add(-1)
	if st.block != nil {
		<-st.block
	}
	st.mu.Lock()
	st.sent = append(st.sent, m)
	st.mu.Unlock()
	return nil
}

func (st *stream) got() []*tenantagentv1.ControlMessage {
	st.mu.Lock()
	defer st.mu.Unlock()
	return append([]*tenantagentv1.ControlMessage(nil), st.sent...)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Messages queued before the stream is handed over, and after, go out in
// order, one send at a time, and no writer goroutine stays once the
// queue is empty.
func TestWriterSendsInOrderOneAtATimeAndOnlyWhileMessagesWait(t *testing.T) {
	r := NewRegistry(100)
	s, _ := r.Register(acme, "1", time.Now())
	msgs := make([]*tenantagentv1.ControlMessage, 60)
	for i := range msgs {
		msgs[i] = &tenantagentv1.ControlMessage{}
	}
	for _, m := range msgs[:10] {
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	st := &stream{}
	s.StartWriting(Writer{Send: st.send})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a fan-out queueing while the writer sends
		defer wg.Done()
		for _, m := range msgs[10:] {
			if err := s.Send(m); err != nil {
				t.Error(err)
			}
		}
	}()
	wg.Wait()
	eventually(t, "not everything was sent", func() bool { return len(st.got()) == len(msgs) })
	for i, m := range st.got() {
		if m != msgs[i] {
			t.Fatalf("message %d sent out of order", i)
		}
	}
	if st.twice.Load() {
		t.Fatal("two sends ran at once")
	}
	eventually(t, "the writer did not stop once the queue was empty", func() bool {
		s.queueMu.Lock()
		defer s.queueMu.Unlock()
		return !s.writing
	})
}

// A closed session drops what waits, sends the writer's Last and calls
// Closed once; StopWriting closes the session without Last, waits for the
// send in flight, and nothing is sent after it returns.
func TestCloseSendsLastInPlaceOfTheQueueAndStopWritingWaitsForTheSend(t *testing.T) {
	r := NewRegistry(100)
	s, _ := r.Register(acme, "1", time.Now())
	first, dropped, last := &tenantagentv1.ControlMessage{}, &tenantagentv1.ControlMessage{}, &tenantagentv1.ControlMessage{}
	st := &stream{block: make(chan struct{})}
	var closed atomic.Int32
	s.StartWriting(Writer{Send: st.send, Last: last, Closed: func() { closed.Add(1) }})
	if err := s.Send(first); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first send did not start", func() bool { return st.active.Load() == 1 })
	if err := s.Send(dropped); err != nil {
		t.Fatal(err)
	}
	s.Close(ErrReplaced)
	s.Close(errors.New("a second cause"))
	if err := s.Send(&tenantagentv1.ControlMessage{}); !errors.Is(err, ErrReplaced) {
		t.Fatalf("Send after Close: %v, want the first cause", err)
	}
	if closed.Load() != 1 {
		t.Fatalf("Closed called %d times, want once", closed.Load())
	}
	st.block <- struct{}{} // first goes out
	st.block <- struct{}{} // then Last
	eventually(t, "Last was not sent", func() bool { return len(st.got()) == 2 })
	if got := st.got(); got[0] != first || got[1] != last {
		t.Fatalf("sent %p %p, want first then Last (%p %p)", got[0], got[1], first, last)
	}

	// A send in flight when the handler stops the writer of an open
	// session: StopWriting closes it (Closed is called, so a stuck send
	// can be cut off) without sending Last.
	s2, _ := r.Register(acme, "2", time.Now())
	st2 := &stream{block: make(chan struct{})}
	var closed2 atomic.Int32
	s2.StartWriting(Writer{Send: st2.send, Last: last, Closed: func() { closed2.Add(1) }})
	if err := s2.Send(first); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the send did not start", func() bool { return st2.active.Load() == 1 })
	stopCause := errors.New("stream ended by the agent")
	stopped := make(chan struct{})
	go func() { s2.StopWriting(stopCause); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("StopWriting returned while a send was in flight")
	case <-time.After(50 * time.Millisecond):
	}
	if !errors.Is(s2.Err(), stopCause) || closed2.Load() != 1 {
		t.Fatalf("StopWriting: session error %v, Closed called %d times; want its cause and once", s2.Err(), closed2.Load())
	}
	close(st2.block)
	<-stopped
	time.Sleep(20 * time.Millisecond)
	if got := st2.got(); len(got) != 1 || got[0] != first {
		t.Fatalf("sent %d messages; want only the one in flight (Last must not follow StopWriting)", len(got))
	}
}
