package sqlrow

import (
	"strconv"
	"strings"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

// Dialect is what the two SQL stores write differently in a query.
type Dialect struct {
	// Param is the placeholder of the nth argument, counting from 1.
	Param func(n int) string
	// OneOf is "column is one of the values in the argument at param".
	OneOf func(column, param string) string
	// List makes that argument of a Go slice.
	List func(values any) (any, error)
}

// ListCommandsQuery is ListCommands' query for filter f, and its
// arguments.
func ListCommandsQuery(f store.CommandFilter, d Dialect) (string, []any, error) {
	var where []string
	var args []any
	add := func(clause string, arg any) {
		args = append(args, arg)
		where = append(where, clause+" "+d.Param(len(args)))
	}
	oneOf := func(column string, values any) error {
		list, err := d.List(values)
		if err != nil {
			return err
		}
		args = append(args, list)
		where = append(where, d.OneOf(column, d.Param(len(args))))
		return nil
	}
	if f.Agent != "" {
		add("agent =", f.Agent)
	}
	if len(f.Agents) > 0 {
		if err := oneOf("agent", f.Agents); err != nil {
			return "", nil, err
		}
	}
	if len(f.IDs) > 0 {
		if err := oneOf("id", f.IDs); err != nil {
			return "", nil, err
		}
	}
	if f.Tenant != "" {
		add("tenant =", f.Tenant)
	}
	if f.Runtime != "" {
		add("runtime =", f.Runtime)
	}
	if f.RolloutID != "" {
		// The redundant clause lets either database use the partial index
		// on rollout_id (commands_one_per_rollout_agent) for a parameter
		// it cannot prove non-empty.
		add("rollout_id <> '' AND rollout_id =", f.RolloutID)
	}
	if f.Kind != controlplanev1.CommandKind_COMMAND_KIND_UNSPECIFIED {
		add("kind =", int32(f.Kind))
	}
	if !f.DeadlineBefore.IsZero() {
		add("deadline <", f.DeadlineBefore.UnixNano())
	}
	if f.BeforeSeq > 0 {
		add("seq <", f.BeforeSeq)
	}
	if len(f.States) > 0 {
		states := make([]int32, len(f.States))
		for i, s := range f.States {
			states[i] = int32(s)
		}
		if err := oneOf("state", states); err != nil {
			return "", nil, err
		}
	}
	q := `SELECT ` + CommandColumns + ` FROM commands`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if f.Oldest {
		q += " ORDER BY seq ASC"
	} else {
		q += " ORDER BY seq DESC"
	}
	if f.Limit > 0 {
		q += " LIMIT " + strconv.Itoa(f.Limit)
	}
	return q, args, nil
}
