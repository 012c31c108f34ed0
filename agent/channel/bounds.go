package channel

import (
	"log/slog"
	"sync/atomic"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// trimmer keeps Hello and health reports inside pkg/limits, which the
// control plane enforces by refusing the whole report. A host with more
// runtimes or containers than that reports the first ones (inventory order:
// runtimes and containers by name) rather than nothing; that is logged
// once, and again only after a report that fit.
type trimmer struct {
	logger *slog.Logger
	warned atomic.Bool
}

// runtimes trims the inventory in place and returns it.
func (t *trimmer) runtimes(rs []*tenantagentv1.RuntimeStatus) []*tenantagentv1.RuntimeStatus {
	droppedRuntimes, droppedContainers := 0, 0
	if len(rs) > limits.Runtimes {
		for _, r := range rs[limits.Runtimes:] {
			droppedContainers += len(r.GetContainers())
		}
		droppedRuntimes, rs = len(rs)-limits.Runtimes, rs[:limits.Runtimes]
	}
	budget := limits.Containers
	for _, r := range rs {
		r.Runtime = limits.Truncate(r.Runtime, limits.Name)
		r.ImageRepository = limits.Truncate(r.ImageRepository, limits.ImageRef)
		if len(r.Containers) > budget {
			droppedContainers += len(r.Containers) - budget
			r.Containers = r.Containers[:budget]
		}
		budget -= len(r.Containers)
		for _, c := range r.Containers {
			c.Name = limits.Truncate(c.Name, limits.Name)
			c.Id = limits.Truncate(c.Id, limits.ID)
			c.ImageRef = limits.Truncate(c.ImageRef, limits.ImageRef)
			c.ImageDigest = limits.Truncate(c.ImageDigest, limits.ImageRef)
		}
	}
	t.dropped(droppedRuntimes, droppedContainers)
	return rs
}

// held trims the held command IDs to limits.HeldCommands in all, running
// ones first (the control plane must not resend those).
func (t *trimmer) held(running, results []string) ([]string, []string) {
	if len(running) > limits.HeldCommands {
		running = running[:limits.HeldCommands]
	}
	if room := limits.HeldCommands - len(running); len(results) > room {
		results = results[:room]
	}
	return running, results
}

func (t *trimmer) dropped(runtimes, containers int) {
	if runtimes == 0 && containers == 0 {
		t.warned.Store(false)
		return
	}
	if !t.warned.Swap(true) {
		t.logger.Warn("report too large for the control plane; leaving some out", "runtimes_left_out", runtimes, "containers_left_out", containers,
			"max_runtimes", limits.Runtimes, "max_containers", limits.Containers)
	}
}
