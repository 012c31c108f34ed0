// Package registrytest gives Docker tests what this machine lacks: images
// and a registry. It builds the workspace stand-in (internal/workspace) into
// images with no base image, and serves them from a registry on 127.0.0.1,
// which the Docker daemon treats as insecure (plain HTTP) by default.
package registrytest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// T is what these helpers need of a test: testing.TB has it, and so does
// the demo's adapter (cmd demo), which builds the same images outside a test.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
}

// Standalone is a T for programs (make demo, make bench) that use these
// helpers outside a test: Fatal panics with a Failure, which the program
// recovers after running the cleanups.
type Standalone struct {
	mu       sync.Mutex
	cleanups []func()
}

// Failure is what Standalone's Fatal panics with.
type Failure struct{ Msg string }

func (s *Standalone) Helper()                         {}
func (s *Standalone) Fatal(args ...any)               { panic(Failure{fmt.Sprint(args...)}) }
func (s *Standalone) Fatalf(format string, a ...any)  { panic(Failure{fmt.Sprintf(format, a...)}) }
func (s *Standalone) Logf(format string, args ...any) { fmt.Printf("  "+format+"\n", args...) }

// Cleanup registers f to run, last first, in RunCleanups.
func (s *Standalone) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}

// RunCleanups runs the registered cleanups, last first.
func (s *Standalone) RunCleanups() {
	s.mu.Lock()
	fs := s.cleanups
	s.cleanups = nil
	s.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// Docker returns a client for the local daemon. Without a daemon the test
// is skipped on a laptop and fails in CI (CI is set), so a missing daemon
// never hides behind a green run.
func Docker(t testing.TB) *client.Client {
	t.Helper()
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = c.Ping(ctx)
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Docker daemon required in CI: %v", err)
		}
		t.Skipf("no Docker daemon: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Registry is an OCI registry on 127.0.0.1 that can be stopped and
// restarted on the same port (for "registry down" tests).
type Registry struct {
	Host    string
	handler http.Handler
	mu      sync.Mutex
	srv     *http.Server
	// throttle is the blob download rate in bytes per second; 0 is
	// unlimited.
	throttle atomic.Int64
	// auth, if set, is the credentials every request needs (auth.go).
	auth atomic.Pointer[basicAuth]
}

// Throttle limits blob downloads to bytesPerSecond (0 lifts the limit), so
// a test can act while a pull is under way.
func (r *Registry) Throttle(bytesPerSecond int64) { r.throttle.Store(bytesPerSecond) }

func (r *Registry) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if !r.authorized(w, req) {
		return
	}
	rate := r.throttle.Load()
	if rate <= 0 || req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/blobs/") {
		r.handler.ServeHTTP(w, req)
		return
	}
	r.handler.ServeHTTP(&slowWriter{ResponseWriter: w, rate: rate}, req)
}

// slowWriter writes at most rate bytes per second, in tenths.
type slowWriter struct {
	http.ResponseWriter
	rate int64
}

func (s *slowWriter) Write(p []byte) (int, error) {
	chunk := int(max(s.rate/10, 1))
	written := 0
	for len(p) > 0 {
		n := min(chunk, len(p))
		m, err := s.ResponseWriter.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		if f, ok := s.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		p = p[n:]
		time.Sleep(100 * time.Millisecond)
	}
	return written, nil
}

// StartRegistry serves a registry until the test ends. It has no OCI 1.1
// referrers API: clients use the referrers tag schema instead
// (StartReferrersRegistry has the API).
func StartRegistry(t T) *Registry {
	t.Helper()
	return startRegistry(t, registry.New(registry.Logger(discardLogger())))
}

func startRegistry(t T, handler http.Handler) *Registry {
	t.Helper()
	r := &Registry{handler: handler}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.Host = lis.Addr().String()
	r.serve(lis)
	t.Cleanup(r.Stop)
	return r
}

func (r *Registry) serve(lis net.Listener) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.srv = &http.Server{Handler: http.HandlerFunc(r.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	go r.srv.Serve(lis)
}

// Stop takes the registry down; its content survives for Restart.
func (r *Registry) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		r.srv.Close()
		r.srv = nil
	}
}

// Restart serves the registry again on the same address.
func (r *Registry) Restart(t T) {
	lis, err := net.Listen("tcp", r.Host)
	if err != nil {
		t.Fatal(err)
	}
	r.serve(lis)
}

// Push writes img to repo ("molecule-ai/workspace-template-codex") and
// returns the full repository and the image's digest.
func (r *Registry) Push(t T, repo string, img v1.Image) (repository, digest string) {
	t.Helper()
	repository = r.Host + "/" + repo
	ref, err := name.NewTag(repository+":push", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(r.pushAuth())); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return repository, d.String()
}

