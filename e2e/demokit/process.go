package demokit

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// Process is a binary a demo runs until cleanup, its output in a log file.
type Process struct {
	Name, LogPath string
	Pid           int
	cmd           *exec.Cmd
	done          chan struct{} // closed when the process has exited
}

// StartProcess runs bin until cleanup (SIGTERM, then SIGKILL after 10 s),
// its stdout and stderr in dir/<name>.log.
func StartProcess(d *registrytest.Standalone, dir, name, bin string, args ...string) *Process {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		d.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		d.Fatalf("start %s: %v (run make build first)", bin, err)
	}
	p := &Process{Name: name, LogPath: logPath, Pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logFile.Close(); close(p.done) }()
	fmt.Printf("  %s pid %d, log %s\n", name, p.Pid, logPath)
	d.Cleanup(func() {
		if p.Exited() {
			return
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *Process) Kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// Tail returns the last n lines of the process's log.
func (p *Process) Tail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// Log returns the process's log so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// PrintTail prints the last n lines of the log, indented, under a heading.
func (p *Process) PrintTail(n int) {
	state := "running"
	if p.Exited() {
		state = "exited: " + p.cmd.ProcessState.String()
	}
	fmt.Fprintf(os.Stderr, "\n--- %s (pid %d, %s), last %d lines of %s\n", p.Name, p.Pid, state, n, p.LogPath)
	for _, l := range strings.Split(p.Tail(n), "\n") {
		fmt.Fprintln(os.Stderr, "  "+l)
	}
}
