package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// releaseTag is the build tag `make build` passes (BUILD_TAGS).
const releaseTag = "grpcnotrace"

// TestReleaseBuildLeavesOutTemplates: `make build` builds with
// grpcnotrace, and with it no package the agent links imports
// text/template. Its method calls by name make the linker keep every
// exported method of every type: a quarter of the agent's code, in the
// memory of every running agent. A Makefile that drops the tag, or a new
// dependency that brings templates back, fails here.
func TestReleaseBuildLeavesOutTemplates(t *testing.T) {
	t.Parallel()
	plan, err := exec.Command("make", "-s", "-n", "-C", "../../..", "build").CombinedOutput()
	if err != nil {
		t.Fatalf("make -n build: %v\n%s", err, plan)
	}
	var builds int
	for _, line := range strings.Split(string(plan), "\n") {
		if strings.Contains(line, " build ") && strings.Contains(line, "./agent/cmd/tenant-agent") {
			builds++
			if !strings.Contains(line, releaseTag) {
				t.Errorf("make build builds the agent without -tags %s:\n%s", releaseTag, line)
			}
		}
	}
	if builds != 1 {
		t.Fatalf("make -n build shows %d builds of the agent, want 1:\n%s", builds, plan)
	}

	out, err := exec.Command("go", "list", "-deps", "-tags", releaseTag, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "google.golang.org/grpc") {
		t.Fatalf("go list -deps does not list grpc; it listed:\n%s", out)
	}
	for _, pkg := range []string{"text/template", "html/template", "golang.org/x/net/trace"} {
		if slices.Contains(deps, pkg) {
			t.Errorf("the agent built with -tags %s links %s", releaseTag, pkg)
		}
	}
}
