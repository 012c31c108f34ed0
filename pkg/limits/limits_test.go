package limits

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestQuoted(t *testing.T) {
	if got := Quoted("acme"); got != `"acme"` {
		t.Fatalf("short input: %s", got)
	}
	long := strings.Repeat("é", 100*1024)
	got := Quoted(long)
	if len(got) > Quote+40 || !strings.Contains(got, "(204800 bytes)") {
		t.Fatalf("long input quoted as %d bytes: %.100s", len(got), got)
	}
}

func TestTruncate(t *testing.T) {
	if got := Truncate("abc", 10); got != "abc" {
		t.Fatalf("short: %q", got)
	}
	for _, s := range []string{strings.Repeat("x", 5000), strings.Repeat("é", 5000)} {
		got := Truncate(s, Message)
		if len(got) > Message || !utf8.ValidString(got) || !strings.HasSuffix(got, "…") {
			t.Fatalf("truncated to %d bytes, valid %v", len(got), utf8.ValidString(got))
		}
	}
}
