package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// bareServer is the floor for the control plane's bookkeeping: an
// AgentService that only holds streams and sends each one message.
type bareServer struct {
	tenantagentv1.UnimplementedAgentServiceServer
	mu      sync.Mutex
	streams []tenantagentv1.AgentService_ConnectServer
	ready   chan struct{}
	want    int
	release chan struct{}
}

func (b *bareServer) Connect(s tenantagentv1.AgentService_ConnectServer) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	b.mu.Lock()
	b.streams = append(b.streams, s)
	if len(b.streams) == b.want {
		close(b.ready)
	}
	b.mu.Unlock()
	<-b.release
	return nil
}

// bareBroadcast opens n mTLS streams to a bare server and times one
// message to each, returning sorted per-stream latencies in seconds.
func bareBroadcast(n int, certs []tls.Certificate, roots *x509.CertPool, certDir string) ([]float64, error) {
	serverCert, err := tls.LoadX509KeyPair(filepath.Join(certDir, "controlplane.pem"), filepath.Join(certDir, "controlplane-key.pem"))
	if err != nil {
		return nil, err
	}
	srvCreds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{serverCert}, ClientCAs: roots, ClientAuth: tls.RequireAndVerifyClientCert})
	bare := &bareServer{ready: make(chan struct{}), want: n, release: make(chan struct{})}
	srv := grpc.NewServer(grpc.Creds(srvCreds))
	tenantagentv1.RegisterAgentServiceServer(srv, bare)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go srv.Serve(lis)
	defer srv.Stop()
	defer close(bare.release)

	received := make([]time.Time, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 200)
	for i := range n {
		sem <- struct{}{}
		creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{certs[i]}, RootCAs: roots, ServerName: "localhost"})
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		stream, err := tenantagentv1.NewAgentServiceClient(conn).Connect(context.Background())
		if err != nil {
			return nil, err
		}
		if err := stream.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Hello{Hello: &tenantagentv1.Hello{}}}); err != nil {
			return nil, err
		}
		<-sem
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := stream.Recv(); err != nil {
				errs <- err
				return
			}
			received[i] = time.Now()
		}()
	}
	select {
	case <-bare.ready:
	case <-time.After(5 * time.Minute):
		return nil, fmt.Errorf("bare server: streams did not all open")
	}
	msg := &tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Refresh{Refresh: &tenantagentv1.RefreshRuntimeImage{
		CommandId: "c-bare", Runtime: "codex", ImageRepository: repo, ImageDigest: digestV2}}}
	t0 := time.Now()
	bare.mu.Lock()
	streams := bare.streams
	bare.mu.Unlock()
	// One goroutine per stream, as the control plane has one writer per
	// session.
	var sends sync.WaitGroup
	for _, s := range streams {
		sends.Add(1)
		go func() { defer sends.Done(); s.Send(msg) }()
	}
	sends.Wait()
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	out := make([]float64, n)
	for i, t := range received {
		out[i] = t.Sub(t0).Seconds()
	}
	sort.Float64s(out)
	return out, nil
}
