package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestReleaseBuildLeavesOutTemplates: with the Makefile's build tags
// (grpcnotrace), no package the agent links imports text/template. Its
// method calls by name make the linker keep every exported method of
// every type: a quarter of the agent's code, in the memory of every
// running agent. A new dependency that brings it back fails here.
func TestReleaseBuildLeavesOutTemplates(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "-tags", "grpcnotrace", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "google.golang.org/grpc") {
		t.Fatalf("go list -deps does not list grpc; it listed:\n%s", out)
	}
	for _, pkg := range []string{"text/template", "html/template", "golang.org/x/net/trace"} {
		if slices.Contains(deps, pkg) {
			t.Errorf("the agent built with -tags grpcnotrace links %s", pkg)
		}
	}
}
