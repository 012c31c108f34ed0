package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// rssSplit is a process's resident memory from /proc/<pid>/smaps: the
// pages of its own executable (text, rodata, pclntab, data), anonymous
// memory (heap, stacks, the runtime's own), and the rest; with each, how
// much was referenced since the last clearRefs (the working set).
type rssSplit struct {
	binary, anon, other          uint64
	binaryRef, anonRef, otherRef uint64
}

func (s rssSplit) String() string {
	return fmt.Sprintf("executable %s (%s referenced), anonymous %s (%s referenced), other %s", mib(s.binary), mib(s.binaryRef), mib(s.anon), mib(s.anonRef), mib(s.other))
}

// readRSSSplit reads pid's smaps; exe is its executable's path.
func readRSSSplit(pid int) (rssSplit, error) {
	var s rssSplit
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return s, err
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return s, err
	}
	defer f.Close()
	var rss, ref *uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") || strings.Contains(fields[0], "-") { // a mapping's header
			switch {
			case len(fields) >= 6 && fields[5] == exe:
				rss, ref = &s.binary, &s.binaryRef
			case len(fields) < 6 || strings.HasPrefix(fields[5], "["):
				rss, ref = &s.anon, &s.anonRef
			default:
				rss, ref = &s.other, &s.otherRef
			}
			continue
		}
		if len(fields) < 2 || rss == nil {
			continue
		}
		kb, _ := strconv.ParseUint(fields[1], 10, 64)
		switch fields[0] {
		case "Rss:":
			*rss += kb << 10
		case "Referenced:":
			*ref += kb << 10
		}
	}
	return s, sc.Err()
}

// clearRefs clears pid's referenced bits, so the next readRSSSplit says
// what it touched since (needs the right to write /proc/<pid>/clear_refs).
func clearRefs(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("1"), 0)
}
