package agent

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// The start is released once it settled; a command's pages once it is
// over, at the first check that finds the agent idle again; an agent that
// stays idle is not released again and again.
func TestReleaseWhenIdle(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var running atomic.Bool
	checks := make(chan bool)
	released := make(chan struct{}, 10)
	busy := func() bool {
		b := running.Load()
		select {
		case checks <- b:
		case <-ctx.Done():
		}
		return b
	}
	go releaseWhenIdle(ctx, time.Millisecond, time.Millisecond, busy, func() { released <- struct{}{} })
	<-released // the start
	for range 3 {
		<-checks // idle since: nothing to release
	}
	if len(released) != 0 {
		t.Fatalf("released %d times while idle since the last release", len(released))
	}
	running.Store(true)
	for b := false; !b; b = <-checks { // a command runs
	}
	running.Store(false)
	<-checks
	<-released // after the command
}
