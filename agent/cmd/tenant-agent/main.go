// Command tenant-agent runs on a tenant host, dials out to the control plane
// and applies runtime-image refreshes to the host's Docker Engine.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/molecule-ai/tenant-agent/agent"
	"github.com/molecule-ai/tenant-agent/pkg/cliflag"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stdout)
	if errors.Is(err, cliflag.ErrExit) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tenant-agent:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "tenant-agent:", err)
		os.Exit(1)
	}
}
