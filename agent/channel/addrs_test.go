package channel

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/molecule-ai/tenant-agent/agent/journal"
	"github.com/molecule-ai/tenant-agent/agent/runner"
	"github.com/molecule-ai/tenant-agent/certs/pki"
	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

func TestParseAddrs(t *testing.T) {
	got, err := ParseAddrs("cp-a.example:7443, 10.0.0.5:7443,[::1]:7443")
	if err != nil || strings.Join(got, "|") != "cp-a.example:7443|10.0.0.5:7443|[::1]:7443" {
		t.Fatalf("ParseAddrs = %q, %v", got, err)
	}
	sixteen := strings.TrimSuffix(strings.Repeat("cp.example:7443,", 16), ",")
	if got, err := ParseAddrs(sixteen); err != nil || len(got) != 16 {
		t.Fatalf("16 addresses: %d, %v", len(got), err)
	}
	long := strings.Repeat("h", 200<<10)
	for _, c := range []struct{ in, want string }{
		{"", "empty: want host:port"},
		{"cp-a.example:7443,,cp-b.example:7443", `entry 2 of 3 is empty in "cp-a.example:7443,,cp-b.example:7443": want host:port`},
		{"cp-a.example:7443,", `entry 2 of 2 is empty`},
		{"cp-a.example:7443,cp-b.example", `entry "cp-b.example": want host:port`},
		{"cp-a.example:", `entry "cp-a.example:": no port`},
		{":7443", `entry ":7443": no host`},
		{"cp-a.example:https", `entry "cp-a.example:https": the port must be a number from 1 to 65535`},
		{"cp-a.example:70000", `the port must be a number`},
		{sixteen + ",cp-17.example:7443", `17 addresses, at most 16 (the 17th is "cp-17.example:7443")`},
		{long, `entry "` + strings.Repeat("h", 64) + `"… (204800 bytes): want host:port`},
	} {
		_, err := ParseAddrs(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseAddrs(%.40q): %v, want %q", c.in, err, c.want)
			continue
		}
		if len(err.Error()) > 300 {
			t.Errorf("ParseAddrs(%.40q): a %d-byte message", c.in, len(err.Error()))
		}
	}
}

// Each round tries every address once, in a shuffled order; a new round
// never starts with the address just tried; over many rounds every
// address comes first.
func TestPickerRounds(t *testing.T) {
	entries := []string{"a:1", "b:1", "c:1"}
	p := newPicker(entries, nil)
	first := map[string]int{}
	prev := ""
	for range 300 {
		seen := map[string]bool{}
		for i := range entries {
			e := p.next()
			if i == 0 {
				first[e]++
			}
			if e == prev {
				t.Fatalf("%s twice in a row", e)
			}
			if seen[e] {
				t.Fatalf("%s twice in one round", e)
			}
			seen[e], prev = true, e
		}
	}
	for _, e := range entries {
		if first[e] < 50 {
			t.Errorf("%s started %d of 300 rounds, want about 100: %v", e, first[e], first)
		}
	}
	// After a welcomed stream a new round starts without the entry left.
	for range 100 {
		left := p.next()
		p.left("")
		if e := p.next(); e == left {
			t.Fatalf("went back to %s after leaving it", e)
		}
	}
	// One address: always that one.
	one := newPicker([]string{"a:1"}, nil)
	for range 5 {
		if e := one.next(); e != "a:1" {
			t.Fatalf("next = %s", e)
		}
		one.left("")
	}
}

// A host's addresses come in a random order, the one just left last; each
// carries the host as its TLS name.
func TestResolveOrder(t *testing.T) {
	lookup := func(_ context.Context, host string) ([]string, error) {
		if host != "cp.test" {
			return nil, errors.New("no such host")
		}
		return []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}, nil
	}
	firsts := map[string]int{}
	for range 200 {
		addrs, err := resolveEntry(context.Background(), lookup, "cp.test:7443", "10.0.0.2:7443")
		if err != nil || len(addrs) != 3 {
			t.Fatalf("resolve: %v, %v", addrs, err)
		}
		if addrs[2].Addr != "10.0.0.2:7443" {
			t.Fatalf("the address left is not last: %s", addrList(addrs))
		}
		for _, a := range addrs {
			if a.ServerName != "cp.test" {
				t.Fatalf("server name %q, want the host as written", a.ServerName)
			}
		}
		firsts[addrs[0].Addr]++
	}
	if firsts["10.0.0.1:7443"] < 50 || firsts["10.0.0.3:7443"] < 50 {
		t.Errorf("first addresses %v, want both about 100", firsts)
	}
	_, err := resolveEntry(context.Background(), lookup, "nowhere.test:7443", "")
	var re *resolveError
	if !errors.As(err, &re) || err.Error() != "cannot resolve nowhere.test:7443: no such host" {
		t.Errorf("resolve nowhere.test: %v", err)
	}
}

// replica is one control plane replica: it welcomes the agent, records
// which replica it was, and asks it to reconnect at once if told to.
type replica struct {
	tenantagentv1.UnimplementedAgentServiceServer
	name      string
	reconnect bool
	conns     chan<- string
}

