// Package demokit is what the demo programs share (make demo, e2e/demo;
// make demo-ha, e2e/demoha): running a demo with its cleanups on success,
// failure and Ctrl-C, workspace containers of a tenant, the binaries as
// processes with their logs, the admin API through tactl (make demo's
// promote, with its bars) and through grpcurl with the rollout and command
// progress printed as it streams (make demo-ha).
//
// Failures are registrytest.Standalone's: Fatal panics with a
// registrytest.Failure, which Run recovers after running the cleanups.
package demokit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// Demo describes a demo program for Run.
type Demo struct {
	// Name starts the final line: "<Name> failed: …" or "<Name> passed: …".
	Name string
	// Passed is what the final line says on success.
	Passed string
	// OnFailure, if set, runs after a failure and before the cleanups
	// (while the processes' logs still exist), e.g. to print log tails.
	OnFailure func()
	// Body is the demo. It fails through d.Fatal; ctx ends on Ctrl-C or
	// SIGTERM.
	Body func(ctx context.Context, d *registrytest.Standalone) int
}

// Run runs the demo and then its cleanups, whatever happens, and returns
// the exit code: 0 only if Body returned 0 without failing.
func Run(demo Demo) (code int) {
	d := &registrytest.Standalone{}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(registrytest.Failure)
			if !ok {
				// A bug in the demo: still remove what it started.
				d.RunCleanups()
				panic(r)
			}
			if ctx.Err() != nil {
				f.Msg = "interrupted (" + f.Msg + ")"
			}
			fmt.Fprintln(os.Stderr, "\n"+demo.Name+" failed:", f.Msg)
			code = 1
			if demo.OnFailure != nil {
				demo.OnFailure()
			}
		}
		Step("cleaning up")
		d.RunCleanups()
		if code == 0 {
			fmt.Println("\n" + demo.Name + " passed: " + demo.Passed)
		}
	}()
	return demo.Body(ctx, d)
}

// Step prints a step's heading.
func Step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

// RandomHex returns n random bytes in hex, for names unique to a run.
func RandomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Docker returns a client for the local daemon, failing unless it answers.
func Docker(ctx context.Context, d *registrytest.Standalone) *client.Client {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		d.Fatal("docker: ", err)
	}
	if _, err := cli.Ping(ctx); err != nil {
		d.Fatal("the Docker daemon is not reachable: ", err)
	}
	return cli
}

// Labelled counts the containers, running or not, that carry tenant's
// label.
func Labelled(ctx context.Context, d *registrytest.Standalone, cli *client.Client, tenant string) int {
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "molecule.org-id="+tenant))})
	if err != nil {
		d.Fatal("list containers: ", err)
	}
	return len(list)
}

// Pull pulls ref and waits for the pull to finish.
func Pull(ctx context.Context, d *registrytest.Standalone, cli *client.Client, ref string) {
	rc, err := cli.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		d.Fatal(err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
}

// MustRun runs a command to its end, failing with its output if it fails.
func MustRun(ctx context.Context, d *registrytest.Standalone, name string, args ...string) {
	cmd := exec.CommandContext(ctx, name, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		d.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
