package mtls

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

func TestRefusalLogCountsWhatItSuppresses(t *testing.T) {
	logs := &testlog.Buffer{}
	now := time.Unix(1000, 0)
	r := newRefusalLog(logs.Logger(t, "cp"), 10*time.Second)
	r.now = func() time.Time { return now }
	a := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 5000}
	b := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 5000}
	bad := errors.New("tls: bad certificate")
	for i := range 7 {
		a.Port = 5000 + i // each redial comes from a new port
		r.refused(a, bad)
	}
	r.refused(b, bad)
	r.refused(b, errors.New("tls: unknown certificate authority"))
	if got := strings.Count(logs.String(), "handshake refused"); got != 3 {
		t.Fatalf("%d lines, want one per address and reason:\n%s", got, logs.String())
	}
	now = now.Add(10 * time.Second)
	r.refused(a, bad)
	if !strings.Contains(logs.String(), "refused_since_last_line=6") {
		t.Errorf("the next line lacks the count of the six suppressed:\n%s", logs.String())
	}
	r.refused(&net.TCPAddr{IP: net.IPv4(10, 0, 0, 3)}, io.EOF)
	if !strings.Contains(logs.String(), "level=DEBUG") {
		t.Errorf("a peer that closed during the handshake is not a warning:\n%s", logs.String())
	}
}
