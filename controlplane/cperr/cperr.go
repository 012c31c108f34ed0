// Package cperr classifies the control plane's errors and is the one place
// they become gRPC status codes (Status), for the admin API and the agent
// channel alike.
package cperr

import (
	"errors"
	"fmt"

	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// Kind is the class of an error.
type Kind int

const (
	// KindInvalid is bad input: the request can never succeed as written.
	KindInvalid Kind = iota + 1
	// KindNotFound is an unknown runtime, tenant or command.
	KindNotFound
	// KindPrecondition is a request refused by state, e.g. a held tenant.
	KindPrecondition
	// KindAborted is a stream ended by the control plane while the work
	// it watched goes on (the watcher fell too far behind).
	KindAborted
	// KindUnavailable is a dependency the control plane could not reach
	// (e.g. the registry holding signatures): a retry may succeed.
	KindUnavailable
)

// Error is an error of a known kind.
type Error struct {
	Kind Kind
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

func newf(k Kind, format string, args ...any) error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, args...)}
}

// Invalid returns a KindInvalid error. Quote caller input in it with
// limits.Quoted, never %q or %s of the whole value.
func Invalid(format string, args ...any) error { return newf(KindInvalid, format, args...) }

// NotFound returns a KindNotFound error.
func NotFound(format string, args ...any) error { return newf(KindNotFound, format, args...) }

// Precondition returns a KindPrecondition error.
func Precondition(format string, args ...any) error { return newf(KindPrecondition, format, args...) }

// Aborted returns a KindAborted error.
func Aborted(format string, args ...any) error { return newf(KindAborted, format, args...) }

// Unavailable returns a KindUnavailable error.
func Unavailable(format string, args ...any) error { return newf(KindUnavailable, format, args...) }

// TooLong is the KindInvalid error of a string field over its limit: it
// names the field and the limit and quotes a short prefix of the value.
func TooLong(field, value string, limit int) error {
	return Invalid("%s is %d bytes, at most %d: %s", field, len(value), limit, limits.Quoted(value))
}

// TooMany is the KindInvalid error of a list over its limit.
func TooMany(field string, n, limit int) error {
	return Invalid("%s has %d entries, at most %d", field, n, limit)
}

// KindOf returns the kind of err, or 0 if it has none.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}
