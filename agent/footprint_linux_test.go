package agent

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// releaseUntouched drops the executable's resident read-only pages from
// the process (they stay in the page cache), and the process runs on: the
// code it then runs is mapped in again.
func TestReleaseUntouchedDropsTheExecutablesPages(t *testing.T) {
	before := exeRSS(t)
	if before == 0 {
		t.Fatal("no resident pages of the test binary before")
	}
	releaseUntouched()
	after := exeRSS(t)
	if after >= before {
		t.Errorf("the executable's resident pages: %d KiB before, %d KiB after; want fewer", before, after)
	}
	// Code and read-only data are still there: this runs, and formats.
	if got := strconv.Itoa(42) + strings.ToUpper("ok"); got != "42OK" {
		t.Errorf("after the release: %q", got)
	}
}

// exeRSS is the resident KiB of the test binary's own mappings.
func exeRSS(t *testing.T) int {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ours, kb := false, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) > 0 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":"):
			ours = len(fields) >= 6 && fields[5] == exe
		case ours && len(fields) >= 2 && fields[0] == "Rss:":
			n, _ := strconv.Atoi(fields[1])
			kb += n
		}
	}
	return kb
}
