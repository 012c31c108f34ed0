package main

// The tests drive the real tactl binary against the real controlplane
// binary over mTLS on loopback, with fake agents (controlplane/cptest)
// speaking the real agent protocol to it.

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/mtls"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const (
	repo     = "registry.example/molecule-ai/workspace-template-codex"
	digestV1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	digestV2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	refV2    = repo + "@" + digestV2
)

var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "tactl-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	for name, pkg := range map[string]string{"controlplane": "../../../controlplane/cmd/controlplane", "tactl": "."} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", name, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// cp is a running controlplane binary with its PKI.
type cp struct {
	t                    *testing.T
	pki                  *pkitest.PKI
	agentAddr, adminAddr string
	logs                 *syncBuffer
	client               controlplanev1.AdminServiceClient
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startCP runs the controlplane binary with a dev PKI holding agent
// certificates for tenants.
func startCP(t *testing.T, tenants ...string) *cp {
	t.Helper()
	p := pkitest.New(t, tenants...)
	c := &cp{t: t, pki: p, agentAddr: freeAddr(t), adminAddr: freeAddr(t), logs: &syncBuffer{}}
	files := p.Files("controlplane")
	dir := t.TempDir()
	cmd := exec.Command(filepath.Join(binDir, "controlplane"), "--agent-addr", c.agentAddr, "--admin-addr", c.adminAddr, "--http-addr", freeAddr(t),
		"--cert", files.Cert, "--key", files.Key, "--ca", files.CA, "--store", filepath.Join(dir, "cp.db"),
		"--reconnect-stagger", "0s", "--shutdown-grace", "1s", "--log-level", "debug")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	serving, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			c.logs.Write([]byte(sc.Text() + "\n"))
			if strings.Contains(sc.Text(), "control plane serving") {
				once.Do(func() { close(serving) })
			}
		}
		cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("controlplane log:\n%s", c.logs.String())
		}
	})
	select {
	case <-serving:
	case <-exited:
		t.Fatalf("controlplane exited early:\n%s", c.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("controlplane did not start")
	}
	src, err := mtls.NewSource(p.Files("operator-dev"), nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.adminAddr, grpc.WithTransportCredentials(mtls.ClientCredentials(src, "localhost")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c.client = controlplanev1.NewAdminServiceClient(conn)
	return c
}

// agent connects a fake agent of tenant reporting runtime codex with one
// container on v1, and waits until the control plane lists it.
func (c *cp) agent(tenant string, exec cptest.Executor) *cptest.Agent {
	c.t.Helper()
	a := cptest.Connect(c.t, c.agentAddr, c.pki.Files("agent-"+tenant), cptest.Options{
		Runtimes: []*tenantagentv1.RuntimeStatus{cptest.Runtime("codex", repo, digestV1, 1)}, Executor: exec})
	c.waitFor(fmt.Sprintf("agent %s connected", tenant), func() bool {
		resp, err := c.client.ListAgents(context.Background(), &controlplanev1.ListAgentsRequest{Tenant: tenant, ConnectedOnly: true})
		return err == nil && len(resp.GetAgents()) == 1 && len(resp.GetAgents()[0].GetRuntimes()) == 1
	})
	return a
}

func (c *cp) waitFor(what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// env is the environment tactl runs with: the operator's certificate
// through the TACTL_* fallbacks, no config file.
func (c *cp) env(stem string) []string {
	f := c.pki.Files(stem)
	return append(os.Environ(), "TACTL_ADDR="+c.adminAddr, "TACTL_CERT="+f.Cert, "TACTL_KEY="+f.Key, "TACTL_CA="+f.CA,
		"TACTL_SERVER_NAME=localhost", "XDG_CONFIG_HOME="+c.t.TempDir(), "HOME="+c.t.TempDir())
}

// result is a finished tactl run.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// tactl runs the tactl binary as the dev operator and waits for it.
func (c *cp) tactl(args ...string) result {
	c.t.Helper()
	return runTactl(c.t, c.env("operator-dev"), args...)
}

func runTactl(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "tactl"), args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("tactl %v did not finish:\nstdout:\n%s\nstderr:\n%s", args, stdout.String(), stderr.String())
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
}

// start runs tactl in the background; wait returns its result.
func (c *cp) start(args ...string) (wait func() result) {
	c.t.Helper()
	ch := make(chan result, 1)
	go func() { ch <- runTactl(c.t, c.env("operator-dev"), args...) }()
	return func() result { return <-ch }
}

var (
	rolloutIDs = regexp.MustCompile(`\br-[a-z0-9]{10,}\b`)
	commandIDs = regexp.MustCompile(`\bc-[a-z0-9]{10,}\b`)
	stamps     = regexp.MustCompile(`\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b`)
	ageCell    = regexp.MustCompile(`^\d+[smhd]$`)
	cellSep    = regexp.MustCompile(` {2,}`)
	pkiDirs    = regexp.MustCompile(`/tmp/\S*`)
)

// normalize replaces what changes between runs: rollout and command IDs
// (numbered in order of appearance), times, ages, temporary paths.
func normalize(s string) string {
	number := func(re *regexp.Regexp, prefix string) {
		seen := map[string]string{}
		s = re.ReplaceAllStringFunc(s, func(id string) string {
			if n, ok := seen[id]; ok {
				return n
			}
			seen[id] = fmt.Sprintf("%s%d", prefix, len(seen)+1)
			return seen[id]
		})
	}
	number(rolloutIDs, "r-ROLLOUT")
	number(commandIDs, "c-COMMAND")
	s = stamps.ReplaceAllString(s, "TIME")
	s = pkiDirs.ReplaceAllString(s, "TMP")
	return s
}

var progressLine = regexp.MustCompile(`(?m)^\S+ +pulling .*\n`)

// dropProgress removes a rollout's progress lines: they come from each
// command's own watch, which may attach after a fast fake agent's only
// progress report (the state and result lines come from the rollout's
// stream, in its order).
func dropProgress(s string) string { return progressLine.ReplaceAllString(s, "") }

var earlyState = regexp.MustCompile(`(?m)^\S+ +(pending|sent|acked)\n`)

// dropEarlyStates removes a command's pending, sent and acked lines: the
// stream opens with the command as stored, which a fast fake agent may
// already have acked.
func dropEarlyStates(s string) string { return earlyState.ReplaceAllString(s, "") }

// cells normalizes a table: its columns joined by " | " (their widths
// depend on what is in them), ages as AGE.
func cells(s string) string {
	var out []string
	for _, line := range strings.Split(strings.TrimRight(normalize(s), "\n"), "\n") {
		cs := cellSep.Split(strings.TrimRight(line, " "), -1)
		for i, c := range cs {
			if ageCell.MatchString(c) {
				cs[i] = "AGE"
			}
		}
		out = append(out, strings.Join(cs, " | "))
	}
	return strings.Join(out, "\n") + "\n"
}

// golden compares got with testdata/name (rewriting it with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it); got:\n%s", err, got)
	}
	if string(want) != got {
		t.Errorf("%s differs (go test -run %s -update rewrites it)\n--- want:\n%s--- got:\n%s", path, t.Name(), want, got)
	}
}

