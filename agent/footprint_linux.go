package agent

import (
	"bufio"
	"bytes"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
)

// releaseUntouched hands back what the agent's start (or its last
// command) made resident and an idle agent does not use: the heap's free
// pages, and the pages of its own executable's read-only segments (code,
// read-only data, the function tables). The kernel maps a binary's pages
// in 64 KiB at a time as they are first touched, and the start touches
// the init code and tables of every package linked in: most of the
// binary, once. MADV_DONTNEED on a read-only private file mapping only
// drops this process's mapping: the pages stay in the page cache, and
// those the agent touches again are mapped in again from there. Writable
// segments (data, bss) are never touched here.
func releaseUntouched() {
	debug.FreeOSMemory()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return
	}
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// start-end perms offset dev inode path
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[5] != exe || strings.Contains(f[1], "w") || !strings.HasSuffix(f[1], "p") {
			continue
		}
		from, to, ok := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(from, 16, 64)
		end, err2 := strconv.ParseUint(to, 16, 64)
		if !ok || err1 != nil || err2 != nil || end <= start {
			continue
		}
		syscall.Syscall(syscall.SYS_MADVISE, uintptr(start), uintptr(end-start), syscall.MADV_DONTNEED)
	}
}