func (r *replica) Connect(stream grpc.BidiStreamingServer[tenantagentv1.AgentMessage, tenantagentv1.ControlMessage]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := stream.Send(&tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Welcome{Welcome: &tenantagentv1.Welcome{}}}); err != nil {
		return err
	}
	select {
	case r.conns <- r.name:
	default:
	}
	if r.reconnect {
		rc := &tenantagentv1.Reconnect{After: durationpb.New(time.Millisecond), Reason: "replica " + r.name + " shutting down"}
		if err := stream.Send(&tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Reconnect{Reconnect: rc}}); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

// serveReplica serves r with the certificate stem of p on a loopback
// listener and returns its address.
func serveReplica(t *testing.T, p *pkitest.PKI, stem string, r *replica) string {
	t.Helper()
	creds := mtls.ServerCredentials(p.Source(t, stem), mtls.ServerOptions{TrustDomain: pkitest.TrustDomain, Logger: quiet})
	gs := grpc.NewServer(grpc.Creds(creds))
	tenantagentv1.RegisterAgentServiceServer(gs, r)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// startAgent runs the channel on addr until the returned stop is called;
// stop returns the agent's log.
func startAgent(t *testing.T, addr string, creds credentials.TransportCredentials, lookup Lookup) (logs *testlog.Buffer, stop func() string) {
	t.Helper()
	j, err := journal.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	logs = &testlog.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Addr: addr, Creds: creds, Tenant: "acme",
			Inventory: func(context.Context) ([]*tenantagentv1.RuntimeStatus, error) { return nil, nil },
			Runner:    runner.New(runner.Config{Journal: j}), BackoffBase: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond,
			Logger: logs.Logger(t, "agent"), lookup: lookup,
		})
	}()
	var once sync.Once
	stop = func() string {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
		return logs.String()
	}
	t.Cleanup(func() { stop() })
	return logs, stop
}

// waitLine waits until the agent logged a line holding every part, and
// returns it.
func waitLine(t *testing.T, logs *testlog.Buffer, parts ...string) string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		for _, line := range strings.Split(logs.String(), "\n") {
			found := true
			for _, p := range parts {
				found = found && strings.Contains(line, p)
			}
			if found {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line with %q in 5s:\n%s", parts, logs.String())
		}
	}
}

func agentCreds(t *testing.T, p *pkitest.PKI, opts mtls.ClientOptions) credentials.TransportCredentials {
	t.Helper()
	return mtls.ClientCredentialsWith(p.Source(t, "agent-acme"), opts)
}

// waitConn waits for the next welcomed connection and names its replica.
func waitConn(t *testing.T, conns <-chan string, log func() string) string {
	t.Helper()
	select {
	case name := <-conns:
		return name
	case <-time.After(5 * time.Second):
		t.Fatalf("no connection in 5s:\n%s", log())
		return ""
	}
}

// With the first address of the list closed, the agent connects to the
// other; whenever it tried the closed one first, it logged the failure
// naming that address, and the connection names the one chosen.
func TestConnectsPastAClosedAddress(t *testing.T) {
	p := pkitest.New(t, "acme")
	conns := make(chan string, 100)
	open := serveReplica(t, p, "controlplane", &replica{name: "open", conns: conns})
	closed := closedAddr(t)
	creds := agentCreds(t, p, mtls.ClientOptions{ServerName: "localhost"})
	triedClosed := 0
	for range 6 {
		logs, stop := startAgent(t, closed+","+open, creds, nil)
		if name := waitConn(t, conns, stop); name != "open" {
			t.Fatalf("connected to %s", name)
		}
		waitLine(t, logs, `msg="connected to the control plane"`, "address="+open+" peer="+open)
		log := stop()
		if strings.Contains(log, "address="+closed) {
			triedClosed++
			if !strings.Contains(log, `msg="stream to the control plane ended; redialing"`) || !strings.Contains(log, "connection refused") {
				t.Errorf("the closed address's failure is not logged as such:\n%s", log)
			}
		}
	}
	t.Logf("the closed address was tried first in %d of 6 runs", triedClosed)
}

