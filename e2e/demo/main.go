// Command demo shows the whole story on one machine (make demo): a
// registry on 127.0.0.1 with workspace images v1 and v2, two workspace
// containers on v1 of a tenant named for this run only (so the agent can
// never take over a container the demo did not create), the control plane
// and the agent
// as real processes, and a promote of v2 through grpcurl. It prints the
// rollout as it happens and each container's digest and data before and
// after, cleans up everything it started (also on failure or Ctrl-C), and
// exits non-zero unless both containers end on v2 with their data.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

const (
	runtime = "codex"
	varDir  = "var/demo"
	// certDir holds a dev PKI made for this run, removed with varDir.
	certDir = varDir + "/certs"
)

// tenant is unique to the run: the agent manages every container carrying
// its tenant's labels, and a fixed name would adopt a user's containers.
var tenant = "demo-" + randomHex(4)

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func main() { os.Exit(run()) }

// labelled counts the containers, running or not, that carry the demo
// tenant's labels.
func labelled(ctx context.Context, d *registrytest.Standalone, cli *client.Client) int {
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "molecule.org-id="+tenant))})
	if err != nil {
		d.Fatal("list containers: ", err)
	}
	return len(list)
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run() (code int) {
	d := &registrytest.Standalone{}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(registrytest.Failure)
			if !ok {
				panic(r)
			}
			if ctx.Err() != nil {
				f.Msg = "interrupted (" + f.Msg + ")"
			}
			fmt.Fprintln(os.Stderr, "\ndemo failed:", f.Msg)
			code = 1
		}
		step("cleaning up")
		d.RunCleanups()
		if code == 0 {
			fmt.Println("\ndemo passed: both workspaces run v2 with their data")
		}
	}()
	return demo(ctx, d)
}

func demo(ctx context.Context, d *registrytest.Standalone) int {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		d.Fatal("docker: ", err)
	}
	if _, err := cli.Ping(ctx); err != nil {
		d.Fatal("the Docker daemon is not reachable: ", err)
	}
	os.RemoveAll(varDir)
	if err := os.MkdirAll(varDir, 0o700); err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() { os.RemoveAll(varDir) })

	if n := labelled(ctx, d, cli); n > 0 {
		d.Fatal(fmt.Sprintf("%d containers already carry tenant %s's labels; the demo touches only what it creates", n, tenant))
	}
	step("dev certificates for this run's tenant %s in %s", tenant, certDir)
	mustRun(ctx, d, "go", "run", "./certs/cmd/devpki", "--out", certDir, tenant)

	step("registry on 127.0.0.1 with workspace images v1 and v2 (no base image: a static Go binary)")
	reg := registrytest.StartRegistry(d)
	repo, v1 := reg.Push(d, "molecule-ai/workspace-template-"+runtime, registrytest.WorkspaceImage(d, registrytest.Image{Version: "v1"}))
	_, v2 := reg.Push(d, "molecule-ai/workspace-template-"+runtime, registrytest.WorkspaceImage(d, registrytest.Image{Version: "v2", Padding: 16 << 20}))
	d.Cleanup(func() { registrytest.RemoveImages(d, cli, repo) })
	fmt.Printf("  %s\n  v1 %s\n  v2 %s\n", repo, v1, v2)

	step("two %s workspaces of tenant %s on v1", runtime, tenant)
	pull(ctx, d, cli, repo+"@"+v1)
	// From here on the registry is a slow link, so the pull of v2 shows
	// its progress.
	reg.Throttle(8 << 20)
	var workspaces []*workspace
	for i := 1; i <= 2; i++ {
		workspaces = append(workspaces, startWorkspace(ctx, d, cli, fmt.Sprintf("demo-%s-ws-%d", tenant, i), repo+"@"+v1))
	}
	before := map[string]string{}
	for _, w := range workspaces {
		before[w.name] = w.digest(ctx, d, cli, repo)
		fmt.Printf("  %-28s %s  port %s  volume %s\n", w.name, before[w.name], w.port, w.volume)
	}

	agentAddr, adminAddr, httpAddr := registrytest.FreeAddr(d), registrytest.FreeAddr(d), registrytest.FreeAddr(d)
	step("control plane (SQLite in %s) and agent, as processes", varDir)
	startProcess(ctx, d, "controlplane", "bin/controlplane", "--agent-addr", agentAddr, "--admin-addr", adminAddr, "--http-addr", httpAddr,
		"--cert", certDir+"/controlplane.pem", "--key", certDir+"/controlplane-key.pem", "--ca", certDir+"/ca.pem",
		"--store", varDir+"/controlplane.db", "--heartbeat-interval", "2s")
	// The agent takes only the demo's own repository, matched whole.
	startProcess(ctx, d, "agent", "bin/tenant-agent", "--control-plane", agentAddr, "--server-name", "localhost",
		"--repository-pattern", strings.TrimSuffix(repo, runtime)+"{runtime}", "--allow-repos", repo,
		"--cert", certDir+"/agent-"+tenant+".pem", "--key", certDir+"/agent-"+tenant+"-key.pem", "--ca", certDir+"/ca.pem",
		"--state-dir", varDir+"/agent", "--stability-window", "2s", "--min-free-disk", "256MiB")
	waitForAgent(ctx, d, adminAddr)

	step("promote %s to v2 with grpcurl (streamed rollout)", runtime)
	ok := promote(ctx, d, adminAddr, repo+"@"+v2)

	step("before and after")
	fmt.Printf("  %-28s %-73s %-73s %s\n", "workspace", "before", "after", "data kept (/data/history)")
	for _, w := range workspaces {
		after := w.digest(ctx, d, cli, repo)
		hist, _ := w.get("/file?path=/data/history")
		lines := strings.Split(strings.TrimSpace(hist), "\n")
		versions := []string{}
		for _, l := range lines {
			if f := strings.Fields(l); len(f) >= 2 {
				versions = append(versions, f[1])
			}
		}
		fmt.Printf("  %-28s %-73s %-73s %s\n", w.name, before[w.name], after, strings.Join(versions, " then "))
		if after != v2 || !strings.Contains(hist, " v1 ") || !strings.Contains(hist, " v2 ") {
			ok = false
		}
	}
	if !ok {
		d.Fatal("the workspaces did not all end on v2 with their data")
	}
	return 0
}

