package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// dialer connects to the admin API with the operator's or service's
// certificate and remembers why the last handshake failed, so that an
// Unavailable status can say it in one line.
type dialer struct {
	addr       string
	serverName string
	files      mtls.Files

	mu         sync.Mutex
	lastErr    error
	conn       *grpc.ClientConn
	src        *mtls.Source
	serverHost string
}

// client dials (lazily: grpc connects on the first call) and returns the
// admin API client. Missing or unloadable certificate files are exit 3.
func (d *dialer) client() (controlplanev1.AdminServiceClient, error) {
	if d.conn != nil {
		return controlplanev1.NewAdminServiceClient(d.conn), nil
	}
	for _, f := range []struct{ flag, path string }{{"--cert", d.files.Cert}, {"--key", d.files.Key}, {"--ca", d.files.CA}} {
		if f.path == "" {
			return nil, connf("%s is not set (flag, TACTL_%s or the config file): tactl needs a client certificate, its key and the CA bundle", f.flag, strings.ToUpper(strings.TrimPrefix(f.flag, "--")))
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, connf("%s %s: %v", f.flag, f.path, unwrapPathError(err))
		}
	}
	src, err := mtls.NewSource(d.files, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, connf("cannot load the certificate files: %v", err)
	}
	serverName := d.serverName
	if serverName == "" {
		host, _, err := net.SplitHostPort(d.addr)
		if err != nil {
			return nil, usagef("--addr %q: %v", d.addr, err)
		}
		serverName = host
	}
	d.src, d.serverHost = src, serverName
	creds := &recordingCreds{TransportCredentials: mtls.ClientCredentials(src, serverName), d: d}
	conn, err := grpc.NewClient(d.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, usagef("--addr %q: %v", d.addr, err)
	}
	d.conn = conn
	return controlplanev1.NewAdminServiceClient(conn), nil
}

func (d *dialer) close() {
	if d.conn != nil {
		d.conn.Close()
	}
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// explainUnavailable turns an Unavailable status into one line: nothing
// listening, the server's certificate not trusted, ours refused.
func (d *dialer) explainUnavailable(msg string) string {
	d.mu.Lock()
	hs := d.lastErr
	d.mu.Unlock()
	if hs != nil {
		if r, ok := mtls.ServerCertRefusal(hs); ok {
			switch r.Against {
			case mtls.AgainstServerName:
				return fmt.Sprintf("the control plane at %s is not who --server-name says: %s", d.addr, r.Reason)
			default:
				return fmt.Sprintf("the control plane's certificate at %s is not trusted by --ca %s: %s", d.addr, d.files.CA, r.Reason)
			}
		}
		if alert := tlsAlert(hs.Error()); alert != "" {
			return fmt.Sprintf("the control plane at %s refused this client's certificate (%s): %s", d.addr, d.files.Cert, alert)
		}
	}
	if alert := tlsAlert(msg); alert != "" {
		return fmt.Sprintf("the control plane at %s refused this client's certificate (%s): %s", d.addr, d.files.Cert, alert)
	}
	if !strings.Contains(msg, "connection refused") && !strings.Contains(msg, "no such host") {
		// With TLS 1.3 the server judges our certificate after our side
		// of the handshake: the call only sees the connection end. Ask
		// once more and read what the server says.
		if alert := d.probe(); alert != "" {
			return fmt.Sprintf("the control plane at %s refused this client's certificate (%s): %s", d.addr, d.files.Cert, alert)
		}
	}
	switch {
	case strings.Contains(msg, "connection refused"):
		return fmt.Sprintf("cannot reach the control plane at %s: connection refused (is it running, and is --addr its admin address?)", d.addr)
	case strings.Contains(msg, "no such host"):
		return fmt.Sprintf("cannot reach the control plane at %s: no such host", d.addr)
	case strings.Contains(msg, "i/o timeout"):
		return fmt.Sprintf("cannot reach the control plane at %s: connection timed out", d.addr)
	}
	return fmt.Sprintf("the control plane at %s is unavailable: %s", d.addr, msg)
}

// probe completes a TLS handshake with the control plane and reads its
// first bytes: a server that refuses our certificate sends an alert,
// which probe returns ("tls: unknown certificate authority").
func (d *dialer) probe() string {
	if d.src == nil {
		return ""
	}
	m := d.src.Current()
	dialer := &net.Dialer{Timeout: 3 * time.Second}
	conn, err := tls.DialWithDialer(dialer, "tcp", d.addr, &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{m.Certificate}, RootCAs: m.Roots,
		ServerName: d.serverHost, NextProtos: []string{"h2"},
	})
	if err != nil {
		return tlsAlert(err.Error())
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	// The client preface, so an accepting server answers with SETTINGS.
	conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
	_, err = conn.Read(make([]byte, 1))
	if err != nil {
		return tlsAlert(err.Error())
	}
	return ""
}

// tlsAlert finds the alert a server sent ("remote error: tls: bad
// certificate") in an error text.
func tlsAlert(s string) string {
	i := strings.Index(s, "remote error: tls: ")
	if i < 0 {
		return ""
	}
	alert := s[i+len("remote error: "):]
	if j := strings.IndexAny(alert, "\"\n"); j >= 0 {
		alert = alert[:j]
	}
	return strings.TrimSpace(alert)
}

// recordingCreds remembers the last client handshake's error.
type recordingCreds struct {
	credentials.TransportCredentials
	d *dialer
}

func (c *recordingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		c.d.mu.Lock()
		c.d.lastErr = err
		c.d.mu.Unlock()
	}
	return conn, info, err
}

func (c *recordingCreds) Clone() credentials.TransportCredentials {
	return &recordingCreds{TransportCredentials: c.TransportCredentials.Clone(), d: c.d}
}
