// Package cli is tactl, the operator's command line for the control
// plane's admin API (controlplane.v1.AdminService): rollouts with live
// progress, refreshes, re-attaching to running work, tables of agents,
// pins, commands and rollouts, holds and denials. It speaks mTLS with the
// operator's or a service's certificate and exits with a code that tells
// what happened (see exitCodesHelp).
//
// tactl imports only gen/ and pkg/ of this module, never the control
// plane's or the agent's packages.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
	"github.com/molecule-ai/tenant-agent/pkg/version"
)

// errInterrupted is the cause of the context when Ctrl-C (SIGINT) or
// SIGTERM arrives; errTimeout when --timeout passes.
var (
	errInterrupted = errors.New("interrupted")
	errTimeout     = errors.New("timeout")
)

// IO is where tactl reads and writes.
type IO struct {
	Stdout, Stderr io.Writer
	// IsTerminal reports whether Stdout is a terminal (for
	// --progress=auto); nil means it is not.
	IsTerminal func() bool
}

// Run runs tactl with args (without the program name) on the process's
// standard streams and returns the exit code.
func Run(args []string) int {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	go func() {
		if _, ok := <-sig; !ok {
			return
		}
		cancel(errInterrupted)
		if _, ok := <-sig; ok {
			os.Exit(ExitInterrupted) // a second Ctrl-C: leave at once
		}
	}()
	stdout := os.Stdout
	return RunContext(ctx, args, IO{Stdout: stdout, Stderr: os.Stderr, IsTerminal: func() bool { return term.IsTerminal(int(stdout.Fd())) }})
}

// app holds the global flags and the connection of one run.
type app struct {
	io IO

	addr, cert, key, ca, serverName string
	configPath                      string
	timeout                         time.Duration
	output                          choice
	progress                        choice

	// ctx is the run's context; its cause says Ctrl-C.
	ctx    context.Context
	dialer *dialer
	// running is set once a command's RunE starts: an error before it is
	// cobra's, a usage error.
	running bool
}

var globalFlags = []string{"addr", "cert", "key", "ca", "server-name", "timeout", "output", "progress"}

// RunContext runs tactl; ctx's cancellation with errInterrupted is Ctrl-C.
func RunContext(ctx context.Context, args []string, streams IO) int {
	a := &app{io: streams, ctx: ctx,
		output:   choice{allowed: []string{"", "wide", "json"}},
		progress: choice{value: "auto", allowed: []string{"auto", "tty", "plain"}},
	}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(streams.Stdout)
	root.SetErr(streams.Stderr)
	err := root.ExecuteContext(ctx)
	if a.dialer != nil {
		a.dialer.close()
	}
	return a.exitCode(err)
}

func (a *app) exitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var se silentExit
	if errors.As(err, &se) {
		return int(se)
	}
	var ee *exitError
	if errors.As(err, &ee) {
		msg := ee.msg
		if ee.code == ExitUsage && !strings.Contains(msg, "--help") && !strings.Contains(msg, "usage:") {
			msg += " (see tactl --help)"
		}
		fmt.Fprintln(a.io.Stderr, "tactl: "+msg)
		return ee.code
	}
	if !a.running {
		// cobra's own errors: unknown command or flag, wrong arguments.
		fmt.Fprintln(a.io.Stderr, "tactl: "+err.Error()+" (see tactl --help)")
		return ExitUsage
	}
	fmt.Fprintln(a.io.Stderr, "tactl: "+err.Error())
	return ExitFailed
}

