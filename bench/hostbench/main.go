// Command hostbench measures one agent managing many containers of one
// runtime on one host, on the real Docker Engine (docs/design.md §6):
//
//   - refresh: how long a refresh of 1, 5 and 20 containers takes one at a
//     time (parallel 1) and canary-then-parallel (4), beside one
//     container's time from the same run, and each container's downtime;
//   - requests: the Engine requests a minute of an idle agent, polling
//     (a list, then an inspect of every container and its image, each
//     heartbeat, as before) and watching Docker's events;
//   - footprint: the RSS and CPU of a real agent process (bin/tenant-agent,
//     make build) connected to a real control plane (bin/controlplane,
//     a dev PKI), managing 20 containers: idle between heartbeats, and
//     during a refresh (bin/tactl promote).
//
// Timings are figures to read, never assertions. make bench runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/e2e/demokit"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

type options struct {
	sections   map[string]bool
	sizes      []int
	parallels  []int
	window     time.Duration
	idle       time.Duration
	heartbeat  time.Duration
	resync     time.Duration
	containers int
	footprint  time.Duration
	agentBin   string
	controlBin string
}

func main() {
	var o options
	sections := flag.String("run", "refresh,requests,footprint", "sections to run, comma-separated: refresh, requests, footprint")
	sizes := flag.String("sizes", "1,5,20", "container counts of the refresh section")
	parallels := flag.String("parallel", "1,4", "parallelisms of the refresh section (1: one at a time)")
	flag.DurationVar(&o.window, "stability-window", 10*time.Second, "stability window of the refresh section's containers (no healthcheck, as in issue #18)")
	flag.DurationVar(&o.idle, "idle", time.Minute, "how long the requests section watches an idle agent")
	flag.DurationVar(&o.heartbeat, "heartbeat", 15*time.Second, "heartbeat interval the polling figure is per")
	flag.DurationVar(&o.resync, "resync-interval", 5*time.Minute, "the watched view's periodic resync")
	flag.IntVar(&o.containers, "containers", 20, "containers of the requests and footprint sections")
	flag.DurationVar(&o.footprint, "footprint", time.Minute, "how long the footprint section samples the idle agent (issue #18 wants 10m once)")
	flag.StringVar(&o.agentBin, "agent-bin", "bin/tenant-agent", "the agent binary (make build)")
	flag.StringVar(&o.controlBin, "controlplane-bin", "bin/controlplane", "the control plane binary (make build)")
	flag.Parse()
	o.sections = map[string]bool{}
	for _, s := range strings.Split(*sections, ",") {
		o.sections[strings.TrimSpace(s)] = true
	}
	o.sizes, o.parallels = ints(*sizes), ints(*parallels)
	os.Exit(run(o))
}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "hostbench: %q is not a positive count\n", f)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}

// run runs the sections and then cleans up, whatever happens (a failure,
// Ctrl-C): containers, volumes, images, processes.
func run(o options) int {
	return demokit.Run(demokit.Demo{Name: "hostbench", Passed: "the figures are above", Body: func(ctx context.Context, d *registrytest.Standalone) int {
		b := newBench(ctx, d)
		if o.sections["refresh"] {
			b.refreshTimes(o)
		}
		if o.sections["requests"] {
			b.idleRequests(o)
		}
		if o.sections["footprint"] {
			b.footprint(o)
		}
		return 0
	}})
}

// bench is what the sections share: the Engine (its requests counted), a
// loopback registry holding workspace images v1 and v2 with a healthcheck
// and without, all pulled.
type bench struct {
	d        *registrytest.Standalone
	ctx      context.Context
	engine   *docker.Engine
	requests *docker.RequestCounter
	reg      *registrytest.Registry
	repo     string
	// healthy and plain are v1 and v2 digests, with and without a
	// healthcheck, in repo and plainRepo.
	healthy, plain [2]string
	plainRepo      string
	logger         *slog.Logger
	run            string
}

func newBench(ctx context.Context, d *registrytest.Standalone) *bench {
	b := &bench{d: d, ctx: ctx, requests: &docker.RequestCounter{}, logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		run: fmt.Sprintf("hostbench-%d", time.Now().UnixNano()%1e9)}
	var err error
	if b.engine, err = docker.NewWithOptions(docker.Options{Requests: b.requests, Logger: b.logger}); err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() { b.engine.Close() })
	b.reg = registrytest.StartRegistry(d)
	for i, v := range []string{"v1", "v2"} {
		b.repo, b.healthy[i] = b.reg.Push(d, "molecule-ai/workspace-template-codex", registrytest.WorkspaceImage(d, registrytest.Image{Version: v}))
		b.plainRepo, b.plain[i] = b.reg.Push(d, "molecule-ai/workspace-template-plain", registrytest.WorkspaceImage(d, registrytest.Image{Version: v, NoHealthcheck: true}))
	}
	cli := b.engine.Client()
	d.Cleanup(func() {
		registrytest.RemoveImages(d, cli, b.repo)
		registrytest.RemoveImages(d, cli, b.plainRepo)
	})
	for _, ref := range []string{b.repo + "@" + b.healthy[0], b.repo + "@" + b.healthy[1], b.plainRepo + "@" + b.plain[0], b.plainRepo + "@" + b.plain[1]} {
		if _, err := b.engine.Pull(b.ctx, ref, docker.PullOptions{}, nil); err != nil {
			d.Fatal(err)
		}
	}
	return b
}

// selector is the labels of one group of the bench's containers.
func (b *bench) selector(group string) docker.Selector {
	return docker.Selector{"molecule.org-id": b.run + "-" + group, "molecule.platform.managed": "true"}
}
