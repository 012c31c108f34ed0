// Command tactl is the operator's command line for the tenant-agent
// control plane (tactl --help; the code is in tactl/cli).
package main

import (
	"os"

	"github.com/molecule-ai/tenant-agent/tactl/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:]))
}
