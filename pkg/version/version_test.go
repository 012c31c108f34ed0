package version

import "testing"

// The control plane says its version in every Welcome: String is worked
// out once and then costs nothing.
func TestStringIsWorkedOutOnce(t *testing.T) {
	first := String()
	if first == "" {
		t.Fatal("String() is empty")
	}
	if allocs := testing.AllocsPerRun(100, func() {
		if String() != first {
			t.Fatal("String() changed between calls")
		}
	}); allocs != 0 {
		t.Errorf("String() allocates %v times a call; want 0", allocs)
	}
}
