package agent

import (
	"context"
	"time"
)

// releaseWhenIdle calls release (the agent's: debug.FreeOSMemory) once
// the start has settled (after settle), and then at every interval at
// which no command is running (busy), so the heap that only the start, a
// slow connect or a refresh needed is handed back to the system instead
// of staying resident through the agent's idle hours. The executable's
// own pages are left alone: dropping them from the mapping would lower
// RSS but not the host's memory (they stay in the page cache, charged
// to the same cgroup).
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
