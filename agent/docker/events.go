package docker

import (
	"context"
	"strings"
	"time"

	"github.com/docker/docker/api/types/events"
)

// Changes signals, coalesced, whenever Docker reports a lifecycle event
// (start, die, health status, ...) of a managed container, so a health
// report can follow within a second. It reattaches to the event stream
// after errors until ctx ends.
func (e *Engine) Changes(ctx context.Context, sel Selector) <-chan struct{} {
	out := make(chan struct{}, 1)
	go func() {
		for ctx.Err() == nil {
			f := sel.Filters()
			f.Add("type", string(events.ContainerEventType))
			msgs, errs := e.cli.Events(ctx, events.ListOptions{Filters: f})
		stream:
			for {
				select {
				case m := <-msgs:
					// Healthchecks run as exec every few seconds; those are
					// not changes.
					if strings.HasPrefix(string(m.Action), "exec_") {
						continue
					}
					select {
					case out <- struct{}{}:
					default:
					}
				case err := <-errs:
					if ctx.Err() == nil {
						e.logger.Warn("Docker event stream ended; reattaching", "error", err)
					}
					break stream
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return out
}
