package deploy

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
)

// The agent's unit keeps systemd's sandbox tight: it needs the Docker
// socket, its state and the network, nothing else.
func TestSystemdUnitExposureBelowFive(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze is missing (Debian's systemd package)")
		}
		t.Skip("systemd-analyze not installed")
	}
	out, _ := exec.Command("systemd-analyze", "security", "--offline=true", "systemd/tenant-agent.service").CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for tenant-agent.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	if score, _ := strconv.ParseFloat(string(m[1]), 64); score >= 5 {
		t.Fatalf("exposure %.1f; want below 5\n%s", score, out)
	}
}
