package agent

import (
	"context"
	"time"
)

// releaseWhenIdle calls release once the start has settled (after settle:
// the first Hello, resync and report are over), and again after each
// command the agent ran (busy, checked every interval, reports whether
// one is running), so the pages and heap only the start or a refresh
// needed do not stay resident through the agent's idle hours.
func releaseWhenIdle(ctx context.Context, settle, every time.Duration, busy func() bool, release func()) {
	wait := time.NewTimer(settle)
	defer wait.Stop()
	select {
	case <-ctx.Done():
		return
	case <-wait.C:
	}
	release()
	tick := time.NewTicker(every)
	defer tick.Stop()
	pending := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		switch {
		case busy():
			pending = true
		case pending:
			release()
			pending = false
		}
	}
}
