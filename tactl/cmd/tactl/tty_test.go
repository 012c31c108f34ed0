package main

import (
	"bytes"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/hinshun/vt10x"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
)

const ttyCols, ttyRows = 140, 60

// underPTY runs tactl on a pseudo-terminal of ttyCols x ttyRows and
// returns everything it wrote and its exit code.
func (c *cp) underPTY(args ...string) ([]byte, int) {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "tactl"), args...)
	cmd.Env = c.env("operator-dev")
	f, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: ttyCols, Rows: ttyRows})
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	read := make(chan error, 1)
	go func() {
		_, err := io.Copy(&out, f) // ends with EIO once tactl exits
		read <- err
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		cmd.Process.Kill()
		<-done
		c.t.Fatalf("tactl %v did not finish; output so far:\n%q", args, out.String())
	}
	select {
	case <-read:
	case <-time.After(5 * time.Second):
	}
	return out.Bytes(), cmd.ProcessState.ExitCode()
}

// screen is what a terminal shows after raw: its non-empty lines,
// trailing spaces trimmed.
func screen(raw []byte) []string {
	term := vt10x.New(vt10x.WithSize(ttyCols, ttyRows))
	term.Write(raw)
	var lines []string
	for _, l := range strings.Split(term.String(), "\n") {
		if l = strings.TrimRight(l, " \x00"); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestBarsOnATerminal: under a pseudo-terminal, promote draws the overall
// bar and a bar per tenant in flight (the pull's bytes, then the recreate
// step), and the final screen is one result line per tenant and the
// rollout's end, with no bar left over.
func TestBarsOnATerminal(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme", "beta", "gamma")
	for _, tenant := range []string{"acme", "beta", "gamma"} {
		var a atomic.Pointer[cptest.Agent]
		a.Store(c.agent(tenant, slow(&a, 1200*time.Millisecond)))
	}
	raw, code := c.underPTY("promote", "codex", refV2, "--max-parallel", "2")
	if code != 0 {
		t.Fatalf("exit %d; output:\n%q", code, raw)
	}
	out := string(raw)
	for _, want := range []string{"\x1b[", "A\x1b[J", "fleet", "[==", "pulling ", "MiB / 13.0 MiB", "codex-a: ", "/3 tenants: "} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the frames drawn", want)
		}
	}
	lines := screen(raw)
	t.Logf("final screen:\n%s", strings.Join(lines, "\n"))
	var results int
	for _, l := range lines {
		if strings.ContainsAny(l, "[]") || strings.Contains(l, "pulling") || strings.Contains(l, "waiting") && !strings.Contains(l, "0 waiting") {
			t.Errorf("a bar or a status is left on the final screen: %q", l)
		}
		if strings.HasPrefix(l, "✔ ") && strings.Contains(l, "succeeded: 1 recreated") {
			results++
		}
	}
	if results != 3 {
		t.Errorf("%d result lines, want one per tenant (3)", results)
	}
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "rollout r-") || !strings.Contains(last, "completed: 3 tenants: 3 succeeded") {
		t.Errorf("last line %q", last)
	}
}

// TestLayerBarsOnATerminal: a refresh on a terminal draws a bar per layer
// while the agent pulls, and ends as its header and one result line.
func TestLayerBarsOnATerminal(t *testing.T) {
	t.Parallel()
	c := startCP(t, "acme")
	var a atomic.Pointer[cptest.Agent]
	a.Store(c.agent("acme", slow(&a, 1200*time.Millisecond)))
	raw, code := c.underPTY("refresh", "acme", "codex", "--digest", digestV2)
	if code != 0 {
		t.Fatalf("exit %d; output:\n%q", code, raw)
	}
	out := string(raw)
	for _, want := range []string{"layer0000000", "layer1000000", "layer2000000", "Downloading ", "MiB / 8.0 MiB", "waiting for the health gate"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the frames drawn", want)
		}
	}
	lines := screen(raw)
	t.Logf("final screen:\n%s", strings.Join(lines, "\n"))
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "refreshing acme's codex to "+digestV2) || !strings.HasPrefix(lines[1], "✔ acme ") || !strings.Contains(lines[1], " succeeded: 1 recreated") {
		t.Errorf("final screen: want the header and one result line")
	}
}
