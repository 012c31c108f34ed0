// Command controlplane serves the tenant agents' channel and the admin API.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/molecule-ai/tenant-agent/pkg/cliflag"
	"github.com/molecule-ai/tenant-agent/pkg/version"
)

const summary = `controlplane accepts the tenant agents' outbound mutual-TLS streams, keeps
each runtime's image pin, and pushes refreshes down the agents' own
connections. Its admin API (controlplane.v1.AdminService, with reflection)
serves the promote hook, operators with grpcurl, and dashboards.`

func main() {
	cmd := cliflag.Command{Name: "controlplane", Summary: summary, EnvPrefix: "CONTROLPLANE", Version: version.String()}
	fs := flag.NewFlagSet(cmd.Name, flag.ContinueOnError)
	if _, err := cmd.Parse(fs, os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, cliflag.ErrExit) {
			return
		}
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(2)
	}
	fmt.Fprintln(os.Stderr, "controlplane: the control plane is not built yet; see --help")
	os.Exit(1)
}