const rootLong = `tactl is the operator's command line for the tenant-agent control plane: it
promotes runtime images and follows the rollout with live progress, refreshes
one tenant, re-attaches to running work, lists agents, pins, commands and
rollouts, and holds, releases, denies and allows tenants.

It calls the control plane's admin API (controlplane.v1.AdminService) over
mutual TLS with an operator's or a service's certificate. Every global flag
may also be set by its TACTL_* environment variable (--server-name by
TACTL_SERVER_NAME) or in a config file, <user config dir>/tactl/config.yaml
(or config.json; --config or TACTL_CONFIG names another) with the flags'
names as keys:

  addr: cp.example:7444
  cert: operator.pem        # relative to the config file's folder
  key: operator-key.pem
  ca: ca.pem
  timeout: 30m

A flag wins over its variable, which wins over the file.

Progress: on a terminal, bars (--progress=tty); elsewhere, or with
--progress=plain, status lines: one per command state change and at most one
progress line a second per command. -o json prints one JSON event per line
(protojson) on streams and the API's response on tables.

Ctrl-C or --detach leaves the work running on the control plane and prints
how to re-attach (tactl watch ID). --timeout gives up waiting (exit 1); the
work goes on.

` + exitCodesHelp

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "tactl",
		Short:         "Operate the tenant-agent control plane: promote, refresh, watch, list, hold, deny",
		Long:          rootLong,
		Version:       version.String(),
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return a.setup(cmd)
		},
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usagef("%v (see %s --help)", err, c.CommandPath())
	})
	pf := root.PersistentFlags()
	pf.StringVar(&a.addr, "addr", "localhost:7444", "the control plane's admin address (host:port)")
	pf.StringVar(&a.cert, "cert", "", "client certificate (PEM): an operator's or a service's")
	pf.StringVar(&a.key, "key", "", "key of --cert (PEM)")
	pf.StringVar(&a.ca, "ca", "", "CA bundle the control plane's certificate is verified against (PEM)")
	pf.StringVar(&a.serverName, "server-name", "", "name the control plane's certificate must carry (default: the host of --addr)")
	pf.DurationVar(&a.timeout, "timeout", 0, "give up waiting after this long (exit 1; the work goes on); 0 waits until the end")
	pf.StringVar(&a.configPath, "config", "", "config file (default <user config dir>/tactl/config.yaml or config.json) [$TACTL_CONFIG]")
	pf.VarP(&a.output, "output", "o", "output format: wide or json (tables); json (streams: one event per line)")
	pf.Var(&a.progress, "progress", "progress display: auto (bars on a terminal), tty (bars) or plain (status lines)")
	for _, name := range globalFlags {
		f := pf.Lookup(name)
		f.Usage += " [$" + envName(name) + "]"
	}
	root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"wide", "json"}, cobra.ShellCompDirectiveNoFileComp))
	root.RegisterFlagCompletionFunc("progress", cobra.FixedCompletions([]string{"auto", "tty", "plain"}, cobra.ShellCompDirectiveNoFileComp))

	root.AddGroup(&cobra.Group{ID: "work", Title: "Rollouts and refreshes:"},
		&cobra.Group{ID: "read", Title: "Tables:"},
		&cobra.Group{ID: "admin", Title: "Holds and denials:"})
	for _, c := range []*cobra.Command{a.promoteCommand(), a.refreshCommand(), a.watchCommand(), a.rolloutCommand()} {
		c.GroupID = "work"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{a.agentsCommand(), a.pinsCommand(), a.commandsCommand(), a.rolloutsCommand()} {
		c.GroupID = "read"
		root.AddCommand(c)
	}
	for _, c := range a.adminCommands() {
		c.GroupID = "admin"
		root.AddCommand(c)
	}
	return root
}

// setup applies the environment and the config file to the global flags
// and prepares the connection; it runs before every command.
func (a *app) setup(cmd *cobra.Command) error {
	if a.configPath == "" {
		a.configPath = os.Getenv("TACTL_CONFIG")
	}
	cfg, cfgPath, err := loadConfig(a.configPath)
	if err != nil {
		return err
	}
	if err := applyDefaults(cmd.Flags(), globalFlags, cfg, cfgPath); err != nil {
		return err
	}
	if a.timeout < 0 {
		return usagef("--timeout %s is negative", a.timeout)
	}
	a.dialer = &dialer{addr: a.addr, serverName: a.serverName, files: mtls.Files{Cert: a.cert, Key: a.key, CA: a.ca}}
	a.running = true
	return nil
}

// context returns the context of a command's calls: the run's, with
// --timeout.
func (a *app) context() (context.Context, context.CancelFunc) {
	if a.timeout > 0 {
		return context.WithTimeoutCause(a.ctx, a.timeout, errTimeout)
	}
	return context.WithCancel(a.ctx)
}

// connect readies a command's calls: it checks -o against the outputs
// the command prints, connects to the admin API, and gives the calls'
// context (--timeout, Ctrl-C).
func (a *app) connect(cmd *cobra.Command, outputs ...string) (controlplanev1.AdminServiceClient, context.Context, context.CancelFunc, error) {
	if err := a.wantOutput(cmd, outputs...); err != nil {
		return nil, nil, nil, err
	}
	c, err := a.dialer.client()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := a.context()
	return c, ctx, cancel, nil
}

// tty reports whether progress is drawn as bars.
func (a *app) tty() bool {
	switch a.progress.value {
	case "tty":
		return true
	case "plain":
		return false
	}
	return a.io.IsTerminal != nil && a.io.IsTerminal()
}

// wantOutput checks -o against what a command supports.
func (a *app) wantOutput(cmd *cobra.Command, allowed ...string) error {
	if a.output.value == "" || contains(allowed, a.output.value) {
		return nil
	}
	return usagef("%s does not print -o %s (it prints: default%s)", cmd.CommandPath(), a.output.value, prefixEach(", ", allowed))
}

func prefixEach(p string, list []string) string {
	var b strings.Builder
	for _, s := range list {
		b.WriteString(p + s)
	}
	return b.String()
}

// choice is a flag value out of a fixed set.
type choice struct {
	value   string
	allowed []string
}

func (c *choice) String() string { return c.value }
func (c *choice) Type() string   { return "string" }
func (c *choice) Set(s string) error {
	if !contains(c.allowed, s) {
		var shown []string
		for _, a := range c.allowed {
			if a != "" {
				shown = append(shown, a)
			}
		}
		return fmt.Errorf("want %s", strings.Join(shown, ", "))
	}
	c.value = s
	return nil
}

// args wraps a cobra argument check so that its error is a usage error
// naming the command.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := check(cmd, a); err != nil {
			return usagef("%s: %v (usage: %s)", cmd.CommandPath(), err, cmd.UseLine())
		}
		return nil
	}
}
