package pgtest

import (
	"fmt"
	"os"
	"path/filepath"
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
	if err := local.restart(); err != nil {
		t.Fatalf("pgtest: restart: %v", err)
	}
}

// restart stops and starts the server; pg_ctl restart reuses the
// options of the last start (postmaster.opts), so port and socket stay.
func (s *server) restart() error {
	err := s.run("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-l", filepath.Join(s.dir, "log"), "-m", "fast", "-w", "restart")
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		return fmt.Errorf("%w\n%s", err, log)
	}
	return nil
}
