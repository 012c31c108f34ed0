// Package e2e tests the whole system: the control plane, tenant agents,
// the real Docker Engine, a registry on loopback, real mTLS and SQLite.
package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"
	"google.golang.org/grpc"

	"github.com/molecule-ai/tenant-agent/agent"
	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/controlplane/server"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

const wait = 60 * time.Second

// env is one control plane, a registry with workspace images, and the
// tenants' containers and agents on the local Docker Engine.
type env struct {
	t      *testing.T
	docker *client.Client
	pki    *pkitest.PKI
	cp     *server.Server
	// adminAddr is the admin address of whichever control plane runs,
	// in this process or as a binary.
	adminAddr string
	cpStop    context.CancelFunc
	cpDone    chan error
	cpLogs    *testlog.Buffer
	store     string
	reg       *registrytest.Registry
	repo      string
	v1, v2    string
	bad       string
	run       string // unique per test: names, labels
}

// newEnv starts the control plane in this process.
func newEnv(t *testing.T, tenants ...string) *env {
	e := newBareEnv(t, tenants...)
	e.startCP()
	return e
}

// newBareEnv has everything but a control plane.
func newBareEnv(t *testing.T, tenants ...string) *env {
	e := &env{t: t, docker: registrytest.Docker(t), pki: pkitest.New(t, tenants...), reg: registrytest.StartRegistry(t), cpLogs: &testlog.Buffer{},
		store: filepath.Join(t.TempDir(), "cp.db"), run: randomSuffix()}
	e.repo, e.v1 = e.reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v1"}))
	_, e.v2 = e.reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "v2", Padding: 8 << 20}))
	_, e.bad = e.reg.Push(t, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(t, registrytest.Image{Version: "bad", Unhealthy: true}))
	t.Cleanup(func() { registrytest.RemoveImages(t, e.docker, e.repo) })
	return e
}

func randomSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}

func (e *env) startCP() { e.startCPWith(nil) }

func (e *env) startCPWith(mutate func(*server.Config)) {
	cfg := server.Defaults()
	cfg.AgentAddr, cfg.AdminAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if e.cp != nil { // a restart keeps the agent address, so agents redial it
		cfg.AgentAddr = e.cp.AgentAddr()
	}
	cfg.TLS, cfg.TrustDomain, cfg.StorePath = e.pki.Files("controlplane"), pkitest.TrustDomain, e.store
	cfg.HeartbeatInterval, cfg.ReconnectStagger, cfg.ShutdownGrace = time.Second, 0, 2*time.Second
	cfg.Logger = e.cpLogs.Logger(e.t, "cp")
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cp, e.cpStop, e.cpDone, e.adminAddr = srv, cancel, make(chan error, 1), srv.AdminAddr()
	go func() { e.cpDone <- srv.Serve(ctx) }()
	e.t.Cleanup(e.stopCP)
}

func (e *env) stopCP() {
	if e.cpStop != nil {
		e.cpStop()
		<-e.cpDone
		e.cpStop = nil
	}
}

func (e *env) admin() controlplanev1.AdminServiceClient {
	src, err := mtls.NewSource(e.pki.Files("operator-dev"), nil)
	if err != nil {
		e.t.Fatal(err)
	}
	conn, err := grpc.NewClient(e.adminAddr, grpc.WithTransportCredentials(mtls.ClientCredentials(src, "localhost")))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return controlplanev1.NewAdminServiceClient(conn)
}

func (e *env) ctx() context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	e.t.Cleanup(cancel)
	return c
}

// workspace is one tenant's workspace container.
type workspace struct {
	e        *env
	name     string
	tenant   string
	hostPort string
	volume   string
}

