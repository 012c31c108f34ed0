// Command tenant-agent runs on a tenant host, dials out to the control plane
// and applies runtime-image refreshes to the host's Docker Engine.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/molecule-ai/tenant-agent/pkg/cliflag"
	"github.com/molecule-ai/tenant-agent/pkg/version"
)

const summary = `tenant-agent keeps one mutual-TLS gRPC stream open to the control plane,
dialed out from the tenant host, so the control plane can push
RefreshRuntimeImage(runtime, digest) through the tenant's own connection.
It pulls the image by digest through the Docker Engine API and recreates the
runtime's containers on it, keeping their volumes, config and data.`

func main() {
	cmd := cliflag.Command{Name: "tenant-agent", Summary: summary, EnvPrefix: "TENANT_AGENT", Version: version.String()}
	fs := flag.NewFlagSet(cmd.Name, flag.ContinueOnError)
	if _, err := cmd.Parse(fs, os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, cliflag.ErrExit) {
			return
		}
		fmt.Fprintln(os.Stderr, "tenant-agent:", err)
		os.Exit(2)
	}
	fmt.Fprintln(os.Stderr, "tenant-agent: the agent is not built yet; see --help")
	os.Exit(1)
}
