package failpoint

import (
	"testing"

	"github.com/molecule-ai/tenant-agent/agent/docker"
)

func TestCrashPointIsOneStepUntilCleared(t *testing.T) {
	if _, ok := Crash(docker.StepStop); ok {
		t.Fatal("a crash point is set by default")
	}
	called := false
	clear := SetCrash(docker.StepStop, func() { called = true })
	if _, ok := Crash(docker.StepStart); ok {
		t.Fatal("another step crashes")
	}
	do, ok := Crash(docker.StepStop)
	if !ok {
		t.Fatal("the crash point does not crash")
	}
	do()
	if !called {
		t.Fatal("the crash action did not run")
	}
	clear()
	if _, ok := Crash(docker.StepStop); ok {
		t.Fatal("the crash point survives clearing")
	}
}