// fail is an executor whose pull fails.
func fail(msg string) cptest.Executor {
	return func(cmd *tenantagentv1.RefreshRuntimeImage) *tenantagentv1.CommandResult {
		return &tenantagentv1.CommandResult{CommandId: cmd.GetCommandId(), Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED,
			Error: msg, FailedPhase: tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING}
	}
}

// slow is an executor that reports a pull of three layers over about
// pull, then the recreate steps of one container, then succeeds.
func slow(agent *atomic.Pointer[cptest.Agent], pull time.Duration) cptest.Executor {
	return func(cmd *tenantagentv1.RefreshRuntimeImage) *tenantagentv1.CommandResult {
		a := agent.Load()
		seq := uint64(10)
		send := func(p *tenantagentv1.CommandProgress) {
			seq++
			p.CommandId, p.Sequence, p.Time = cmd.GetCommandId(), seq, timestamppb.Now()
			_ = a.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Progress{Progress: p}})
		}
		sizes := []uint64{8 << 20, 4 << 20, 1 << 20}
		const steps = 10
		for i := 0; i <= steps; i++ {
			p := &tenantagentv1.CommandProgress{Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING}
			for j, size := range sizes {
				cur := size * uint64(i) / steps
				status := "Downloading"
				if i == steps {
					status = "Pull complete"
				}
				p.Layers = append(p.Layers, &tenantagentv1.LayerProgress{Id: fmt.Sprintf("layer%d%s", j, strings.Repeat("0", 12)), Status: status, CurrentBytes: cur, TotalBytes: size})
				p.CurrentBytes += cur
				p.TotalBytes += size
			}
			send(p)
			time.Sleep(pull / steps)
		}
		for _, ph := range []tenantagentv1.CommandPhase{tenantagentv1.CommandPhase_COMMAND_PHASE_PULLED, tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING,
			tenantagentv1.CommandPhase_COMMAND_PHASE_STOPPING, tenantagentv1.CommandPhase_COMMAND_PHASE_SWAPPING, tenantagentv1.CommandPhase_COMMAND_PHASE_STARTING,
			tenantagentv1.CommandPhase_COMMAND_PHASE_HEALTH_GATE, tenantagentv1.CommandPhase_COMMAND_PHASE_REMOVING_OLD, tenantagentv1.CommandPhase_COMMAND_PHASE_CONTAINER_DONE} {
			c := "codex-a"
			if ph == tenantagentv1.CommandPhase_COMMAND_PHASE_PULLED {
				c = ""
			}
			send(&tenantagentv1.CommandProgress{Phase: ph, Container: c})
			wait := pull / 20
			if ph == tenantagentv1.CommandPhase_COMMAND_PHASE_HEALTH_GATE {
				// Long enough for a few frames however loaded the machine:
				// the terminal test looks for this step on screen.
				wait = pull / 3
			}
			time.Sleep(wait)
		}
		r := cptest.Succeed(cmd)
		r.PulledBytes, r.PullDuration = 13<<20, durationpb.New(pull)
		return r
	}
}
