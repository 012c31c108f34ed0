package docker_test

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

// reachability records what the watcher reports.
type reachability struct {
	mu  sync.Mutex
	got []bool
}

func (r *reachability) report(ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, ok)
}

func (r *reachability) states() []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bool(nil), r.got...)
}

// watch runs the event watcher on the Docker at host with a 10-40 ms
// backoff and returns its log and what it reported.
func watch(t *testing.T, host string) (*testlog.Buffer, *reachability, <-chan struct{}) {
	t.Helper()
	logs := &testlog.Buffer{}
	engine, err := docker.New(host, logs.Logger(t, "agent"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { engine.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r := &reachability{}
	changes := engine.WatchChanges(ctx, docker.Selector{"tenant-agent.test": "events"},
		docker.WatchOptions{MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond, OnReachable: r.report})
	return logs, r, changes
}

func countAbove(log string, levels ...string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		for _, lv := range levels {
			if strings.Contains(l, "level="+lv) {
				n++
			}
		}
	}
	return n
}

// With Docker unreachable the watcher retries with a capped exponential
// backoff and says so once, not once a retry.
func TestEventWatcherBacksOffAndLogsOnce(t *testing.T) {
	logs, r, _ := watch(t, "unix://"+filepath.Join(t.TempDir(), "no-docker.sock"))
	time.Sleep(time.Second)
	log := logs.String()
	retries := strings.Count(log, "Docker event stream failed; retrying")
	if n := countAbove(log, "INFO", "WARN", "ERROR"); n != 1 || !strings.Contains(log, "Docker unreachable") {
		t.Errorf("%d lines at info or above in 1 s, want the one saying Docker is unreachable:\n%s", n, log)
	}
	// 10, 20, 40, 40, ... ms: about 25 attempts in a second; without the
	// backoff's cap it would be 7, without backoff hundreds.
	if retries < 8 || retries > 40 {
		t.Errorf("%d attempts in 1 s with a 10-40 ms backoff", retries)
	}
	if got := r.states(); len(got) != 1 || got[0] {
		t.Errorf("reported %v, want one unreachable", got)
	}
}

// When Docker comes back, that is one line, one report and a change (so a
// health report tells the control plane).
func TestEventWatcherReportsDockerBack(t *testing.T) {
	daemon := registrytest.Docker(t).DaemonHost()
	target, ok := strings.CutPrefix(daemon, "unix://")
	if !ok {
		t.Skipf("Docker at %s, not a unix socket", daemon)
	}
	sock := filepath.Join(t.TempDir(), "docker.sock")
	logs, r, changes := watch(t, "unix://"+sock)
	time.Sleep(300 * time.Millisecond) // unreachable for a while
	proxyUnix(t, sock, target)
	deadline := time.After(10 * time.Second)
	for !strings.Contains(logs.String(), "Docker reachable again") {
		select {
		case <-deadline:
			t.Fatalf("Docker back, not noticed:\n%s", logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	select {
	case <-changes:
	case <-time.After(time.Second):
		t.Error("Docker coming back is not signalled as a change")
	}
	time.Sleep(200 * time.Millisecond)
	log := logs.String()
	if n := countAbove(log, "INFO", "WARN", "ERROR"); n != 2 || strings.Count(log, "Docker reachable again") != 1 {
		t.Errorf("want two lines (unreachable, reachable again):\n%s", log)
	}
	if got := r.states(); len(got) != 2 || got[0] || !got[1] {
		t.Errorf("reported %v, want unreachable then reachable", got)
	}
}

// proxyUnix serves a unix socket at path that forwards to target.
func proxyUnix(t *testing.T, path, target string) {
	t.Helper()
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				d, err := net.Dial("unix", target)
				if err != nil {
					return
				}
				defer d.Close()
				go io.Copy(d, c)
				io.Copy(c, d)
			}()
		}
	}()
}
