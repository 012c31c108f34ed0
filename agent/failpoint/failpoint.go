// Package failpoint is the agent's one seam for fault injection: the tests
// that kill the agent between two recreate steps set a crash point here,
// and the runner consults it before every journaled step. Unset, it does
// nothing. Only a binary built with -tags failpoints reads a crash point
// from its environment (env.go); the shipped binary has no way to set one.
package failpoint

import (
	"sync"

	"github.com/molecule-ai/tenant-agent/agent/docker"
)

var (
	mu   sync.Mutex
	at   docker.Step
	then func()
)

// SetCrash makes the agent crash just before step: the runner calls then
// (a binary exits there, or waits to be killed) and the step fails with
// docker.ErrCrash, leaving the command exactly as a dead process would.
// The crash point is the process's: a test that sets it runs no other
// agent until it clears it with the function returned.
func SetCrash(step docker.Step, do func()) (clear func()) {
	mu.Lock()
	defer mu.Unlock()
	at, then = step, do
	return func() {
		mu.Lock()
		defer mu.Unlock()
		at, then = "", nil
	}
}

// Crash reports whether step is the crash point, and what to do there.
func Crash(step docker.Step) (do func(), ok bool) {
	mu.Lock()
	defer mu.Unlock()
	if at == "" || step != at {
		return nil, false
	}
	if then == nil {
		return func() {}, true
	}
	return then, true
}