type workspace struct {
	name, port, volume, id string
}

func startWorkspace(ctx context.Context, d *registrytest.Standalone, cli *client.Client, name, ref string) *workspace {
	w := &workspace{name: name, volume: name + "-data"}
	w.port = registrytest.FreePort(d)
	cli.ContainerRemove(ctx, name, container.RemoveOptions{Force: true}) // a leftover of an interrupted run
	if _, err := cli.VolumeCreate(ctx, volume.CreateOptions{Name: w.volume}); err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() { cli.VolumeRemove(context.Background(), w.volume, true) })
	created, err := cli.ContainerCreate(ctx, &container.Config{
		Image:        ref,
		Env:          []string{"WORKSPACE_ID=" + name},
		Labels:       map[string]string{"molecule.org-id": tenant, "molecule.platform.managed": "true", "molecule.workspace": name},
		ExposedPorts: nat.PortSet{"8080/tcp": {}},
	}, &container.HostConfig{
		Binds:         []string{w.volume + ":/data"},
		PortBindings:  nat.PortMap{"8080/tcp": {{HostIP: "127.0.0.1", HostPort: w.port}}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
	}, nil, nil, name)
	if err != nil {
		d.Fatal(err)
	}
	w.id = created.ID
	d.Cleanup(func() {
		bg := context.Background()
		in, err := cli.ContainerInspect(bg, name)
		if err != nil {
			return
		}
		cli.ContainerRemove(bg, in.ID, container.RemoveOptions{Force: true})
		for _, m := range in.Mounts {
			if m.Name != "" && m.Name != w.volume {
				cli.VolumeRemove(bg, m.Name, true) // the image's anonymous /cache volume
			}
		}
	})
	if err := cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		d.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if v, err := w.get("/version"); err == nil && v == "v1" {
			return w
		}
		if time.Now().After(deadline) {
			d.Fatalf("workspace %s did not come up", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (w *workspace) get(path string) (string, error) { return registrytest.Get(w.port, path) }

func (w *workspace) digest(ctx context.Context, d *registrytest.Standalone, cli *client.Client, repo string) string {
	in, err := cli.ContainerInspect(ctx, w.name)
	if err != nil {
		d.Fatal(err)
	}
	img, err := cli.ImageInspect(ctx, in.Image)
	if err != nil {
		d.Fatal(err)
	}
	for _, rd := range img.RepoDigests {
		if r, dg, ok := strings.Cut(rd, "@"); ok && r == repo {
			return dg
		}
	}
	return "(no digest)"
}

func pull(ctx context.Context, d *registrytest.Standalone, cli *client.Client, ref string) {
	rc, err := cli.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		d.Fatal(err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
}

func mustRun(ctx context.Context, d *registrytest.Standalone, name string, args ...string) {
	cmd := exec.CommandContext(ctx, name, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		d.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// startProcess runs a binary until cleanup, its log in var/demo/<name>.log.
func startProcess(ctx context.Context, d *registrytest.Standalone, name, bin string, args ...string) {
	logPath := filepath.Join(varDir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		d.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		d.Fatalf("start %s: %v (run make build first)", bin, err)
	}
	fmt.Printf("  %s pid %d, log %s\n", name, cmd.Process.Pid, logPath)
	d.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logFile.Close()
	})
}

func grpcurl(ctx context.Context, addr, data, method string) *exec.Cmd {
	return exec.CommandContext(ctx, "go", "tool", "grpcurl", "-cacert", certDir+"/ca.pem", "-cert", certDir+"/operator-dev.pem",
		"-key", certDir+"/operator-dev-key.pem", "-servername", "localhost", "-d", data, addr, "controlplane.v1.AdminService/"+method)
}

func waitForAgent(ctx context.Context, d *registrytest.Standalone, adminAddr string) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := grpcurl(ctx, adminAddr, `{"tenant":"`+tenant+`","connected_only":true}`, "ListAgents").Output()
		if err == nil && strings.Contains(string(out), `"runtime": "`+runtime+`"`) {
			fmt.Println("  the agent is connected and reports its containers")
			return
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			d.Fatal("the agent did not connect; see var/demo/*.log")
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// promote runs PromoteRuntimeImage through grpcurl, printing each rollout
// event and, for each command, its progress (WatchCommand).
func promote(ctx context.Context, d *registrytest.Standalone, adminAddr, ref string) bool {
	cmd := grpcurl(ctx, adminAddr, `{"runtime":"`+runtime+`","image_ref":"`+ref+`","notes":"make demo"}`, "PromoteRuntimeImage")
	out, err := cmd.StdoutPipe()
	if err != nil {
		d.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		d.Fatal(err)
	}
	var watchers sync.WaitGroup
	completed := false
	dec := json.NewDecoder(bufio.NewReader(out))
	for {
		var resp struct {
			Event struct {
				Kind, Phase, Tenant, CommandId, State, Message string
			}
		}
		if err := dec.Decode(&resp); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			d.Fatal("reading the rollout stream: ", err)
		}
		ev := resp.Event
		fmt.Printf("  [rollout] %-16s %s\n", strings.TrimPrefix(ev.Kind, "ROLLOUT_EVENT_KIND_"), ev.Message)
		if ev.Kind == "ROLLOUT_EVENT_KIND_COMMAND_ISSUED" {
			watchers.Add(1)
			go func(id string) {
				defer watchers.Done()
				watch(ctx, adminAddr, id)
			}(ev.CommandId)
		}
		completed = completed || ev.Kind == "ROLLOUT_EVENT_KIND_COMPLETED"
	}
	if err := cmd.Wait(); err != nil {
		d.Fatal("grpcurl PromoteRuntimeImage: ", err)
	}
	watchers.Wait()
	return completed
}

func watch(ctx context.Context, adminAddr, id string) {
	cmd := grpcurl(ctx, adminAddr, `{"command_id":"`+id+`"}`, "WatchCommand")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return
	}
	if err := cmd.Start(); err != nil {
		return
	}
	defer cmd.Wait()
	dec := json.NewDecoder(out)
	last := ""
	for {
		var resp struct {
			Event struct {
				State, Message string
				Progress       *struct{ Phase, Container string }
			}
		}
		if err := dec.Decode(&resp); err != nil {
			return
		}
		line := resp.Event.Message
		if p := resp.Event.Progress; p != nil && strings.HasSuffix(p.Phase, "PULLING") && line == last {
			continue
		}
		last = line
		fmt.Printf("  [%s] %-14s %s\n", id[:10], strings.TrimPrefix(resp.Event.State, "COMMAND_STATE_"), line)
	}
}
