package cliflag

import (
	"bytes"
	"errors"
	"flag"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func newSet() (*flag.FlagSet, *string, *time.Duration) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	addr := fs.String("listen-addr", ":1", "where to listen")
	interval := fs.Duration("heartbeat-interval", time.Second, "how often")
	return fs, addr, interval
}

var cmd = Command{Name: "x", Summary: "does x", EnvPrefix: "XTEST", Version: "v1.2.3"}

func TestEnvFallbackAndFlagWins(t *testing.T) {
	t.Setenv("XTEST_LISTEN_ADDR", ":2")
	t.Setenv("XTEST_HEARTBEAT_INTERVAL", "5s")

	fs, addr, interval := newSet()
	if _, err := cmd.Parse(fs, []string{"--listen-addr", ":3"}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if *addr != ":3" {
		t.Errorf("listen-addr = %q, want the flag's :3 over the environment", *addr)
	}
	if *interval != 5*time.Second {
		t.Errorf("heartbeat-interval = %v, want 5s from XTEST_HEARTBEAT_INTERVAL", *interval)
	}
}

func TestBadEnvValueNamesTheVariable(t *testing.T) {
	t.Setenv("XTEST_HEARTBEAT_INTERVAL", "soon")
	fs, _, _ := newSet()
	_, err := cmd.Parse(fs, nil, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "XTEST_HEARTBEAT_INTERVAL") {
		t.Fatalf("err = %v, want one naming XTEST_HEARTBEAT_INTERVAL", err)
	}
}

func TestHelpAndVersion(t *testing.T) {
	var out bytes.Buffer
	fs, _, _ := newSet()
	if _, err := cmd.Parse(fs, []string{"--help"}, &out); !errors.Is(err, ErrExit) {
		t.Fatalf("--help: err = %v, want ErrExit", err)
	}
	for _, want := range []string{"does x", "--listen-addr", "$XTEST_LISTEN_ADDR", `(default ":1")`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help output lacks %q:\n%s", want, out.String())
		}
	}

	out.Reset()
	fs, _, _ = newSet()
	if _, err := cmd.Parse(fs, []string{"--version"}, &out); !errors.Is(err, ErrExit) {
		t.Fatalf("--version: err = %v, want ErrExit", err)
	}
	if got := out.String(); got != "x v1.2.3\n" {
		t.Errorf("--version printed %q", got)
	}
}

func TestUnknownFlagAndStrayArgument(t *testing.T) {
	fs, _, _ := newSet()
	if _, err := cmd.Parse(fs, []string{"--nope"}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown flag: err = %v", err)
	}
	fs, _, _ = newSet()
	if _, err := cmd.Parse(fs, []string{"stray"}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "stray") {
		t.Errorf("stray argument: err = %v", err)
	}
}

func TestPositionalArguments(t *testing.T) {
	withArgs := cmd
	withArgs.Args = "[name ...]"
	fs, addr, _ := newSet()
	got, err := withArgs.Parse(fs, []string{"a", "--listen-addr", ":9", "b"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "a,b" || *addr != ":9" {
		t.Errorf("positional = %q, listen-addr = %q; want a,b and :9", got, *addr)
	}
}

func TestLoggerPrintsDurationsInSeconds(t *testing.T) {
	for format, want := range map[string][]string{
		"json": {`"in":1.5`, `"wait":0.002`, `"g":{"d":60}`},
		"text": {"in=1.5", "wait=0.002", "g.d=60"},
	} {
		var buf bytes.Buffer
		logger, err := NewLoggerTo(&buf, "info", format)
		if err != nil {
			t.Fatal(err)
		}
		logger.Info("step", "in", 1500*time.Millisecond, "wait", 2*time.Millisecond, slog.Group("g", "d", time.Minute), "n", 7)
		for _, w := range want {
			if !strings.Contains(buf.String(), w) {
				t.Errorf("%s: %q lacks %s", format, buf.String(), w)
			}
		}
		if strings.Contains(buf.String(), "1500000000") || strings.Contains(buf.String(), "1.5s") {
			t.Errorf("%s: a duration printed in its default form: %q", format, buf.String())
		}
	}
}
