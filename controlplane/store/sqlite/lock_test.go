package sqlite

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/certs/pkitest"
)

// A second Open of the same file fails at once, naming the file and the
// holder, until the first is closed; two opens in one process conflict
// too (flock locks belong to the open file description).
func TestSecondOpenRefused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "x.db")
	first := open(t, path)

	start := time.Now()
	second, err := Open(ctx, path)
	if err == nil {
		second.Close()
		t.Fatal("a second Open of the same file succeeded")
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Errorf("the refused Open took %s: the lock must not wait", waited)
	}
	var inUse *InUseError
	if !errors.As(err, &inUse) {
		t.Fatalf("error is %T, not *InUseError: %v", err, err)
	}
	want := fmt.Sprintf("store %s is in use by another control plane (pid %d); a SQLite store serves one control plane: run replicas on --store postgres://…", path, os.Getpid())
	if err.Error() != want {
		t.Errorf("error:\n%s\nwant:\n%s", err, want)
	}
	info, err := os.Stat(path + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Errorf("lock file mode %o, want 600", mode)
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil { // Close twice is harmless
		t.Fatalf("second Close: %v", err)
	}
	again, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	again.Close()
}

// An Open that fails after taking the lock (here: a migration fails on a
// file that is not a database) releases it.
func TestFailedOpenReleasesLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	if err := os.WriteFile(path, bytes.Repeat([]byte("not a database "), 512), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), path); err == nil {
		t.Fatal("opened a file that is not a database")
	}
	l, err := lockStore(path)
	if err != nil {
		t.Fatalf("the failed Open kept the lock: %v", err)
	}
	l.release()
}

// The real thing: a controlplane process serves on the file, a second one
// started on it exits non-zero with one line naming the file and the
// first one's PID, and after the first is killed (kill -9: no chance to
// clean up) the file opens again.
func TestSecondControlPlaneProcessRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the controlplane binary")
	}
	bin := filepath.Join(t.TempDir(), "controlplane")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/molecule-ai/tenant-agent/controlplane/cmd/controlplane").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	files := pkitest.New(t).Files("controlplane")
	path := filepath.Join(t.TempDir(), "var", "x.db")
	args := []string{"--agent-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--cert", files.Cert, "--key", files.Key, "--ca", files.CA, "--trust-domain", pkitest.TrustDomain, "--store", path}

	first := exec.Command(bin, args...)
	stderr, err := first.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	t.Cleanup(func() {
		first.Process.Signal(syscall.SIGKILL)
		<-exited
	})
	ready := make(chan struct{})
	var firstLog bytes.Buffer
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			firstLog.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "control plane serving") {
				close(ready)
			}
		}
		first.Wait()
	}()
	select {
	case <-ready:
	case <-exited:
		t.Fatalf("the first control plane exited:\n%s", firstLog.String())
	case <-time.After(30 * time.Second):
		t.Fatal("the first control plane is not serving after 30s")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	second := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	second.Stdout, second.Stderr = &out, &out
	err = second.Run()
	var exit *exec.ExitError
	if ctx.Err() != nil || !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("the second control plane: %v (want a non-zero exit at once), output:\n%s", err, out.String())
	}
	want := fmt.Sprintf("controlplane: open store: store %s is in use by another control plane (pid %d); a SQLite store serves one control plane: run replicas on --store postgres://…\n", path, first.Process.Pid)
	if out.String() != want {
		t.Errorf("the second control plane said:\n%s\nwant exactly the one line:\n%s", out.String(), want)
	}

	first.Process.Signal(syscall.SIGKILL)
	<-exited
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("after kill -9 of the holder: %v", err)
	}
	s.Close()
}
