package agent

import (
	"context"
	"time"
)

// releaseWhenIdle calls release once the start has settled (after
// settle), and then at every interval at which no command is running
// (busy), so the pages and heap that only the start, a slow connect or a
// refresh needed do not stay resident through the agent's idle hours:
// what the idle agent keeps is what it touched in the last interval.
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !busy() {
			release()
		}
	}
}
