package agent

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// The start is released once it settled, and then at every check that
// finds no command running; never while one runs.
func TestReleaseWhenIdle(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var running, lastBusy, releasedWhileBusy atomic.Bool
	checks := make(chan bool)
	released := make(chan struct{}, 100)
	busy := func() bool {
		b := running.Load()
		lastBusy.Store(b)
		select {
		case checks <- b:
		case <-ctx.Done():
		}
		return b
	}
	release := func() {
		if lastBusy.Load() { // the check before said a command runs
			releasedWhileBusy.Store(true)
		}
		released <- struct{}{}
	}
	go releaseWhenIdle(ctx, time.Millisecond, time.Millisecond, busy, release)
	<-released // the start
	running.Store(true)
	for b := false; !b; b = <-checks { // a command runs
	}
	for range 3 {
		<-checks
	}
	for len(released) > 0 {
		<-released // released before the command was seen
	}
	running.Store(false)
	<-checks
	<-released // idle again
	<-checks
	<-released // and at the next check too
	if releasedWhileBusy.Load() {
		t.Error("released while a command ran")
	}
}
