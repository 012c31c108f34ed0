// Command tenant-agent runs on a tenant host, dials out to the control plane
// and applies runtime-image refreshes to the host's Docker Engine.
// "tenant-agent check" verifies its setup and exits.
package main

import "os"

func main() {
	os.Exit(Run(os.Args[1:], os.Stdout, os.Stderr))
}
