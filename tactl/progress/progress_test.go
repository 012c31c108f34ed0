package progress

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hinshun/vt10x"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestPlainThrottlesProgress: a pull reporting 4 times a second for a
// second prints a line per state change, the first progress line at
// once, at most one more per interval, and the result: never a line per
// report.
func TestPlainThrottlesProgress(t *testing.T) {
	var out lockedBuffer
	b := New(Options{Out: &out, Interval: 300 * time.Millisecond})
	it := b.Item("c-1", "acme")
	it.State("sent")
	it.State("sent") // no change, no line
	it.State("running")
	start := time.Now()
	for i := 0; i <= 40; i++ {
		it.Progress(Step{Pull: true, Current: uint64(i) << 20, Total: 40 << 20})
		time.Sleep(25 * time.Millisecond)
	}
	elapsed := time.Since(start)
	it.Done(OK, "succeeded")
	b.Close("done")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	progress := 0
	for _, l := range lines {
		if strings.Contains(l, "pulling") {
			progress++
		}
	}
	if max := int(elapsed/(300*time.Millisecond)) + 2; progress < 2 || progress > max {
		t.Errorf("%d progress lines in %s, want 2 to %d:\n%s", progress, elapsed, max, out.String())
	}
	if lines[0] != "acme      sent" || lines[1] != "acme      running" || lines[len(lines)-2] != "acme      succeeded" || lines[len(lines)-1] != "done" {
		t.Errorf("lines:\n%s", out.String())
	}
	if !strings.Contains(lines[2], "pulling 0 B") {
		t.Errorf("the first progress line is not printed at once: %q", lines[2])
	}
}

func TestStepText(t *testing.T) {
	for _, tc := range []struct {
		s    Step
		want string
	}{
		{Step{Pull: true}, "pulling"},
		{Step{Pull: true, Current: 512, Total: 1024}, "pulling 512 B / 1.0 KiB (50%)"},
		{Step{Pull: true, Current: 3 << 20, Total: 12 << 20, Layers: []Layer{{ID: "a", Current: 1, Total: 1}, {ID: "b", Status: "Downloading", Total: 5}}}, "pulling 3.0 MiB / 12.0 MiB (25%), 1 of 2 layers done"},
		{Step{Text: "ws-1: waiting for the health gate"}, "ws-1: waiting for the health gate"},
	} {
		if got := StepText(tc.s); got != tc.want {
			t.Errorf("StepText(%+v) = %q, want %q", tc.s, got, tc.want)
		}
	}
	if got := Bytes(40 << 30); got != "40.0 GiB" {
		t.Errorf("Bytes = %q", got)
	}
}

// TestTTYEndsClean: bars drawn to a non-terminal with TTY forced end as
// the result lines and the final line, after the last frame is erased.
func TestTTYEndsClean(t *testing.T) {
	var out lockedBuffer
	b := New(Options{Out: &out, TTY: true, RefreshRate: 20 * time.Millisecond})
	b.Println("header")
	b.Overall("fleet", Counts{Total: 2})
	x, y := b.Item("c-1", "acme"), b.Item("c-2", "beta")
	x.Progress(Step{Pull: true, Current: 1, Total: 4})
	y.State("sent")
	time.Sleep(100 * time.Millisecond)
	x.Done(OK, "succeeded")
	b.Overall("fleet", Counts{Total: 2, Succeeded: 1})
	time.Sleep(60 * time.Millisecond)
	y.Done(Failed, "failed: boom")
	b.Close("rollout completed")
	s := out.String()
	if !strings.Contains(s, "acme") || !strings.Contains(s, "[") || !strings.Contains(s, "\x1b[J") {
		t.Errorf("no bars drawn: %q", s)
	}
	term := vt10x.New(vt10x.WithSize(100, 20))
	term.Write([]byte(strings.ReplaceAll(s, "\n", "\r\n")))
	var lines []string
	for _, l := range strings.Split(term.String(), "\n") {
		if l = strings.TrimRight(l, " \x00"); l != "" {
			lines = append(lines, l)
		}
	}
	want := []string{"header", "✔ acme      succeeded", "✘ beta      failed: boom", "rollout completed"}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("final screen:\n%s\nwant:\n%s\n(raw %q)", strings.Join(lines, "\n"), strings.Join(want, "\n"), s)
	}
}
