package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/molecule-ai/tenant-agent/e2e/demokit"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
)

// footprint runs the real binaries: a control plane on SQLite and an
// agent for a tenant of o.containers workspaces, with the default 15 s
// heartbeat, and samples the agent process from /proc once a second:
// idle for o.footprint, then during a promote of v2 (bin/tactl).
func (b *bench) footprint(o options) {
	d, ctx := b.d, b.ctx
	dir, err := os.MkdirTemp("", "hostbench-")
	if err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() { os.RemoveAll(dir) })
	tenant, certDir := b.run, filepath.Join(dir, "certs")
	demokit.MustRun(ctx, d, "go", "run", "./certs/cmd/devpki", "--out", certDir, tenant)
	cli := b.engine.Client()
	for i := range o.containers {
		demokit.StartWorkspace(ctx, d, cli, tenant, fmt.Sprintf("%s-fp-%02d", b.run, i), b.repo+"@"+b.healthy[0], "v1")
	}
	agentAddr, adminAddr, httpAddr := registrytest.FreeAddr(d), registrytest.FreeAddr(d), registrytest.FreeAddr(d)
	demokit.StartProcess(d, dir, "controlplane", o.controlBin, "--agent-addr", agentAddr, "--admin-addr", adminAddr, "--http-addr", httpAddr,
		"--cert", certDir+"/controlplane.pem", "--key", certDir+"/controlplane-key.pem", "--ca", certDir+"/ca.pem", "--store", dir+"/controlplane.db")
	agent := demokit.StartProcess(d, dir, "agent", o.agentBin, "--control-plane", agentAddr, "--server-name", "localhost",
		"--repository-pattern", strings.TrimSuffix(b.repo, "codex")+"{runtime}", "--allow-repos", b.repo,
		"--cert", certDir+"/agent-"+tenant+".pem", "--key", certDir+"/agent-"+tenant+"-key.pem", "--ca", certDir+"/ca.pem",
		"--state-dir", dir+"/agent", "--min-free-disk", "256MiB", "--log-level", "warn")
	tactl := demokit.Tactl{CertDir: certDir, Addr: adminAddr}
	tactl.WaitForAgent(ctx, d, tenant, "codex", dir+"/*.log")
	// Hello, the first resync and report are over, and the agent has
	// released what only its start touched (10 s after it started).
	time.Sleep(15 * time.Second)

	atStart, startErr := readRSSSplit(agent.Pid)
	refsErr := clearRefs(agent.Pid)
	idleOver := make(chan struct{})
	time.AfterFunc(o.footprint, func() { close(idleOver) })
	idle := sampleUntil(agent.Pid, idleOver)
	atEnd, endErr := readRSSSplit(agent.Pid)
	done := make(chan struct{})
	var promoteErr error
	var took time.Duration
	go func() {
		defer close(done)
		start := time.Now()
		out, err := tactl.Command(ctx, "--progress=plain", "promote", "codex", b.repo+"@"+b.healthy[1], "--notes", "hostbench").CombinedOutput()
		took = time.Since(start)
		if err != nil {
			promoteErr = fmt.Errorf("%v: %s", err, out)
		}
	}()
	during := sampleUntil(agent.Pid, done)

	fmt.Printf("\n## The agent process (%s) managing %d containers, sampled from /proc every second\n\n", o.agentBin, o.containers)
	fmt.Println("| when | for | RSS max | RSS mean | CPU |")
	fmt.Println("|---|---:|---:|---:|---:|")
	fmt.Printf("| idle (15 s heartbeats) | %s | %s | %s | %.2f %% |\n", idle.wall.Round(time.Second), mib(idle.maxRSS), mib(idle.meanRSS), idle.cpuPercent())
	fmt.Printf("| promote of v2 (tactl, %s) | %s | %s | %s | %.2f %% |\n", took.Round(100*time.Millisecond), during.wall.Round(time.Second), mib(during.maxRSS), mib(during.meanRSS), during.cpuPercent())
	if promoteErr != nil {
		// The idle figures stand; the promote's are of a failed one.
		fmt.Printf("\nThe promote failed: %v\n", promoteErr)
	}
	if err := errors.Join(startErr, refsErr, endErr); err != nil {
		fmt.Printf("\nNo split of the idle RSS: %v\n", err)
		return
	}
	fmt.Printf("\nIdle RSS from /proc/<pid>/smaps, at the start of the idle window: %s.\n", atStart)
	fmt.Printf("At its end (referenced: touched during the window): %s.\n", atEnd)
}

// usage is what the samples of a process say.
type usage struct {
	maxRSS, meanRSS uint64
	cpu, wall       time.Duration
}

func (u usage) cpuPercent() float64 { return 100 * u.cpu.Seconds() / u.wall.Seconds() }

// sampleUntil samples pid's RSS every second, and its CPU time at the
// start and the end, until stop.
func sampleUntil(pid int, stop <-chan struct{}) usage {
	cpu0, start := cpuTime(pid), time.Now()
	var u usage
	var sum, n uint64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		rss := rssBytes(pid)
		u.maxRSS, sum, n = max(u.maxRSS, rss), sum+rss, n+1
		select {
		case <-stop:
			u.meanRSS, u.cpu, u.wall = sum/n, cpuTime(pid)-cpu0, time.Since(start)
			return u
		case <-tick.C:
		}
	}
}

// rssBytes is VmRSS from /proc/<pid>/status.
func rssBytes(pid int) uint64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// cpuTime is user plus system time from /proc/<pid>/stat, in clock ticks
// of 1/100 s (USER_HZ on Linux).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces; fields after its ")" are fixed.
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseUint(fields[11], 10, 64)
	stime, _ := strconv.ParseUint(fields[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
