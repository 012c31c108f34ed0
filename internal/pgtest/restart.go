package pgtest

import (
	"testing"
)

// Restart stops the local server (fast: every connection is cut, as a
// failover or a restart cuts them) and starts it again on the same port
// and data, so what clients held is gone but the data stays. It skips the
// test when the server is an external one (EnvDSN). Every database of the
// test binary goes away meanwhile: call it only from tests that do not
// run in parallel with others.
func Restart(t testing.TB) {
	t.Helper()
	once.Do(setup)
	if local == nil {
		t.Skip("pgtest: the server is external (" + EnvDSN + "); it is not restarted")
	}
	if err := local.Restart(); err != nil {
		t.Fatalf("pgtest: restart: %v", err)
	}
}
