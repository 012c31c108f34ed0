package docker

import (
	"context"
	"time"

	"github.com/docker/docker/api/types/events"
)

// WatchOptions tune the Docker event watcher.
type WatchOptions struct {
	// MinBackoff and MaxBackoff bound the wait before the next attempt
	// after Docker or its event stream failed: it doubles from MinBackoff
	// (default 1 s) up to MaxBackoff (default 1 min), and starts over once
	// a stream has lasted MaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// ResyncInterval is how often the view is checked against a container
	// list while the stream is up (default 5 min): a safety net against an
	// event the Engine never sent, one request per interval when nothing
	// changed.
	ResyncInterval time.Duration
	// OnReachable, if set, is told each time Docker turns reachable or
	// unreachable (for metrics and /healthz). It must not block.
	OnReachable func(bool)
}

// watchedActions are the container events that change what the view
// holds. The Engine filters by them, so the exec_* events of every
// healthcheck never reach the agent.
var watchedActions = []events.Action{events.ActionCreate, events.ActionStart, events.ActionRestart, events.ActionDie, events.ActionHealthStatus,
	events.ActionDestroy, events.ActionRename, events.ActionPause, events.ActionUnPause}

// Changes signals, coalesced, whenever Docker reports a lifecycle event
// (start, die, health status, ...) of a managed container, so a health
// report can follow within a second. It reattaches to the event stream
// after errors until ctx ends.
func (e *Engine) Changes(ctx context.Context, sel Selector) <-chan struct{} {
	return e.WatchChanges(ctx, sel, WatchOptions{})
}

// WatchChanges is Changes with options. Docker turning unreachable and
// reachable again are logged once each, and are changes too (the health
// report says whether Docker is reachable).
func (e *Engine) WatchChanges(ctx context.Context, sel Selector, opts WatchOptions) <-chan struct{} {
	return e.Watch(ctx, sel, opts).Changes()
}

// Watch keeps the managed containers' state from the Engine's event
// stream until ctx ends: a full resync (list and inspect) each time the
// stream is (re)attached, so nothing that happened while it was down is
// missed, then each event applied as it comes, and a cheap check against
// a container list every ResyncInterval.
func (e *Engine) Watch(ctx context.Context, sel Selector, opts WatchOptions) *State {
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(time.Minute, opts.MinBackoff)
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = 5 * time.Minute
	}
	s := newState()
	w := &watcher{e: e, sel: sel, opts: opts, state: s}
	go w.run(ctx)
	return s
}

type watcher struct {
	e     *Engine
	sel   Selector
	opts  WatchOptions
	state *State
	// reachable is nil until the first attempt.
	reachable *bool
}

func (w *watcher) run(ctx context.Context) {
	wait := w.opts.MinBackoff
	for ctx.Err() == nil {
		lasted, err := w.attach(ctx)
		w.state.unsync()
		if ctx.Err() != nil {
			return
		}
		if lasted >= w.opts.MaxBackoff {
			wait = w.opts.MinBackoff // it worked for a while: start over
		}
		w.e.logger.Debug("Docker event stream failed; retrying", "error", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, w.opts.MaxBackoff)
	}
}

// attach pings Docker, subscribes to its event stream, resyncs, then
// applies events until the stream fails, and returns how long the stream
// lasted (0 when Docker did not answer). Subscribing before the resync
// means no change falls between the two.
func (w *watcher) attach(ctx context.Context) (time.Duration, error) {
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := w.e.Ping(pingCtx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			w.setReachable(false, err)
		}
		return 0, err
	}
	w.setReachable(true, nil)
	started := time.Now()
	streamCtx, stop := context.WithCancel(ctx)
	defer stop() // ends the client's stream reader
	f := w.sel.Filters()
	f.Add("type", string(events.ContainerEventType))
	for _, a := range watchedActions {
		f.Add("event", string(a))
	}
	msgs, errs := w.e.cli.Events(streamCtx, events.ListOptions{Filters: f})
	if err := w.resync(ctx, true); err != nil {
		return time.Since(started), err
	}
	tick := time.NewTicker(w.opts.ResyncInterval)
	defer tick.Stop()
	for {
		select {
		case m := <-msgs:
			if w.state.apply(ctx, w.e, w.sel, m) {
				w.state.signal()
			}
		case <-tick.C:
			if err := w.resync(ctx, false); err != nil {
				return time.Since(started), err
			}
		case err := <-errs:
			return time.Since(started), err
		case <-ctx.Done():
			return time.Since(started), ctx.Err()
		}
	}
}

// resync brings the view in line with the Engine (full: every container
// inspected again; else only those a list shows changed) and forgets the
// images no managed container uses.
func (w *watcher) resync(ctx context.Context, full bool) error {
	changed, err := w.state.resync(ctx, w.e, w.sel, full)
	if err != nil {
		return err
	}
	w.e.keepImages(w.state.imagesInUse())
	if changed {
		w.state.signal()
	}
	return nil
}

// setReachable logs and reports only changes of state: a Docker down for
// an hour is one line when it goes and one when it comes back.
func (w *watcher) setReachable(ok bool, err error) {
	if w.reachable != nil && *w.reachable == ok {
		return
	}
	first := w.reachable == nil
	w.reachable = &ok
	switch {
	case !ok:
		w.e.logger.Warn("Docker unreachable; retrying with backoff", "error", err, "max_backoff", w.opts.MaxBackoff)
	case !first:
		w.e.logger.Info("Docker reachable again")
	}
	if w.opts.OnReachable != nil {
		w.opts.OnReachable(ok)
	}
	if !first {
		w.state.signal()
	}
}
