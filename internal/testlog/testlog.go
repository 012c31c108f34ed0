// Package testlog collects what a component under test logs, so a test can
// assert on it, and echoes it to the test's own log with -v.
package testlog

import (
	"bytes"
	"io"
	"log/slog"
	"sync"
	"testing"
)

// Buffer is a log sink safe for concurrent writers.
type Buffer struct {
	mu            sync.Mutex
	buf           bytes.Buffer
	dumpOnFailure sync.Once
}

// failureTail is how much of a failed test's log is printed without -v:
// enough to see what led to the failure, not a whole run's chatter.
const failureTail = 64 << 10

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything logged so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Logger returns a debug-level text logger writing to b and, when the
// test runs with -v, to the test's log with name in front. Without -v, a
// test that fails prints the end of b when it finishes, so a failure in
// CI comes with what the component logged before it.
func (b *Buffer) Logger(t testing.TB, name string) *slog.Logger {
	b.dumpOnFailure.Do(func() {
		t.Cleanup(func() {
			if t.Failed() && !testing.Verbose() {
				t.Log(name + " logged (the last 64 KiB at most):\n" + b.tail(failureTail))
			}
		})
	})
	return slog.New(slog.NewTextHandler(io.MultiWriter(b, echo{t, name}), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (b *Buffer) tail(n int) string {
	s := b.String()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

type echo struct {
	t    testing.TB
	name string
}

func (e echo) Write(p []byte) (int, error) {
	if testing.Verbose() {
		e.t.Log(e.name + ": " + string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}
