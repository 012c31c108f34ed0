// Package cliflag gives both binaries the same command line: flags with
// PREFIX_* environment fallbacks (a flag on the command line wins), a
// --version flag, and a --help that names every variable.
package cliflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// EnvName is the environment variable that backs a flag:
// prefix "TENANT_AGENT" and flag "state-dir" give TENANT_AGENT_STATE_DIR.
func EnvName(prefix, flagName string) string {
	return prefix + "_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Command describes one binary's command line.
type Command struct {
	// Name is the binary's name, shown in usage.
	Name string
	// Summary is the paragraph shown above the flags in --help.
	Summary string
	// EnvPrefix is the prefix of the environment fallbacks.
	EnvPrefix string
	// Version is printed by --version.
	Version string
	// Args names the positional arguments in usage, e.g. "[tenant ...]";
	// empty means the command takes none.
	Args string
}

// ErrExit means the command line was fully handled (--help or --version)
// and the program should exit with status 0.
var ErrExit = errors.New("exit requested")

// Parse parses args into fs, applying environment fallbacks for every flag
// not given on the command line, and returns the positional arguments
// (flags may follow them). It handles --help and --version itself and then
// returns ErrExit. Errors name the flag or variable at fault.
func (c Command) Parse(fs *flag.FlagSet, args []string, stdout io.Writer) ([]string, error) {
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				c.Usage(fs, stdout)
				return nil, ErrExit
			}
			return nil, fmt.Errorf("%w (see %s --help)", err, c.Name)
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(positional) > 0 && c.Args == "" {
		return nil, fmt.Errorf("unexpected argument %q (see %s --help)", positional[0], c.Name)
	}
	if *showVersion {
		fmt.Fprintf(stdout, "%s %s\n", c.Name, c.Version)
		return nil, ErrExit
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || f.Name == "version" {
			return
		}
		name := EnvName(c.EnvPrefix, f.Name)
		value, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if err := fs.Set(f.Name, value); err != nil {
			errs = append(errs, fmt.Errorf("environment variable %s=%q is not a valid --%s: %v", name, value, f.Name, err))
		}
	})
	return positional, errors.Join(errs...)
}

// Usage writes the --help text: the summary, then each flag with its
// environment variable and default.
func (c Command) Usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, "Usage: %s [flags] %s\n\n%s\n\nFlags (each may also be set by the environment variable shown; a flag wins):\n", c.Name, c.Args, strings.TrimSpace(c.Summary))
	fs.VisitAll(func(f *flag.Flag) {
		typeName, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s", f.Name)
		if typeName != "" {
			fmt.Fprintf(w, " %s", typeName)
		}
		if f.Name != "version" {
			fmt.Fprintf(w, "   [$%s]", EnvName(c.EnvPrefix, f.Name))
		}
		fmt.Fprintf(w, "\n      %s", strings.ReplaceAll(usage, "\n", "\n      "))
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "[]" {
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

// NewLogger builds the slog logger of --log-level and --log-format, on
// standard error.
func NewLogger(level, format string) (*slog.Logger, error) {
	return NewLoggerTo(os.Stderr, level, format)
}

// NewLoggerTo is NewLogger writing to w.
func NewLoggerTo(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l, ReplaceAttr: durationSeconds}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// durationSeconds prints durations as seconds ("in":1.5): slog's JSON
// handler would print nanoseconds, which dashboards and people misread,
// and its text handler "1.5s", which log queries cannot compare.
func durationSeconds(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.Float64Value(a.Value.Duration().Seconds())
	}
	return a
}
