// Command devpki writes a development PKI for tenant-agent; see --help.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/molecule-ai/tenant-agent/certs/devpki"
	"github.com/molecule-ai/tenant-agent/pkg/cliflag"
)

func main() {
	if err := devpki.Run(os.Args[1:], os.Stdout); err != nil && !errors.Is(err, cliflag.ErrExit) {
		fmt.Fprintln(os.Stderr, "devpki:", err)
		os.Exit(2)
	}
}
