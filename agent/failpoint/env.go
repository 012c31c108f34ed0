//go:build failpoints

package failpoint

import (
	"fmt"
	"log/slog"
	"os"
	"slices"

	"github.com/molecule-ai/tenant-agent/agent/docker"
)

// A binary built with -tags failpoints dies just before the recreate step
// TENANT_AGENT_TEST_CRASH_AT names, as if killed, or, with
// TENANT_AGENT_TEST_CRASH_HANG set, stops there until it is killed.
func init() {
	step := docker.Step(os.Getenv("TENANT_AGENT_TEST_CRASH_AT"))
	if step == "" {
		return
	}
	if !slices.Contains(docker.Steps, step) {
		fmt.Fprintf(os.Stderr, "TENANT_AGENT_TEST_CRASH_AT: %q is not a recreate step\n", step)
		os.Exit(2)
	}
	do := func() {
		slog.Error("crash point reached: exiting as if killed", "step", step)
		os.Exit(3)
	}
	if os.Getenv("TENANT_AGENT_TEST_CRASH_HANG") != "" {
		do = func() {
			slog.Error("crash point reached: waiting to be killed", "step", step)
			select {}
		}
	}
	SetCrash(step, do)
}
