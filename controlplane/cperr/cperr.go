// Package cperr classifies the control plane's errors so the gRPC adapters
// can map them to status codes in one place (adminsvc.toStatus).
package cperr

import (
	"errors"
	"fmt"
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

// Invalid returns a KindInvalid error.
func Invalid(format string, args ...any) error { return newf(KindInvalid, format, args...) }

// NotFound returns a KindNotFound error.
func NotFound(format string, args ...any) error { return newf(KindNotFound, format, args...) }

// Precondition returns a KindPrecondition error.
func Precondition(format string, args ...any) error { return newf(KindPrecondition, format, args...) }

// KindOf returns the kind of err, or 0 if it has none.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}