// Over many starts the first connection goes to either replica (a fleet
// spreads), and a replica that asks the agent to reconnect never gets it
// back at once: with two addresses the agent alternates.
func TestSpreadsOverReplicasAndLeavesOnReconnect(t *testing.T) {
	p := pkitest.New(t, "acme")
	conns := make(chan string, 1000)
	a := serveReplica(t, p, "controlplane", &replica{name: "a", conns: conns})
	b := serveReplica(t, p, "controlplane", &replica{name: "b", conns: conns})
	creds := agentCreds(t, p, mtls.ClientOptions{ServerName: "localhost"})
	first := map[string]int{}
	for range 16 {
		_, stop := startAgent(t, a+","+b, creds, nil)
		first[waitConn(t, conns, stop)]++
		stop()
	}
	if first["a"] == 0 || first["b"] == 0 {
		t.Errorf("the first connection of 16 agents went to %v: want both replicas", first)
	}

	ra := serveReplica(t, p, "controlplane", &replica{name: "a", reconnect: true, conns: conns})
	rb := serveReplica(t, p, "controlplane", &replica{name: "b", reconnect: true, conns: conns})
	logs, stop := startAgent(t, ra+","+rb, creds, nil)
	prev := waitConn(t, conns, stop)
	for range 10 {
		next := waitConn(t, conns, stop)
		if next == prev {
			t.Fatalf("told to reconnect by %s, the agent went back to it:\n%s", prev, stop())
		}
		prev = next
	}
	waitLine(t, logs, `msg="control plane asked to reconnect"`, "address="+ra, `reason="replica a shutting down"`)
	waitLine(t, logs, `msg="control plane asked to reconnect"`, "address="+rb, `reason="replica b shutting down"`)
}

// A host name is resolved at the attempt and the certificate checked
// against the name as written: the replica's certificate names only
// cp.test (no IP), so a check against the resolved 127.0.0.1 would fail.
// --control-plane-id is checked as before. A name that does not resolve
// is a failed attempt with its own line; the agent goes on to the next.
func TestHostNameIsTheTLSName(t *testing.T) {
	p := pkitest.New(t, "acme")
	const id = "spiffe://molecule.local/controlplane/test"
	p.Issue(t, "cp-named", pki.Leaf{CommonName: "cp.test", SPIFFEID: id, DNSNames: []string{"cp.test"}, Server: true})
	conns := make(chan string, 100)
	// It asks the agent to reconnect, so the agent also tries the other
	// name (it prefers another address to the one it left).
	addr := serveReplica(t, p, "cp-named", &replica{name: "named", reconnect: true, conns: conns})
	_, port, _ := net.SplitHostPort(addr)
	var mu sync.Mutex
	lookups := map[string]int{}
	lookup := func(ctx context.Context, host string) ([]string, error) {
		mu.Lock()
		lookups[host]++
		mu.Unlock()
		if _, ok := ctx.Deadline(); !ok {
			return nil, errors.New("looked up without a deadline")
		}
		if host == "cp.test" {
			return []string{"127.0.0.1"}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}

	logs, stop := startAgent(t, "nowhere.test:"+port+",cp.test:"+port, agentCreds(t, p, mtls.ClientOptions{ServerID: id}), lookup)
	waitConn(t, conns, stop)
	waitConn(t, conns, stop) // after a Reconnect: nowhere.test came in between
	waitLine(t, logs, `msg="connected to the control plane"`, "address=cp.test:"+port+" peer=127.0.0.1:"+port)
	waitLine(t, logs, `msg="cannot resolve the control plane address; redialing"`, `reason="cannot resolve nowhere.test:`+port+`: lookup nowhere.test: no such host"`, "address=nowhere.test:"+port)
	stop()
	mu.Lock()
	if lookups["cp.test"] < 2 {
		t.Errorf("cp.test looked up %d times for 2 connections: want one lookup per attempt", lookups["cp.test"])
	}
	mu.Unlock()

	// The same replica through its IP fails the name check, naming it.
	logs, _ = startAgent(t, addr, agentCreds(t, p, mtls.ClientOptions{}), nil)
	waitLine(t, logs, "control plane certificate does not match --server-name", "address="+addr)

	// The real resolver: localhost, with a certificate for the name only.
	p.Issue(t, "cp-localhost", pki.Leaf{CommonName: "localhost", DNSNames: []string{"localhost"}, Server: true})
	local := serveReplica(t, p, "cp-localhost", &replica{name: "localhost", conns: conns})
	_, port, _ = net.SplitHostPort(local)
	logs, stop = startAgent(t, "localhost:"+port, agentCreds(t, p, mtls.ClientOptions{}), nil)
	if name := waitConn(t, conns, stop); name != "localhost" {
		t.Fatalf("connected to %s", name)
	}
	waitLine(t, logs, `msg="connected to the control plane"`, "address=localhost:"+port)
}

// Probe with several addresses checks each and names the ones failing.
func TestProbeEveryAddress(t *testing.T) {
	p := pkitest.New(t, "acme")
	open := serveReplica(t, p, "controlplane", &replica{name: "open", conns: make(chan string, 10)})
	closed := closedAddr(t)
	creds := agentCreds(t, p, mtls.ClientOptions{ServerName: "localhost"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Probe(ctx, open+","+open, creds, "ca.pem"); err != nil {
		t.Errorf("two good addresses: %v", err)
	}
	err := Probe(ctx, open+","+closed, creds, "ca.pem")
	if err == nil || !strings.HasPrefix(err.Error(), "1 of 2 addresses failed: "+closed+": ") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("one closed address: %v", err)
	}
	if err := Probe(ctx, open+",", creds, "ca.pem"); err == nil || !strings.Contains(err.Error(), "entry 2 of 2 is empty") {
		t.Errorf("a bad list: %v", err)
	}
}
