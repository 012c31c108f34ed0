package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/molecule-ai/tenant-agent/agent"
	"github.com/molecule-ai/tenant-agent/pkg/cliflag"
)

// Run is the command line: "tenant-agent [flags]" runs the agent until
// SIGINT or SIGTERM; "tenant-agent check [flags]" (the same flags) checks
// the certificate, key and CA, the control plane, Docker and the managed
// containers, one line each, and exits 0 only if all pass. It returns the
// exit status.
func Run(args []string, stdout, stderr io.Writer) int {
	check := len(args) > 0 && args[0] == "check"
	if check {
		args = args[1:]
	}
	cfg, err := parseFlags(args, stdout)
	if errors.Is(err, cliflag.ErrExit) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "tenant-agent:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if check {
		if !agent.Check(ctx, cfg, stdout) {
			return 1
		}
		return 0
	}
	if err := agent.Run(ctx, cfg); err != nil {
		fmt.Fprintln(stderr, "tenant-agent:", err)
		return 1
	}
	return 0
}
