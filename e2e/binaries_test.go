package e2e

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds controlplane and tenant-agent once per test process,
// with the failpoints build tag: the tests that kill the agent between two
// recreate steps set its crash point through its environment
// (agent/failpoint).
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "tenant-agent-e2e-bin")
		if buildErr != nil {
			return
		}
		for name, pkg := range map[string]string{"controlplane": "../controlplane/cmd/controlplane", "tenant-agent": "../agent/cmd/tenant-agent"} {
			out, err := exec.Command("go", "build", "-tags", "failpoints", "-o", filepath.Join(binDir, name), pkg).CombinedOutput()
			if err != nil {
				buildErr = err
				binDir = string(out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatalf("build binaries: %v\n%s", buildErr, binDir)
	}
	return binDir
}

// process is a binary the test runs, kills and restarts.
type process struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	logs *testlog.Buffer
	done chan struct{}
	once sync.Once
}

// startProcess runs bin with args and waits for a log line containing
// ready (if not empty).
func startProcess(t *testing.T, name, bin, ready string, env []string, args ...string) *process {
	t.Helper()
	p := &process{t: t, name: name, cmd: exec.Command(bin, args...), logs: &testlog.Buffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	readyC := make(chan struct{})
	var readyOnce sync.Once
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.logs.Write([]byte(line + "\n"))
			if testing.Verbose() {
				t.Log(name + ": " + line)
			}
			if ready != "" && strings.Contains(line, ready) {
				readyOnce.Do(func() { close(readyC) })
			}
		}
		io.Copy(io.Discard, stderr)
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.stop)
	if ready == "" {
		return p
	}
	select {
	case <-readyC:
	case <-p.done:
		t.Fatalf("%s exited before it was ready:\n%s", name, p.logs.String())
	case <-time.After(wait):
		t.Fatalf("%s not ready after %s", name, wait)
	}
	return p
}

// kill is kill -9.
func (p *process) kill() {
	p.once.Do(func() {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	})
}

// stop is a graceful SIGTERM.
func (p *process) stop() {
	p.once.Do(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// cpAddrs are fixed addresses, so a restarted control plane comes back
// where its agents redial.
type cpAddrs struct{ agent, admin, http string }

func (e *env) freeCPAddrs() cpAddrs {
	return cpAddrs{agent: registrytest.FreeAddr(e.t), admin: registrytest.FreeAddr(e.t), http: registrytest.FreeAddr(e.t)}
}

// startCPBinary runs the controlplane binary on addrs with the env's store.
func (e *env) startCPBinary(addrs cpAddrs, extra ...string) *process {
	files := e.pki.Files("controlplane")
	args := append([]string{"--agent-addr", addrs.agent, "--admin-addr", addrs.admin, "--http-addr", addrs.http,
		"--cert", files.Cert, "--key", files.Key, "--ca", files.CA, "--store", e.store,
		"--heartbeat-interval", "1s", "--reconnect-stagger", "1s", "--log-level", "debug"}, extra...)
	p := startProcess(e.t, "cp", filepath.Join(binaries(e.t), "controlplane"), "control plane serving", nil, args...)
	e.adminAddr = addrs.admin
	return p
}

// startAgentBinary runs the tenant-agent binary for tenant.
func (e *env) startAgentBinary(tenant, addr, stateDir string, env []string, extra ...string) *process {
	files := e.pki.Files("agent-" + tenant)
	args := append([]string{"--control-plane", addr, "--server-name", "localhost", "--cert", files.Cert, "--key", files.Key, "--ca", files.CA,
		"--state-dir", stateDir, "--labels", "molecule.org-id={tenant}-" + e.run + ",molecule.platform.managed=true",
		"--health-gate-timeout", "30s", "--stability-window", "1s", "--min-free-disk", "64MiB", "--log-level", "debug"}, extra...)
	return startProcess(e.t, "agent-"+tenant, filepath.Join(binaries(e.t), "tenant-agent"), "", env, args...)
}
