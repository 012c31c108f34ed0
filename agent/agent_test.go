package agent

import (
	"strings"
	"testing"
)

// A bad configuration is refused at start with every problem named at
// once, each by its flag.
func TestCheckAndSetDefaultsNamesEveryProblem(t *testing.T) {
	cfg := Defaults()
	cfg.ControlPlane = "no-port"
	cfg.Labels = nil
	cfg.RepositoryPattern = "workspace-template"
	cfg.MaxParallel = 0
	cfg.ControlPlaneID = "not-a-spiffe-id"
	err := cfg.CheckAndSetDefaults()
	if err == nil {
		t.Fatal("a bad configuration was accepted")
	}
	for _, want := range []string{"--control-plane", "--labels", "--repository-pattern", "--max-parallel", "--control-plane-id"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
}
