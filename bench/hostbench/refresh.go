package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/volume"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/executor"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// refreshTimes refreshes n containers without a healthcheck (so each
// waits out the stability window, as in issue #18) from v1 to v2, for
// each parallelism and size, and prints each refresh's time beside one
// container's of the same parallelism, and the containers' downtime.
func (b *bench) refreshTimes(o options) {
	fmt.Printf("\n## Refresh of one runtime's containers on one host (stability window %s, no healthcheck)\n\n", o.window)
	fmt.Println("| containers | parallel | refresh | × one container | downtime median | downtime max | outcome |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|---|")
	var logs []*stepLog
	var labels []string
	for _, p := range o.parallels {
		var one time.Duration
		for _, n := range o.sizes {
			log := newStepLog()
			took, downtimes, outcome := b.refreshOnce(o, n, p, log)
			logs, labels = append(logs, log), append(labels, fmt.Sprintf("%d at %d", n, p))
			if n == 1 || one == 0 {
				one = took
			}
			slices.Sort(downtimes)
			fmt.Printf("| %d | %d | %s | %.2f× | %s | %s | %s |\n", n, p, took.Round(100*time.Millisecond), took.Seconds()/one.Seconds(),
				ms(downtimes[len(downtimes)/2]), ms(downtimes[len(downtimes)-1]), outcome)
		}
	}
	fmt.Println("\nThe window (from the stop or first rename to the start's return) split into its steps, medians over the")
	fmt.Println("containers, and the share of the window that other containers spent in each of their own steps (1.00: one")
	fmt.Println("other container throughout):")
	fmt.Println()
	fmt.Println("| containers at parallel | window | rename old | stop | rename new | start | others creating | others swapping | others in health gate | others removing |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for i, l := range logs {
		l.phaseTable(labels[i])
	}
}

// refreshOnce starts n containers on v1, refreshes them to v2 with
// parallel at once, removes them, and returns the refresh's time, each
// container's downtime and the outcome.
func (b *bench) refreshOnce(o options, n, parallel int, log *stepLog) (time.Duration, []time.Duration, string) {
	group := fmt.Sprintf("refresh-%d-%d", n, parallel)
	sel := b.selector(group)
	for i := range n {
		b.startContainer(sel, fmt.Sprintf("%s-%s-%02d", b.run, group, i), b.plainRepo+"@"+b.plain[0])
	}
	x, err := executor.New(executor.Config{Engine: b.engine, Selector: sel, MaxParallel: parallel, StabilityWindow: o.window, Logger: b.logger})
	if err != nil {
		b.d.Fatal(err)
	}
	hooks := executor.Hooks{Step: log.record, Progress: func(*executor.Progress) {}}
	cmd := &tenantagentv1.RefreshRuntimeImage{CommandId: "c-" + group, Runtime: "plain", ImageRepository: b.plainRepo, ImageDigest: b.plain[1]}
	start := time.Now()
	res, err := x.Refresh(b.ctx, cmd, hooks)
	took := time.Since(start)
	if err != nil {
		b.d.Fatal(err)
	}
	var downtimes []time.Duration
	for _, c := range res.GetContainers() {
		downtimes = append(downtimes, c.GetDowntime().AsDuration())
	}
	return took, downtimes, res.GetOutcome().String()
}

// startContainer runs a managed container on image with a named volume,
// removed with the bench.
func (b *bench) startContainer(sel docker.Selector, name, image string) {
	cli := b.engine.Client()
	if _, err := cli.VolumeCreate(b.ctx, volume.CreateOptions{Name: name + "-data"}); err != nil {
		b.d.Fatal(err)
	}
	c, err := cli.ContainerCreate(b.ctx, &container.Config{Image: image, Labels: sel}, &container.HostConfig{Binds: []string{name + "-data:/data"}}, nil, nil, name)
	if err != nil {
		b.d.Fatal(err)
	}
	b.d.Cleanup(func() {
		for _, ref := range []string{name, c.ID} {
			registrytest.RemoveContainer(cli, ref)
		}
	})
	if err := cli.ContainerStart(b.ctx, c.ID, container.StartOptions{}); err != nil {
		b.d.Fatal(err)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }
