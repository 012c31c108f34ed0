package sqlite

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// storeLock is an exclusive advisory lock (flock) on <store>.lock, held
// for the store's lifetime: a SQLite store serves one control plane, and
// two control planes on one file would both serve and both dispatch. The
// kernel drops the lock with the process, so a kill -9 leaves no stale
// lock; the file itself stays (removing it would let a third process lock
// a new file while the second still holds the old one).
type storeLock struct {
	mu sync.Mutex
	f  *os.File
}

// InUseError is a store whose lock another control plane holds.
type InUseError struct {
	// Path is the store file; Holder is "pid N", or "pid unknown".
	Path, Holder string
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("store %s is in use by another control plane (%s); a SQLite store serves one control plane: run replicas on --store postgres://…", e.Path, e.Holder)
}

// lockStore takes the lock for the store at path, or fails at once
// (non-blocking) naming the file and the holder's PID. flock locks belong
// to the open file description, so a second open in the same process is
// refused too.
func lockStore(path string) (*storeLock, error) {
	name := path + ".lock"
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store lock: %w", err)
	}
	if err := flock(f); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &InUseError{Path: path, Holder: holder(f)}
		}
		return nil, fmt.Errorf("store lock %s: %w", name, err)
	}
	// The PID is for the message a second control plane prints; the lock,
	// not the file's content, is what excludes.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &storeLock{f: f}, nil
}

// flock takes an exclusive lock without waiting, retrying an interrupted
// call.
func flock(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// holder is "pid N" from the lock file, or "pid unknown" when it holds
// none yet (the holder writes it just after locking).
func holder(f *os.File) string {
	b, err := io.ReadAll(io.LimitReader(f, 32))
	if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil && pid > 0 {
		return "pid " + strconv.Itoa(pid)
	}
	return "pid unknown"
}

// release drops the lock; calling it again does nothing.
func (l *storeLock) release() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	// Closing the only descriptor of the open file releases the lock.
	err := l.f.Close()
	l.f = nil
	return err
}
