package demokit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// Tactl runs bin/tactl (make build) as the dev operator of the PKI in
// CertDir (devpki's layout) against the admin API at Addr, through its
// TACTL_* environment variables.
type Tactl struct{ CertDir, Addr string }

// Env is the environment that points tactl at the demo's control plane.
func (c Tactl) Env() []string {
	return []string{"TACTL_ADDR=" + c.Addr, "TACTL_CERT=" + c.CertDir + "/operator-dev.pem", "TACTL_KEY=" + c.CertDir + "/operator-dev-key.pem",
		"TACTL_CA=" + c.CertDir + "/ca.pem", "TACTL_SERVER_NAME=localhost"}
}

// Command returns bin/tactl with args.
func (c Tactl) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "bin/tactl", args...)
	cmd.Env = append(os.Environ(), c.Env()...)
	return cmd
}

// Run runs tactl on the demo's own terminal (so it draws bars there) and
// returns its exit status; it fails only if tactl cannot be started.
func (c Tactl) Run(ctx context.Context, d *registrytest.Standalone, args ...string) int {
	shown := make([]string, len(args))
	for i, a := range args {
		shown[i] = a
		if a == "" || strings.ContainsAny(a, " '\"$") {
			shown[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	fmt.Printf("  $ tactl %s\n", strings.Join(shown, " "))
	cmd := c.Command(ctx, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		d.Fatalf("tactl %s: %v (run make build first)", strings.Join(args, " "), err)
	}
	return 0
}

// WaitOnPin waits up to 15 s for tenant's agent to report n containers of
// runtime on the pin (its health report follows the recreate).
func (c Tactl) WaitOnPin(ctx context.Context, tenant, runtime string, n int) bool {
	deadline := time.Now().Add(15 * time.Second)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		out, err := c.Command(ctx, "agents", "--tenant", tenant, "-o", "json").Output()
		var resp struct {
			Agents []struct {
				Runtimes []struct {
					Status struct{ Runtime string }
					OnPin  int
				}
			}
		}
		if err == nil && json.Unmarshal(out, &resp) == nil {
			for _, a := range resp.Agents {
				for _, r := range a.Runtimes {
					if r.Status.Runtime == runtime && r.OnPin == n {
						return true
					}
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return false
}

// WaitForAgent waits up to a minute, with tactl agents, for tenant's
// agent to be connected and to report runtime; logs says where to look
// if it does not.
func (c Tactl) WaitForAgent(ctx context.Context, d *registrytest.Standalone, tenant, runtime, logs string) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := c.Command(ctx, "agents", "--tenant", tenant, "--connected", "-o", "json").Output()
		var resp struct {
			Agents []struct {
				Runtimes []struct{ Status struct{ Runtime string } }
			}
		}
		if err == nil && json.Unmarshal(out, &resp) == nil {
			for _, a := range resp.Agents {
				for _, r := range a.Runtimes {
					if r.Status.Runtime == runtime {
						fmt.Println("  the agent is connected and reports its containers")
						return
					}
				}
			}
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			d.Fatal("the agent did not connect; see " + logs)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
