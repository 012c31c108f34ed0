package mtls_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// handshake runs one TLS handshake over loopback TCP between the two
// credentials, then a byte from server to client, which is when a TLS 1.3
// client takes in the session ticket the server sent after the handshake.
// It returns whether the client resumed a session, or the first error.
func handshake(t *testing.T, server, client credentials.TransportCredentials) (resumed bool, err error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	serverErr := make(chan error, 1)
	go func() {
		raw, err := lis.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer raw.Close()
		conn, _, err := server.ServerHandshake(raw)
		if err == nil {
			_, err = conn.Write([]byte{1})
			defer conn.Close()
		}
		serverErr <- err
	}()
	raw, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, info, err := client.ClientHandshake(ctx, "localhost", raw)
	if err == nil {
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = conn.Read(make([]byte, 1))
	}
	if serr := <-serverErr; serr != nil {
		return false, serr
	}
	if err != nil {
		return false, err
	}
	return info.(credentials.TLSInfo).State.DidResume, nil
}

func ticketKeys(b byte) func() [][32]byte {
	return func() [][32]byte { return [][32]byte{{b, 31: b}} }
}

// An agent's credentials resume their last session, on the same server
// and on another one (a restart, a replica) with the same ticket keys;
// one with other keys makes a full handshake.
func TestClientResumesAcrossServersSharingTicketKeys(t *testing.T) {
	p := pkitest.New(t, "acme")
	cpSrc := p.Source(t, "controlplane")
	opts := mtls.ServerOptions{TrustDomain: pkitest.TrustDomain, TicketKeys: ticketKeys(1)}
	first, restarted := mtls.ServerCredentials(cpSrc, opts), mtls.ServerCredentials(cpSrc, opts)
	other := mtls.ServerCredentials(cpSrc, mtls.ServerOptions{TrustDomain: pkitest.TrustDomain, TicketKeys: ticketKeys(2)})
	agent := mtls.ClientCredentials(p.Source(t, "agent-acme"), "localhost")

	for i, step := range []struct {
		server credentials.TransportCredentials
		want   bool
	}{
		{first, false}, {first, true}, {restarted, true},
		{other, false}, // not its keys: a full handshake, and a ticket of its keys
		{other, true},
	} {
		resumed, err := handshake(t, step.server, agent)
		if err != nil {
			t.Fatalf("handshake %d: %v", i, err)
		}
		if resumed != step.want {
			t.Fatalf("handshake %d: resumed %v; want %v", i, resumed, step.want)
		}
	}
	// A clone (gRPC clones credentials per connection) is the same client.
	if resumed, err := handshake(t, other, agent.Clone()); err != nil || !resumed {
		t.Fatalf("clone: resumed %v, %v; want a resumption", resumed, err)
	}
}

// A resumption is checked again: once the identity is denied, its
// ticket is not resumed; the handshake is a full one instead (which Check
// and the calls judge), and the client keeps coming back with a full
// handshake until the denial is lifted.
func TestResumptionOfADeniedIdentityIsRefused(t *testing.T) {
	p := pkitest.New(t, "acme")
	var mu sync.Mutex
	denied := map[string]bool{}
	var checked []bool
	deny := func(on bool) {
		mu.Lock()
		defer mu.Unlock()
		denied["acme"] = on
	}
	server := mtls.ServerCredentials(p.Source(t, "controlplane"), mtls.ServerOptions{TrustDomain: pkitest.TrustDomain, TicketKeys: ticketKeys(1),
		Resume: func(id identity.Identity, _ *x509.Certificate) error {
			mu.Lock()
			defer mu.Unlock()
			checked = append(checked, denied[id.Tenant])
			if denied[id.Tenant] {
				return errors.New("tenant is denied")
			}
			return nil
		}})
	agent := mtls.ClientCredentials(p.Source(t, "agent-acme"), "localhost")
	for i, step := range []struct {
		denied, resumed bool
	}{{false, false}, {false, true}, {true, false}, {true, false}, {false, true}} {
		deny(step.denied)
		resumed, err := handshake(t, server, agent)
		if err != nil {
			t.Fatalf("handshake %d: %v", i, err)
		}
		if resumed != step.resumed {
			t.Fatalf("handshake %d (denied %v): resumed %v; want %v", i, step.denied, resumed, step.resumed)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []bool{false, true, true, false}; !slices.Equal(checked, want) {
		t.Fatalf("Resume saw denied = %v; want %v (every ticket offered)", checked, want)
	}
}
