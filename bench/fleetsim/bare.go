package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// bareServer is the floor for the control plane's bookkeeping: an
// AgentService that only holds streams and sends each one message, then
// (on exchange) goes through one command's messages with each, and
// nothing else.
type bareServer struct {
	tenantagentv1.UnimplementedAgentServiceServer
	mu        sync.Mutex
	streams   []tenantagentv1.AgentService_ConnectServer
	ready     chan struct{}
	want      int
	exchange  chan struct{}
	exchanged sync.WaitGroup
	release   chan struct{}
}

func (b *bareServer) Connect(s tenantagentv1.AgentService_ConnectServer) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	b.mu.Lock()
	b.streams = append(b.streams, s)
	b.exchanged.Add(1)
	if len(b.streams) == b.want {
		close(b.ready)
	}
	b.mu.Unlock()
	select {
	case <-b.exchange:
		err := exchangeServer(s)
		b.exchanged.Done()
		if err != nil {
			return err
		}
	case <-b.release:
		return nil
	}
	<-b.release
	return nil
}

// The messages of one command, as the control plane and an agent trade
// them: the command, its ack, its result, the confirmation.
var (
	bareCommand = &tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Refresh{Refresh: &tenantagentv1.RefreshRuntimeImage{
		CommandId: "c-bare", Runtime: "codex", ImageRepository: repo, ImageDigest: digestV2}}}
	bareAck    = &tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Ack{Ack: &tenantagentv1.CommandAck{CommandId: "c-bare"}}}
	bareReport = &tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Result{Result: &tenantagentv1.CommandResult{
		CommandId: "c-bare", Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED, ImageRef: repo + "@" + digestV2}}}
	bareConfirm = &tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_ResultReceived{ResultReceived: &tenantagentv1.ResultReceived{CommandId: "c-bare"}}}
)

// exchangeServer is the control plane's side of one command, bare.
func exchangeServer(s tenantagentv1.AgentService_ConnectServer) error {
	if err := s.Send(bareCommand); err != nil {
		return err
	}
	for range 2 { // the ack and the result
		if _, err := s.Recv(); err != nil {
			return err
		}
	}
	return s.Send(bareConfirm)
}

// exchangeAgent is the agent's side of one command, bare.
func exchangeAgent(s tenantagentv1.AgentService_ConnectClient) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	for _, m := range []*tenantagentv1.AgentMessage{bareAck, bareReport} {
		if err := s.Send(m); err != nil {
			return err
		}
	}
	_, err := s.Recv()
	return err
}

// bareResult is the floor: per-stream latencies of one broadcast, sorted,
// in seconds, and the bare server's own CPU time for it.
type bareResult struct {
	latencies []float64
	cpu       time.Duration
	// exchangeCPU is the bare server's CPU for one command's messages
	// with every stream (see exchangeServer).
	exchangeCPU time.Duration
	// heapPerStream and stackPerStream are the bare server's heap and
	// stack in use per open stream, as the control plane's are measured;
	// rssPerStream its resident memory per open stream, with no collection
	// forced, as the control plane's RSS per agent is (read two seconds
	// after the streams opened: the bare server handles nothing they send,
	// where the control plane is read after a heartbeat).
	heapPerStream, stackPerStream, rssPerStream int64
}

// bareBroadcast opens n mTLS streams to a bare server, a child process
// (fleetsim -bare-serve) so that its CPU time is its own, and times one
// message to each.
func bareBroadcast(n int, certs []tls.Certificate, roots *x509.CertPool, certDir string) (bareResult, error) {
	var res bareResult
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	child := exec.Command(self, "-bare-serve", "-n", strconv.Itoa(n), "-workdir", certDir)
	child.Stderr = os.Stderr
	child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	toChild, err := child.StdinPipe()
	if err != nil {
		return res, err
	}
	fromChild, err := child.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := child.Start(); err != nil {
		return res, err
	}
	defer func() { toChild.Close(); child.Wait() }()
	lines := bufio.NewScanner(fromChild)
	readLine := func() (string, error) {
		if !lines.Scan() {
			return "", fmt.Errorf("bare server ended: %v", lines.Err())
		}
		return lines.Text(), nil
	}
	addr, err := readLine()
	if err != nil {
		return res, err
	}

	received := make([]time.Time, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{certs[i]}, RootCAs: roots, ServerName: "localhost"})
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return res, err
		}
		defer conn.Close()
		stream, err := tenantagentv1.NewAgentServiceClient(conn).Connect(context.Background())
		if err != nil {
			return res, err
		}
		if err := stream.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Hello{Hello: &tenantagentv1.Hello{}}}); err != nil {
			return res, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := stream.Recv(); err != nil {
				errs <- err
				return
			}
			received[i] = time.Now()
			if err := exchangeAgent(stream); err != nil {
				errs <- err
			}
		}()
	}
	if line, err := readLine(); err != nil || line != "ready" {
		return res, fmt.Errorf("bare server: %q, %v", line, err)
	}
	mem, err := readLine()
	if err != nil {
		return res, err
	}
	if _, err := fmt.Sscan(mem, &res.heapPerStream, &res.stackPerStream, &res.rssPerStream); err != nil {
		return res, fmt.Errorf("bare server memory %q: %w", mem, err)
	}
	t0 := time.Now()
	fmt.Fprintln(toChild, "send")
	cpu, err := readLine()
	if err != nil {
		return res, err
	}
	ns, err := strconv.ParseInt(cpu, 10, 64)
	if err != nil {
		return res, fmt.Errorf("bare server CPU %q: %w", cpu, err)
	}
	res.cpu = time.Duration(ns)
	fmt.Fprintln(toChild, "exchange")
	if cpu, err = readLine(); err != nil {
		return res, err
	}
	if ns, err = strconv.ParseInt(cpu, 10, 64); err != nil {
		return res, fmt.Errorf("bare server exchange CPU %q: %w", cpu, err)
	}
	res.exchangeCPU = time.Duration(ns)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return res, err
	}
	res.latencies = make([]float64, n)
	for i, t := range received {
		res.latencies[i] = t.Sub(t0).Seconds()
	}
	sort.Float64s(res.latencies)
	return res, nil
}

