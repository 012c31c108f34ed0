package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

// TestHoldReleaseDenyAllow: holds and denials through tactl, and what a
// promote does with a held tenant and with one whose agent is offline.
func TestHoldReleaseDenyAllow(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme", "beta", "gamma")
	c.agent("acme", cptest.Succeed)
	b := c.agent("beta", cptest.Succeed)
	g := c.agent("gamma", cptest.Succeed)

	if r := c.tactl("hold", "acme", "--reason", "incident 42"); r.code != 0 || !strings.HasPrefix(r.stdout, "tenant acme held since ") {
		t.Errorf("hold: %s", r)
	}
	if r := c.tactl("hold", "nobody"); r.code != 1 || !strings.Contains(r.stderr, "NotFound") {
		t.Errorf("hold of an unknown tenant: %s", r)
	}
	g.Close() // gamma's agent goes offline: its command will wait for it
	c.waitFor("gamma offline", func() bool {
		r := c.tactl("agents", "--tenant", "gamma", "--connected", "-o", "json")
		return r.code == 0 && !strings.Contains(r.stdout, "gamma")
	})
	r := c.tactl("promote", "codex", refV2, "--prefetch", "--progress", "plain")
	if r.code != 0 {
		t.Errorf("promote with a held tenant and an offline one: %s", r)
	}
	for _, want := range []string{`acme skipped: tenant is held: incident 42`, `beta \(prefetch\) +prefetched`,
		`gamma +pending: its agent is offline; the command waits for it \(tactl watch c-`, `beta +succeeded`,
		`completed: 3 tenants: 1 succeeded, 0 failed, 1 skipped, 1 waiting for their agent to connect`} {
		if !regexp.MustCompile(want).MatchString(r.stdout) {
			t.Errorf("promote output lacks %q: %s", want, r)
		}
	}
	if r := c.tactl("release", "acme"); r.code != 0 || r.stdout != "tenant acme released\n" {
		t.Errorf("release: %s", r)
	}
	if r := c.tactl("release", "acme"); r.code != 0 || r.stdout != "tenant acme was not held\n" {
		t.Errorf("second release: %s", r)
	}

	if r := c.tactl("deny", "tenant", "beta", "--reason", "host compromised"); r.code != 0 || r.stdout != "tenant beta denied; 1 streams closed\n" {
		t.Errorf("deny tenant: %s", r)
	}
	select {
	case <-b.Done():
	case <-time.After(10 * time.Second):
		t.Error("beta's agent was not disconnected")
	}
	if r := c.tactl("allow", "beta"); r.code != 0 || r.stdout != "tenant beta allowed\n" {
		t.Errorf("allow: %s", r)
	}
	src, err := mtls.NewSource(c.pki.Files("agent-gamma"), nil)
	if err != nil {
		t.Fatal(err)
	}
	serial := src.Current().Leaf.SerialNumber.Text(16)
	if r := c.tactl("deny", "cert", serial, "--reason", "lost laptop", "-o", "json"); r.code != 0 || !strings.HasPrefix(r.stdout, "{") {
		t.Errorf("deny cert -o json: %s", r)
	}
	if r := c.tactl("completion", "bash"); r.code != 0 || !strings.Contains(r.stdout, "__start_tactl") {
		t.Errorf("completion bash: exit %d", r.code)
	}
}