// Image describes a workspace image.
type Image struct {
	// Version is WS_VERSION inside the image.
	Version string
	// Unhealthy makes /healthz (and so the HEALTHCHECK) fail.
	Unhealthy bool
	// NoHealthcheck leaves the HEALTHCHECK out.
	NoHealthcheck bool
	// Volume is a VOLUME the image declares besides /cache.
	Volume string
	// Padding adds a layer of that many random bytes, for pull progress.
	Padding int
	// Created is the image's creation time (default: none, the epoch).
	Created time.Time
}

var (
	buildOnce sync.Once
	binary    []byte
	buildErr  error
)

// workspaceBinary builds internal/workspace once per test process.
func workspaceBinary(t T) []byte {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "workspace-bin")
		if err != nil {
			buildErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "workspace")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "github.com/molecule-ai/tenant-agent/internal/workspace")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
		if msg, err := cmd.CombinedOutput(); err != nil {
			buildErr = errors.New("build workspace: " + err.Error() + "\n" + string(msg))
			return
		}
		binary, buildErr = os.ReadFile(out)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// WorkspaceImage assembles the workspace binary into an image with no
// base: entrypoint /workspace, port 8080, data folders /data and /cache
// (/cache is an image VOLUME, so containers get an anonymous volume there).
func WorkspaceImage(t T, spec Image) v1.Image {
	t.Helper()
	files := map[string][]byte{"workspace": workspaceBinary(t)}
	layer := tarLayer(t, files, 0o755)
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Padding > 0 {
		pad := make([]byte, spec.Padding)
		rand.Read(pad)
		img, err = mutate.AppendLayers(img, tarLayer(t, map[string][]byte{"padding": pad}, 0o644))
		if err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Created = v1.Time{Time: spec.Created}
	env := []string{"PATH=/", "WS_VERSION=" + spec.Version, "WS_DATA_DIRS=/data,/cache"}
	if spec.Unhealthy {
		env = append(env, "WS_HEALTHY=false")
	}
	cfg.Config = v1.Config{
		Entrypoint:   []string{"/workspace"},
		Cmd:          []string{"serve"},
		Env:          env,
		ExposedPorts: map[string]struct{}{"8080/tcp": {}},
		Volumes:      map[string]struct{}{"/cache": {}},
		WorkingDir:   "/",
		Labels:       map[string]string{"org.opencontainers.image.version": spec.Version, "org.opencontainers.image.title": "workspace"},
		StopSignal:   "SIGTERM",
	}
	if spec.Volume != "" {
		cfg.Config.Volumes[spec.Volume] = struct{}{}
	}
	if !spec.NoHealthcheck {
		// Tolerant of a loaded daemon: the server may listen only seconds
		// after the start (failures in the start period do not count) and
		// an exec of the check may take seconds (CI saw a healthy image
		// declared unhealthy after two such failures). The image that is
		// unhealthy by design fails every check, so it is declared
		// unhealthy after two, quickly.
		hc := &v1.HealthConfig{Test: []string{"CMD", "/workspace", "health"}, Interval: 500 * time.Millisecond, Timeout: 5 * time.Second, Retries: 6, StartPeriod: 5 * time.Second}
		if spec.Unhealthy {
			hc.Retries = 2
		}
		cfg.Config.Healthcheck = hc
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func tarLayer(t T, files map[string][]byte, mode int64) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(body)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	tw.Close()
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return layer
}

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// RemoveImages removes every local image of repository (images pulled
// from a test registry that is gone once the test ends). Images pulled by
// digest have no tag, so they are found by their repository digests.
func RemoveImages(t T, cli *client.Client, repository string) {
	ctx := context.Background()
	imgs, err := cli.ImageList(ctx, image.ListOptions{All: true})
	if err != nil {
		t.Logf("list images: %v", err)
		return
	}
	for _, img := range imgs {
		for _, d := range append(img.RepoDigests, img.RepoTags...) {
			if strings.HasPrefix(d, repository+"@") || strings.HasPrefix(d, repository+":") {
				cli.ImageRemove(ctx, d, image.RemoveOptions{Force: true})
			}
		}
	}
}

// FreeAddr returns a 127.0.0.1 address with a port nothing listens on now
// (for a published port or a server a test starts later).
func FreeAddr(t T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// FreePort is FreeAddr's port.
func FreePort(t T) string {
	_, port, _ := net.SplitHostPort(FreeAddr(t))
	return port
}

var workspaceClient = http.Client{Timeout: 2 * time.Second}

// Get asks a workspace container for path on its published port (see
// internal/workspace: /version, /started, /env, /file), returning the
// trimmed body.
func Get(port, path string) (string, error) {
	resp, err := workspaceClient.Get("http://127.0.0.1:" + port + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}
