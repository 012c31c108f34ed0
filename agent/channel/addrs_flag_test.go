package channel_test

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/molecule-ai/tenant-agent/agent"
)

// A bad --control-plane is refused at start, naming the entry at fault
// (at most 64 bytes of it).
func TestBadControlPlaneFlagRefused(t *testing.T) {
	for _, c := range []struct{ value, want string }{
		{"cp-a.example:7443,,cp-b.example:7443", `--control-plane: entry 2 of 3 is empty in "cp-a.example:7443,,cp-b.example:7443": want host:port`},
		{"cp-a.example:7443,cp-b.example", `--control-plane: entry "cp-b.example": want host:port`},
		{strings.TrimSuffix(strings.Repeat("cp.example:7443,", 17), ","), `--control-plane: 17 addresses, at most 16 (the 17th is "cp.example:7443")`},
		{strings.Repeat("x", 1000), `--control-plane: entry "` + strings.Repeat("x", 64) + `"… (1000 bytes): want host:port`},
	} {
		cfg := agent.Defaults()
		cfg.ControlPlane = c.value
		err := cfg.CheckAndSetDefaults()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--control-plane %.40q: %v\nwant %q", c.value, err, c.want)
		}
	}
	cfg := agent.Defaults()
	cfg.ControlPlane = "cp-a.example:7443, cp-b.example:7443"
	if err := cfg.CheckAndSetDefaults(); err != nil && strings.Contains(err.Error(), "--control-plane") {
		t.Errorf("a good list refused: %v", err)
	}
	if cfg.ServerName != "" {
		t.Errorf("ServerName defaulted to %q: each address's own host must be checked", cfg.ServerName)
	}
}

// The binary refuses a bad list from the flag's environment variable too,
// and exits non-zero saying which entry.
func TestBadControlPlaneEnvRefusedByTheBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the tenant-agent binary")
	}
	bin := filepath.Join(t.TempDir(), "tenant-agent")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/molecule-ai/tenant-agent/agent/cmd/tenant-agent").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "--state-dir", t.TempDir())
	cmd.Env = append(cmd.Environ(), "TENANT_AGENT_CONTROL_PLANE=cp-a.example:7443,cp-b.example")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("exit %v, want non-zero:\n%s", err, out)
	}
	if want := `--control-plane: entry "cp-b.example": want host:port`; !strings.Contains(string(out), want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
}
