package sqlite

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
)

// The store names every tenant and command: its files must be readable by
// the control plane's user only, whatever the umask.
func TestStoreFilesArePrivate(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "cp.db")
	s := open(t, path)
	if err := s.PutHold(context.Background(), store.Hold{Tenant: "acme", Reason: "x", HeldBy: "t"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode != 0o600 {
			t.Errorf("%s has mode %o, want 600", filepath.Base(p), mode)
		}
	}
}
