package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times (100 on
// every Linux this runs on).
const clockTicks = 100

// procCPU is the CPU time pid has used (user and system), from
// /proc/<pid>/stat; 0 if it cannot be read.
func procCPU(pid int) time.Duration {
	utime, stime, _, ok := procStat(pid)
	if !ok {
		return 0
	}
	return ticks(utime + stime)
}

func ticks(t int64) time.Duration { return time.Duration(t) * time.Second / clockTicks }

// procStat reads a process's user and system ticks and its parent.
func procStat(pid int) (utime, stime int64, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from after its closing one (state is field 3, ppid 4, utime 14,
	// stime 15).
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	utime, _ = strconv.ParseInt(f[11], 10, 64)
	stime, _ = strconv.ParseInt(f[12], 10, 64)
	return utime, stime, ppid, true
}

// treeCPU is the CPU time of root and its live children: a PostgreSQL
// postmaster and its backends, walwriter and the rest.
func treeCPU(root int) time.Duration {
	total := procCPU(root)
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == root {
			continue
		}
		if u, s, ppid, ok := procStat(pid); ok && ppid == root {
			total += ticks(u + s)
		}
	}
	return total
}

// selfCPU is this process's CPU time: the simulated agents, and the admin
// client.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// postmasterPID reads the PID of the PostgreSQL server whose data
// directory is data; 0 if it cannot.
func postmasterPID(data string) int {
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}
