package main

import (
	"context"
	"fmt"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/molecule-ai/tenant-agent/agent/docker"
)

// idleRequests counts the Engine requests of an idle agent with
// o.containers containers: polling as the agent did before it watched
// events (each heartbeat: a list, then an inspect of every container and
// of its image), and watching (after the first resync).
func (b *bench) idleRequests(o options) {
	sel := b.selector("idle")
	for i := range o.containers {
		b.startContainer(sel, fmt.Sprintf("%s-idle-%02d", b.run, i), b.repo+"@"+b.healthy[0])
	}
	perMinute := func(n int, over time.Duration) float64 { return float64(n) * float64(time.Minute) / float64(over) }

	b.requests.Reset()
	const polls = 4
	for range polls {
		b.poll(sel)
	}
	perHeartbeat := b.requests.Total() / polls

	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	state := b.engine.Watch(ctx, sel, docker.WatchOptions{ResyncInterval: o.resync})
	for {
		if cs, ok := state.Snapshot(); ok && len(cs) == o.containers {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.requests.Reset()
	time.Sleep(o.idle)
	watched := b.requests.Counts()
	total := 0
	for _, n := range watched {
		total += n
	}

	fmt.Printf("\n## Engine requests of an idle agent with %d containers\n\n", o.containers)
	fmt.Println("| heartbeat source | requests | per minute |")
	fmt.Println("|---|---:|---:|")
	fmt.Printf("| polling (before): list + inspect of each container and its image | %d a heartbeat | %.0f at a %s heartbeat |\n", perHeartbeat, perMinute(perHeartbeat, o.heartbeat), o.heartbeat)
	fmt.Printf("| watching events (after), measured over %s | %d %v | %.2f |\n", o.idle, total, watched, perMinute(total, o.idle))
	fmt.Printf("| watching events, steady state with a %s resync (one list each) | 1 a resync | %.2f |\n", o.resync, perMinute(1, o.resync))
}

// poll sends what one heartbeat of the polling agent sent: the list, then
// an inspect of every container and of its image (no cache).
func (b *bench) poll(sel docker.Selector) {
	cli := b.engine.Client()
	list, err := cli.ContainerList(b.ctx, container.ListOptions{All: true, Filters: sel.Filters()})
	if err != nil {
		b.d.Fatal(err)
	}
	for _, s := range list {
		in, err := cli.ContainerInspect(b.ctx, s.ID)
		if err != nil {
			b.d.Fatal(err)
		}
		if _, err := cli.ImageInspect(b.ctx, in.Image); err != nil {
			b.d.Fatal(err)
		}
	}
}
