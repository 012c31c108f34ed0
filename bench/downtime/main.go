// Command downtime measures, on the real Docker Engine, how long a running
// workspace is unavailable when it moves to a new image, three ways, in the
// same run: the agent's recreate (create first, then stop, swap, start),
// the naive sequence watchtower uses (pull, stop, remove, create, start),
// and the floor, a plain docker restart of the same container. Downtime is
// from the moment the old process is told to stop to the first answer of
// the new one on the published port. make bench runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

func main() {
	rounds := flag.Int("rounds", 5, "rounds of each method")
	flag.Parse()
	d := &registrytest.Standalone{}
	code := 0
	func() {
		defer func() {
			if r := recover(); r != nil {
				f, ok := r.(registrytest.Failure)
				if !ok {
					panic(r)
				}
				fmt.Fprintln(os.Stderr, "downtime:", f.Msg)
				code = 1
			}
			d.RunCleanups()
		}()
		run(d, *rounds)
	}()
	os.Exit(code)
}

func run(d *registrytest.Standalone, rounds int) {
	ctx := context.Background()
	engine, err := docker.New("", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		d.Fatal(err)
	}
	cli := engine.Client()
	reg := registrytest.StartRegistry(d)
	repo, v1 := reg.Push(d, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(d, registrytest.Image{Version: "v1"}))
	_, v2 := reg.Push(d, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(d, registrytest.Image{Version: "v2"}))
	d.Cleanup(func() { registrytest.RemoveImages(d, cli, repo) })
	targets := map[string]docker.Target{}
	for _, digest := range []string{v1, v2} {
		res, err := engine.Pull(ctx, repo+"@"+digest, docker.PullOptions{}, nil)
		if err != nil {
			d.Fatal(err)
		}
		targets[digest] = docker.Target{Repository: repo, Digest: digest, ImageID: res.ImageID}
	}

	name := fmt.Sprintf("downtime-bench-%d", time.Now().UnixNano())
	port := registrytest.FreePort(d)
	if _, err := cli.VolumeCreate(ctx, volume.CreateOptions{Name: name}); err != nil {
		d.Fatal(err)
	}
	sel := docker.Selector{"downtime-bench": name}
	d.Cleanup(func() {
		bg := context.Background()
		cs, _ := cli.ContainerList(bg, container.ListOptions{All: true, Filters: sel.Filters()})
		var vols []string
		for _, c := range cs {
			for _, m := range c.Mounts {
				vols = append(vols, m.Name)
			}
			cli.ContainerRemove(bg, c.ID, container.RemoveOptions{Force: true})
		}
		for _, v := range append(vols, name) {
			cli.VolumeRemove(bg, v, true)
		}
	})
	created, err := cli.ContainerCreate(ctx, &container.Config{Image: repo + "@" + v1, Labels: sel, ExposedPorts: nat.PortSet{"8080/tcp": {}}},
		&container.HostConfig{Binds: []string{name + ":/data"}, PortBindings: nat.PortMap{"8080/tcp": {{HostIP: "127.0.0.1", HostPort: port}}},
			RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped}}, nil, nil, name)
	if err != nil {
		d.Fatal(err)
	}
	if err := cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		d.Fatal(err)
	}
	<-watch(d, port, "")

	current := v1
	next := func() docker.Target {
		if current == v1 {
			current = v2
		} else {
			current = v1
		}
		return targets[current]
	}
	list := func() docker.Container {
		cs, err := engine.List(ctx, sel)
		if err != nil || len(cs) != 1 {
			d.Fatalf("containers: %d, %v", len(cs), err)
		}
		return cs[0]
	}

	results := map[string][]time.Duration{}
	for round := 1; round <= rounds; round++ {
		// Ours: the stop happens after the replacement exists.
		{
			before := started(d, port)
			up := watch(d, port, before)
			var t0 time.Time
			opts := docker.RecreateOptions{HealthGateTimeout: time.Minute, StabilityWindow: time.Second, Suffix: fmt.Sprintf("b%d", round), Selector: sel, CommandID: fmt.Sprintf("bench-%d", round)}
			res, err := engine.Recreate(ctx, list(), next(), opts, func(docker.RecreateState) error { return nil }, func(s docker.Step, _ string) {
				if s == docker.StepStop {
					t0 = time.Now()
				}
			})
			if err != nil || res.Result != docker.ResultRecreated {
				d.Fatalf("recreate: %+v %v", res, err)
			}
			results["ours"] = append(results["ours"], startedAt(d, cli, name).Sub(t0))
			<-up
		}
		// Naive: pull (already present), stop, remove, create, start.
		{
			old := list()
			target := next()
			before := started(d, port)
			if _, err := engine.Pull(ctx, target.Ref(), docker.PullOptions{}, nil); err != nil {
				d.Fatal(err)
			}
			spec := docker.Rebuild(old.Inspect, old.ImageConfig, nil, target.Ref(), target.ImageID)
			up := watch(d, port, before)
			t0 := time.Now()
			if err := cli.ContainerStop(ctx, old.Inspect.ID, container.StopOptions{}); err != nil {
				d.Fatal(err)
			}
			if err := cli.ContainerRemove(ctx, old.Inspect.ID, container.RemoveOptions{}); err != nil {
				d.Fatal(err)
			}
			c, err := cli.ContainerCreate(ctx, spec.Config, spec.HostConfig, spec.Network, nil, old.Name())
			if err != nil {
				d.Fatal(err)
			}
			if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
				d.Fatal(err)
			}
			results["naive"] = append(results["naive"], startedAt(d, cli, name).Sub(t0))
			<-up
		}
		// The floor: restart the same container.
		{
			before := started(d, port)
			up := watch(d, port, before)
			t0 := time.Now()
			if err := cli.ContainerRestart(ctx, list().Inspect.ID, container.StopOptions{}); err != nil {
				d.Fatal(err)
			}
			results["restart"] = append(results["restart"], startedAt(d, cli, name).Sub(t0))
			<-up
		}
		fmt.Fprintf(os.Stderr, "round %d: ours %v, naive %v, restart %v\n", round, last(results["ours"]), last(results["naive"]), last(results["restart"]))
	}
	ours, naive, floor := median(results["ours"]), median(results["naive"]), median(results["restart"])
	fmt.Printf("| %d | %s | %s | %s | %.2fx | %.2fx |\n", rounds, ms(ours), ms(naive), ms(floor), ours.Seconds()/floor.Seconds(), naive.Seconds()/floor.Seconds())
}

// startedAt is when Docker started the container now named name.
func startedAt(d *registrytest.Standalone, cli *client.Client, name string) time.Time {
	in, err := cli.ContainerInspect(context.Background(), name)
	if err != nil {
		d.Fatal(err)
	}
	t, err := time.Parse(time.RFC3339Nano, in.State.StartedAt)
	if err != nil {
		d.Fatal(err)
	}
	return t
}

func last(ds []time.Duration) time.Duration { return ds[len(ds)-1].Round(time.Millisecond) }

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// A fresh connection per probe, and a short timeout: a connection to a
// process that is going away must not hide the next one.
var probe = http.Client{Timeout: 100 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}

func started(d *registrytest.Standalone, port string) string {
	s, err := get(port)
	if err != nil {
		d.Fatal("workspace not answering: ", err)
	}
	return s
}

func get(port string) (string, error) {
	resp, err := probe.Get("http://127.0.0.1:" + port + "/started")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}

// watch polls port from now on, in the background, and delivers the time
// a process other than before first answers.
func watch(d *registrytest.Standalone, port, before string) <-chan time.Time {
	up := make(chan time.Time, 1)
	go func() {
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			if s, err := get(port); err == nil && s != before && s != "" {
				up <- time.Now()
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		close(up) // a zero time: the caller's result is nonsense, and says so
	}()
	return up
}
