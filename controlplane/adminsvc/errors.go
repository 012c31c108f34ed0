package adminsvc

import (
	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// status maps err to a gRPC status in the one place that does it
// (cperr.Status). Every handler returns its errors through here.
func (s *service) status(err error) error { return cperr.Status(s.cfg.Logger, err) }

// The checks below are the admin API's input rules. Their errors quote at
// most a short prefix of what the caller sent (limits.Quoted): a 200 KiB
// field never comes back whole, nor reaches a log.

func checkName(what, v string) error {
	if !identity.ValidName(v) {
		return cperr.Invalid("%s %s: want 1-63 lowercase letters, digits or hyphens", what, limits.Quoted(v))
	}
	return nil
}

// checkOptionalName is checkName for a filter, where empty means all.
func checkOptionalName(what, v string) error {
	if v == "" {
		return nil
	}
	return checkName(what, v)
}

// checkID bounds an ID the caller names (a command or rollout); required
// says whether it may be empty.
func checkID(what, v string, required bool) error {
	switch {
	case v == "" && required:
		return cperr.Invalid("%s is required", what)
	case len(v) > limits.ID:
		return cperr.TooLong(what, v, limits.ID)
	}
	return nil
}

const maxReason = 1024

func checkReason(r string) error {
	if len(r) > maxReason {
		return cperr.TooLong("reason", r, maxReason)
	}
	return nil
}

// checkPageSize applies a list's default and refuses sizes over its
// maximum.
func checkPageSize(size uint32, def, most int) (int, error) {
	switch {
	case size == 0:
		return def, nil
	case int64(size) > int64(most):
		return 0, cperr.Invalid("page_size is %d, at most %d", size, most)
	}
	return int(size), nil
}

// errBadPageToken never echoes the token: it is opaque to the caller.
var errBadPageToken = cperr.Invalid("page_token is not one this API returned")

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