// startWorkspace runs a container of tenant on digest with a named volume
// and a published port, labelled like the real ones.
func (e *env) startWorkspace(tenant, runtimeRepo, digest string, running bool) *workspace {
	t, ctx := e.t, e.ctx()
	ref := runtimeRepo + "@" + digest
	rc, err := e.docker.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
	w := &workspace{e: e, tenant: tenant, name: "ws-" + tenant + "-" + randomSuffix(), hostPort: registrytest.FreePort(t)}
	w.volume = w.name + "-data"
	if _, err := e.docker.VolumeCreate(ctx, volume.CreateOptions{Name: w.volume}); err != nil {
		t.Fatal(err)
	}
	created, err := e.docker.ContainerCreate(ctx, &container.Config{
		Image: ref, Env: []string{"WORKSPACE_SECRET=do-not-leak-" + w.name},
		Labels:       map[string]string{"molecule.org-id": e.org(tenant), "molecule.platform.managed": "true"},
		ExposedPorts: nat.PortSet{"8080/tcp": {}},
	}, &container.HostConfig{
		Binds:         []string{w.volume + ":/data"},
		PortBindings:  nat.PortMap{"8080/tcp": {{HostIP: "127.0.0.1", HostPort: w.hostPort}}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
	}, nil, nil, w.name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.remove)
	if running {
		if err := e.docker.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		w.waitHTTP("/version", "v1")
	}
	return w
}

// org is the tenant's org-id label, unique to the test run so parallel or
// leftover containers of other runs are never touched.
func (e *env) org(tenant string) string { return tenant + "-" + e.run }

func (w *workspace) remove() {
	ctx := context.Background()
	in, err := w.e.docker.ContainerInspect(ctx, w.name)
	if err == nil {
		w.e.docker.ContainerRemove(ctx, in.ID, container.RemoveOptions{Force: true})
		for _, m := range in.Mounts {
			if m.Name != "" {
				w.e.docker.VolumeRemove(ctx, m.Name, true)
			}
		}
	}
	w.e.docker.VolumeRemove(ctx, w.volume, true)
}

func (w *workspace) inspect() container.InspectResponse {
	in, err := w.e.docker.ContainerInspect(w.e.ctx(), w.name)
	if err != nil {
		w.e.t.Fatalf("workspace %s: %v", w.name, err)
	}
	return in
}

// digest is the repository digest of the image the workspace runs.
func (w *workspace) digest() string {
	in := w.inspect()
	img, _, err := w.e.docker.ImageInspectWithRaw(w.e.ctx(), in.Image)
	if err != nil {
		w.e.t.Fatal(err)
	}
	for _, d := range img.RepoDigests {
		if repo, digest, ok := strings.Cut(d, "@"); ok && repo == w.e.repo {
			return digest
		}
	}
	return ""
}

func (w *workspace) get(path string) (string, error) { return registrytest.Get(w.hostPort, path) }

func (w *workspace) waitHTTP(path, want string) {
	w.e.t.Helper()
	eventually(w.e.t, "GET "+path+" = "+want, func() bool {
		got, err := w.get(path)
		return err == nil && strings.Contains(got, want)
	})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runningAgent is an agent in this process.
type runningAgent struct {
	once   sync.Once
	cancel context.CancelFunc
	done   chan error
	logs   *testlog.Buffer
	cfg    agent.Config
}

// startAgent runs an agent for tenant against addr (the control plane, or
// a proxy in front of it), with its state in stateDir.
func (e *env) startAgent(tenant, addr, stateDir string, mutate func(*agent.Config)) *runningAgent {
	cfg := agent.Defaults()
	cfg.ControlPlane, cfg.ServerName = addr, "localhost"
	cfg.TLS, cfg.TrustDomain, cfg.StateDir = e.pki.Files("agent-"+tenant), pkitest.TrustDomain, stateDir
	cfg.Labels = map[string]string{"molecule.org-id": "{tenant}-" + e.run, "molecule.platform.managed": "true"}
	cfg.HealthGateTimeout, cfg.StabilityWindow = 30*time.Second, time.Second
	// The test images are a few MiB: the suite must not depend on how full
	// this machine's disk is (the refusal itself is tested in agent/).
	cfg.MinFreeDisk = 64 << 20
	a := &runningAgent{done: make(chan error, 1), logs: &testlog.Buffer{}}
	cfg.Logger = a.logs.Logger(e.t, "agent-"+tenant)
	if mutate != nil {
		mutate(&cfg)
	}
	a.cfg = cfg
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() { a.done <- agent.Run(ctx, cfg) }()
	e.t.Cleanup(a.stop)
	return a
}

func (a *runningAgent) stop() {
	a.once.Do(func() {
		a.cancel()
		<-a.done
	})
}
