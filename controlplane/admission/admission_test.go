package admission

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

func TestReconnectsAdmitABurstThenOnePerInterval(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	r := NewReconnects(2, 10*time.Second, nil)
	r.now = func() time.Time { return now }
	acme, globex := identity.Identity{ID: "spiffe://td/tenant/acme"}, identity.Identity{ID: "spiffe://td/tenant/globex"}
	for i := range 2 {
		if err := r.Admit(context.Background(), acme); err != nil {
			t.Fatalf("burst attempt %d: %v", i, err)
		}
	}
	err := r.Admit(context.Background(), acme)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third attempt: %v; want ResourceExhausted", err)
	}
	if err := r.Admit(context.Background(), globex); err != nil {
		t.Fatalf("another identity was limited: %v", err)
	}
	now = now.Add(5 * time.Second)
	if err := r.Admit(context.Background(), acme); err == nil {
		t.Fatal("admitted before the interval passed")
	}
	// Refused attempts did not push the next slot back.
	now = now.Add(5 * time.Second)
	if err := r.Admit(context.Background(), acme); err != nil {
		t.Fatalf("after one interval: %v", err)
	}
	if r.Refused() != 2 {
		t.Fatalf("refused %d; want 2", r.Refused())
	}
}

func TestLimitListenerClosesConnectionsOverTheCap(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	l := LimitListener(inner, 1, func() { refused++ })
	defer l.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	first, _ := net.Dial("tcp", inner.Addr().String())
	defer first.Close()
	a := <-accepted
	second, _ := net.Dial("tcp", inner.Addr().String())
	defer second.Close()
	second.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := second.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a connection over the cap was not closed: %v", err)
	}
	a.Close()
	a.Close() // closing twice frees one slot, not two
	third, _ := net.Dial("tcp", inner.Addr().String())
	defer third.Close()
	select {
	case <-accepted:
	case <-time.After(2 * time.Second):
		t.Fatal("no connection accepted after a slot freed")
	}
	if l.Open() != 1 || refused != 1 {
		t.Fatalf("open %d, refused %d; want 1 and 1", l.Open(), refused)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// Close ends a wait for a handshake slot however long it was to be (the
// control plane shutting down must not wait for the queue), and later
// waits at once.
func TestCloseEndsWaitsForAHandshakeSlot(t *testing.T) {
	h := NewHandshakes(1, time.Hour, time.Second, nil, nil)
	h.slots <- struct{}{} // every slot taken
	got := make(chan bool)
	go func() { got <- h.acquire(h.slots, time.Hour) }()
	for h.queued.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	h.Close()
	if <-got {
		t.Fatal("a wait ended by Close took a slot")
	}
	if h.acquire(h.slots, time.Hour) {
		t.Fatal("a wait after Close took a slot")
	}
}
