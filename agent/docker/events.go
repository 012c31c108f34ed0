package docker

import (
	"context"
	"strings"
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
	// OnReachable, if set, is told each time Docker turns reachable or
	// unreachable (for metrics and /healthz). It must not block.
	OnReachable func(bool)
}

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
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(time.Minute, opts.MinBackoff)
	}
	out := make(chan struct{}, 1)
	w := &watcher{e: e, sel: sel, opts: opts, out: out}
	go w.run(ctx)
	return out
}

type watcher struct {
	e    *Engine
	sel  Selector
	opts WatchOptions
	out  chan struct{}
	// reachable is nil until the first attempt.
	reachable *bool
}

func (w *watcher) run(ctx context.Context) {
	wait := w.opts.MinBackoff
	for ctx.Err() == nil {
		lasted, err := w.attach(ctx)
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

// attach pings Docker, then follows its event stream until it fails, and
// returns how long the stream lasted (0 when Docker did not answer).
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
	f := w.sel.Filters()
	f.Add("type", string(events.ContainerEventType))
	msgs, errs := w.e.cli.Events(ctx, events.ListOptions{Filters: f})
	for {
		select {
		case m := <-msgs:
			// Healthchecks run as exec every few seconds; those are not
			// changes.
			if !strings.HasPrefix(string(m.Action), "exec_") {
				w.signal()
			}
		case err := <-errs:
			return time.Since(started), err
		case <-ctx.Done():
			return time.Since(started), ctx.Err()
		}
	}
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
		w.signal()
	}
}

func (w *watcher) signal() {
	select {
	case w.out <- struct{}{}:
	default:
	}
}
