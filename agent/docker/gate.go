package docker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
)

// gateActions are the events of a container in its health gate that can
// end the gate: it exited, restarted, changed health, or went.
var gateActions = []events.Action{events.ActionStart, events.ActionRestart, events.ActionDie, events.ActionHealthStatus, events.ActionDestroy}

// gateRecheck is how often the health gate inspects its container when
// no event came: a backstop for an event missed while the subscription
// was being set up, or a stream that failed.
var gateRecheck = time.Second

// healthGate waits for a started container to prove itself: healthy if it
// has a healthcheck, else running without a restart for the stability
// window. It fails as soon as the container exits or restarts. It inspects
// the container when the Engine's event stream says something happened to
// it, at the end of its window or timeout, and otherwise only every
// gateRecheck: many containers in their windows at once do not keep the
// daemon busy answering inspects while another container's swap needs it.
func (e *Engine) healthGate(ctx context.Context, id string, opts RecreateOptions) error {
	streamCtx, stop := context.WithCancel(ctx)
	defer stop() // ends the client's stream reader
	f := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)), filters.Arg("container", id))
	for _, a := range gateActions {
		f.Add("event", string(a))
	}
	msgs, errs := e.cli.Events(streamCtx, events.ListOptions{Filters: f})
	in, err := e.cli.ContainerInspect(ctx, id)
	if err != nil {
		return err
	}
	startedAt, restarts := in.State.StartedAt, in.RestartCount
	start := time.Now()
	deadline := start.Add(opts.HealthGateTimeout)
	if in.State.Health == nil && opts.StabilityWindow < opts.HealthGateTimeout {
		deadline = start.Add(opts.StabilityWindow)
	}
	for {
		s := in.State
		switch {
		case !s.Running:
			return fmt.Errorf("health gate: the new container exited with code %d", s.ExitCode)
		case in.RestartCount != restarts || s.StartedAt != startedAt:
			return errors.New("health gate: the new container restarted")
		case s.Health != nil && s.Health.Status == container.Healthy:
			return nil
		case s.Health != nil && s.Health.Status == container.Unhealthy:
			return fmt.Errorf("health gate: the new container is unhealthy (%d failing checks)", s.Health.FailingStreak)
		case s.Health == nil && time.Since(start) >= opts.StabilityWindow:
			return nil
		case s.Health == nil && opts.Settling != nil:
			opts.Settling()
			opts.Settling = nil
		case time.Since(start) > opts.HealthGateTimeout:
			return fmt.Errorf("health gate: not healthy within %s", opts.HealthGateTimeout)
		}
		wait := min(gateRecheck, time.Until(deadline)+time.Millisecond)
		timer := time.NewTimer(max(wait, time.Millisecond))
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-msgs:
		case err := <-errs:
			// The stream failed: the recheck goes on alone.
			e.logger.Debug("health gate without events", "container", shortID(id), "error", err)
			msgs, errs = nil, nil
		case <-timer.C:
		}
		timer.Stop()
		if in, err = e.cli.ContainerInspect(ctx, id); err != nil {
			return fmt.Errorf("health gate: %w", err)
		}
	}
}
