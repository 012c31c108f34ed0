package demokit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// Grpcurl calls the admin API with `go tool grpcurl` as the dev operator
// of the PKI in CertDir (devpki's layout).
type Grpcurl struct{ CertDir string }

// Command returns grpcurl calling controlplane.v1.AdminService/method on
// addr with the JSON request data.
func (g Grpcurl) Command(ctx context.Context, addr, data, method string) *exec.Cmd {
	return exec.CommandContext(ctx, "go", "tool", "grpcurl", "-cacert", g.CertDir+"/ca.pem", "-cert", g.CertDir+"/operator-dev.pem",
		"-key", g.CertDir+"/operator-dev-key.pem", "-servername", "localhost", "-d", data, addr, "controlplane.v1.AdminService/"+method)
}

// WaitForAgent waits up to a minute for tenant's agent to be connected to
// the control plane at adminAddr and to report runtime; logs says where
// to look if it does not.
func WaitForAgent(ctx context.Context, d *registrytest.Standalone, g Grpcurl, adminAddr, tenant, runtime, logs string) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := g.Command(ctx, adminAddr, `{"tenant":"`+tenant+`","connected_only":true}`, "ListAgents").Output()
		if err == nil && strings.Contains(string(out), `"runtime": "`+runtime+`"`) {
			fmt.Println("  the agent is connected and reports its containers")
			return
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			d.Fatal("the agent did not connect; see " + logs)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// RolloutEvent is a PromoteRuntimeImage event as grpcurl prints it.
type RolloutEvent struct {
	RolloutId, Kind, Phase, Tenant, CommandId, State, Message string
}

// Promote runs PromoteRuntimeImage through grpcurl on adminAddr with the
// JSON request, printing each rollout event, calling onEvent (if set)
// after printing it, and following each command it issues with watchers.
// It returns when the stream ends: whether it reported COMPLETED, and
// grpcurl's error if it failed (its message went to stderr). It does not
// wait for the watchers.
func Promote(ctx context.Context, d *registrytest.Standalone, g Grpcurl, adminAddr, request string, watchers *Watchers, onEvent func(RolloutEvent)) (completed bool, err error) {
	cmd := g.Command(ctx, adminAddr, request, "PromoteRuntimeImage")
	out, err := cmd.StdoutPipe()
	if err != nil {
		d.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		d.Fatal(err)
	}
	dec := json.NewDecoder(bufio.NewReader(out))
	for {
		var resp struct{ Event RolloutEvent }
		if err := dec.Decode(&resp); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			d.Fatal("reading the rollout stream: ", err)
		}
		ev := resp.Event
		fmt.Printf("  [rollout] %-16s %s\n", strings.TrimPrefix(ev.Kind, "ROLLOUT_EVENT_KIND_"), ev.Message)
		if onEvent != nil {
			onEvent(ev)
		}
		if ev.Kind == "ROLLOUT_EVENT_KIND_COMMAND_ISSUED" {
			watchers.Watch(ev.CommandId)
		}
		completed = completed || ev.Kind == "ROLLOUT_EVENT_KIND_COMPLETED"
	}
	return completed, cmd.Wait()
}

// Watchers follow commands with WatchCommand on Addr, printing each
// command's states and progress (a pull's repeated lines once).
type Watchers struct {
	Ctx  context.Context
	G    Grpcurl
	Addr string
	wg   sync.WaitGroup
}

// Watch follows command id until it ends or the watch's stream does.
func (w *Watchers) Watch(id string) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		w.watch(id)
	}()
}

// Wait waits for every watch to end.
func (w *Watchers) Wait() { w.wg.Wait() }

func (w *Watchers) watch(id string) {
	cmd := w.G.Command(w.Ctx, w.Addr, `{"command_id":"`+id+`"}`, "WatchCommand")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return
	}
	if err := cmd.Start(); err != nil {
		return
	}
	defer cmd.Wait()
	dec := json.NewDecoder(out)
	last := ""
	for {
		var resp struct {
			Event struct {
				State, Message string
				Progress       *struct{ Phase, Container string }
			}
		}
		if err := dec.Decode(&resp); err != nil {
			return
		}
		line := resp.Event.Message
		if p := resp.Event.Progress; p != nil && strings.HasSuffix(p.Phase, "PULLING") && line == last {
			continue
		}
		last = line
		fmt.Printf("  [%s] %-14s %s\n", id[:10], strings.TrimPrefix(resp.Event.State, "COMMAND_STATE_"), line)
	}
}