// bareServe is the child of bareBroadcast: it serves a bare server on
// loopback with certDir's control plane certificate, prints its address,
// "ready" once n streams are open, on "send" sends each one message and
// prints its own CPU time for it in nanoseconds (getrusage), and on
// "exchange" goes through one command's messages with each stream and
// prints its CPU time for that.
func bareServe(n int, certDir string) error {
	serverCert, err := tls.LoadX509KeyPair(filepath.Join(certDir, "controlplane.pem"), filepath.Join(certDir, "controlplane-key.pem"))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(certDir, "ca.pem"))
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	srvCreds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{serverCert}, ClientCAs: roots, ClientAuth: tls.RequireAndVerifyClientCert})
	bare := &bareServer{ready: make(chan struct{}), want: n, exchange: make(chan struct{}), release: make(chan struct{})}
	// The floor issue #16 set: 4 KiB buffers and a shared write buffer.
	// The control plane's agent listener has no read buffer of gRPC's
	// own since; FLEETSIM_BARE_READ_BUFFER=0 measures the bare stream
	// that way too.
	readBuffer := 4 << 10
	if b, err := strconv.Atoi(os.Getenv("FLEETSIM_BARE_READ_BUFFER")); err == nil {
		readBuffer = b
	}
	srv := grpc.NewServer(grpc.Creds(srvCreds), grpc.ReadBufferSize(readBuffer), grpc.WriteBufferSize(4<<10), grpc.SharedWriteBuffer(true))
	tenantagentv1.RegisterAgentServiceServer(srv, bare)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	heap0, stack0 := memInUse()
	rss0 := rss(os.Getpid())
	go srv.Serve(lis)
	fmt.Println(lis.Addr())
	<-bare.ready
	fmt.Println("ready")
	time.Sleep(2 * time.Second) // settled; it has nothing to handle
	rss1 := rss(os.Getpid())
	heap1, stack1 := memInUse()
	fmt.Println((heap1-heap0)/int64(n), (stack1-stack0)/int64(n), (rss1-rss0)/int64(n))
	if f := os.Getenv("FLEETSIM_BARE_HEAP"); f != "" {
		if err := writeHeapProfile(f); err != nil {
			return err
		}
	}
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "send" {
		return nil
	}
	msg := bareCommand
	cpu0 := selfCPU()
	// One goroutine per stream, as the control plane has one writer per
	// session.
	var sends sync.WaitGroup
	for _, s := range bare.streams {
		sends.Add(1)
		go func() { defer sends.Done(); s.Send(msg) }()
	}
	sends.Wait()
	time.Sleep(200 * time.Millisecond) // the transport's writers flush after Send returns
	fmt.Println(int64(selfCPU() - cpu0))
	if !in.Scan() || in.Text() != "exchange" {
		return nil
	}
	cpu0 = selfCPU()
	close(bare.exchange)
	bare.exchanged.Wait()
	time.Sleep(200 * time.Millisecond) // the last confirmations flushed
	fmt.Println(int64(selfCPU() - cpu0))
	in.Scan() // until the parent is done
	close(bare.release)
	srv.Stop()
	return nil
}

// writeHeapProfile saves the bare server's heap profile with its streams
// open (FLEETSIM_BARE_HEAP=file, beside the control plane's FLEETSIM_HEAP;
// FLEETSIM_MEM_PROFILE_RATE sets both sampling rates).
func writeHeapProfile(file string) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("heap").WriteTo(f, 0)
}

// memInUse is the heap and stack in use, after a collection (the control
// plane's /metrics gives go_memstats_heap_inuse_bytes, read without one;
// the difference is garbage, which both sides have little of when idle).
func memInUse() (heap, stack int64) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse), int64(m.StackInuse)
}
