package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsOnlyGenAndPkg: tactl's code (the binary and its packages)
// imports no package of this module but gen/, pkg/ and tactl/ itself:
// never the control plane's or the agent's.
func TestImportsOnlyGenAndPkg(t *testing.T) {
	t.Parallel()
	const module = "github.com/molecule-ai/tenant-agent/"
	out, err := exec.Command("go", "list", "-deps", "../../...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	var ours int
	for _, pkg := range strings.Fields(string(out)) {
		rest, ok := strings.CutPrefix(pkg, module)
		if !ok {
			continue
		}
		ours++
		if !strings.HasPrefix(rest, "gen/") && !strings.HasPrefix(rest, "pkg/") && !strings.HasPrefix(rest, "tactl/") {
			t.Errorf("tactl depends on %s", pkg)
		}
	}
	if ours < 4 {
		t.Fatalf("go list -deps found only %d packages of the module:\n%s", ours, out)
	}
}
