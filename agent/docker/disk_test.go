package docker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/registry"

	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

// An agent that cannot see Docker's data root (in a container without it
// mounted) skips the free-disk check with one log line saying why, rather
// than refusing every pull.
func TestCheckDiskSkippedWhenDataRootIsNotVisible(t *testing.T) {
	var logs testlog.Buffer
	e := fakeEngine(t, &logs, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/info"):
			w.Write([]byte(`{"DockerRootDir": "/nonexistent/docker-root"}`))
		default: // the image is not present
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"message": "no such image"}`))
		}
	})
	ref := "registry.invalid/molecule-ai/workspace-template-codex@sha256:" + strings.Repeat("a", 64)
	if err := e.CheckDisk(context.Background(), ref, registry.AuthConfig{}, 1<<60); err != nil {
		t.Fatalf("CheckDisk: %v; want the check skipped", err)
	}
	if s := logs.String(); strings.Count(s, "\n") != 1 || !strings.Contains(s, "free-disk check skipped") || !strings.Contains(s, "/nonexistent/docker-root") {
		t.Errorf("want one log line naming the data root and why:\n%s", s)
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 3 << 20: "3.0 MiB", 5 << 30: "5.0 GiB", 1 << 60: "1.0 EiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// fakeEngine is an Engine whose API is served by handle (the version
// ping is answered for it), logging into logs; closed at the test's end.
func fakeEngine(t *testing.T, logs *testlog.Buffer, handle http.HandlerFunc) *Engine {
	t.Helper()
	engineAPI := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/_ping") {
			w.Header().Set("API-Version", "1.41")
			return
		}
		handle(w, r)
	}))
	t.Cleanup(engineAPI.Close)
	e, err := New("tcp://"+engineAPI.Listener.Addr().String(), logs.Logger(t, "docker"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}
