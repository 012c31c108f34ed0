// Package sqlrow is what the SQL stores (sqlite, postgres) share: the
// column lists of the tables whose schema is the same in both dialects,
// and the decoding of their rows into store types. Only placeholders and
// the statements around them differ per dialect.
package sqlrow

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// Scanner is a row of either driver (*sql.Row, *sql.Rows, pgx.Row, pgx.Rows).
type Scanner interface{ Scan(dest ...any) error }

// Column lists, in the order the Scan functions read them.
const (
	PinColumns     = `runtime, template_name, image_repository, image_digest, git_sha, promoted_at, promoted_by, notes`
	CommandColumns = `seq, id, agent, tenant, kind, runtime, image_repository, image_digest, options, state, requested_by, rollout_id, created_at, updated_at, deadline, error, result`
	RolloutColumns = `id, runtime, image_repository, image_digest, options, state, requested_by, created_at, updated_at, message, owner, epoch, lease_until, resumed_at`
	AgentColumns   = `identity, tenant, name, connected_at, last_seen, hostname, agent_version, docker_version, docker_reachable, runtimes`
)

// ScanPin reads a row of PinColumns.
func ScanPin(row Scanner) (store.Pin, error) {
	var p store.Pin
	var at int64
	err := row.Scan(&p.Runtime, &p.TemplateName, &p.Repository, &p.Digest, &p.GitSHA, &at, &p.PromotedBy, &p.Notes)
	p.PromotedAt = time.Unix(0, at)
	return p, err
}

// ScanCommand reads a row of CommandColumns. Times are Unix nanoseconds
// (PostgreSQL's timestamptz would keep only microseconds); options and
// result are protobuf bytes, NULL when absent.
func ScanCommand(row Scanner) (*store.Command, error) {
	c := &store.Command{}
	var kind, state int32
	var created, updated, deadline int64
	var options, result []byte
	if err := row.Scan(&c.Seq, &c.ID, &c.Agent, &c.Tenant, &kind, &c.Runtime, &c.Repository, &c.Digest, &options, &state, &c.RequestedBy, &c.RolloutID, &created, &updated, &deadline, &c.Error, &result); err != nil {
		return nil, err
	}
	c.Kind, c.State = controlplanev1.CommandKind(kind), controlplanev1.CommandState(state)
	c.CreatedAt, c.UpdatedAt, c.Deadline = time.Unix(0, created), time.Unix(0, updated), time.Unix(0, deadline)
	if options != nil {
		c.Options = &tenantagentv1.RefreshOptions{}
		if err := proto.Unmarshal(options, c.Options); err != nil {
			return nil, fmt.Errorf("command %s options: %w", c.ID, err)
		}
	}
	if result != nil {
		c.Result = &tenantagentv1.CommandResult{}
		if err := proto.Unmarshal(result, c.Result); err != nil {
			return nil, fmt.Errorf("command %s result: %w", c.ID, err)
		}
	}
	return c, nil
}

// DistinctRun is how many of cmds, from the first, have no refresh for
// the agent and runtime of a refresh before it: a run the SQL stores
// journal in a few statements, none of its commands superseding another.
func DistinctRun(cmds []*store.Command) int {
	type key struct{ agent, runtime string }
	seen := make(map[key]bool, len(cmds))
	for i, c := range cmds {
		if c.Kind != controlplanev1.CommandKind_COMMAND_KIND_REFRESH {
			continue
		}
		k := key{c.Agent, c.Runtime}
		if seen[k] {
			return i
		}
		seen[k] = true
	}
	return len(cmds)
}

// InOrder sorts cmds (rows a statement returned in its own order) in the
// order of ids, and returns their IDs in that order.
func InOrder(cmds []*store.Command, ids []string) []string {
	pos := make(map[string]int, len(ids))
	for i, id := range ids {
		pos[id] = i
	}
	slices.SortFunc(cmds, func(a, b *store.Command) int { return cmp.Compare(pos[a.ID], pos[b.ID]) })
	out := make([]string, len(cmds))
	for i, c := range cmds {
		out[i] = c.ID
	}
	return out
}

// Applied is what a burst of UpdateCommands' updates did, in memory.
type Applied struct {
	// Out is UpdateCommands' answer.
	Out []store.UpdatedCommand
	// Changed holds the commands to write back, each as the last update
	// left it, in the order they were first changed.
	Changed []*store.Command
	// Events are the events to store, in order.
	Events []store.Event
}

// ApplyUpdates applies updates, in order, to current (the commands they
// name, as stored, by ID; a missing one is no such command), as the SQL
// stores do once they have read the burst's commands in one statement:
// each update sees the ones before it, and each result stays as it was
// after its update.
func ApplyUpdates(updates []store.CommandUpdate, current map[string]*store.Command) Applied {
	a := Applied{Out: make([]store.UpdatedCommand, len(updates))}
	changed := make(map[string]bool, len(updates))
	var order []string
	for i, u := range updates {
		stored := current[u.ID]
		if stored == nil {
			continue
		}
		c := *stored
		if !u.Fn(&c) {
			a.Out[i] = store.UpdatedCommand{Command: &c}
			continue
		}
		current[u.ID] = &c
		if !changed[u.ID] {
			changed[u.ID] = true
			order = append(order, u.ID)
		}
		if u.Event != nil {
			if e := u.Event(&c); e != nil {
				a.Events = append(a.Events, *e)
			}
		}
		a.Out[i] = store.UpdatedCommand{Command: &c, Changed: true}
	}
	a.Changed = make([]*store.Command, len(order))
	for i, id := range order {
		a.Changed[i] = current[id]
	}
	return a
}

// ScanRollout reads a row of RolloutColumns.
func ScanRollout(row Scanner) (store.Rollout, error) {
	var ro store.Rollout
	var options []byte
	var state string
	var created, updated, leaseUntil, resumed int64
	if err := row.Scan(&ro.ID, &ro.Runtime, &ro.Repository, &ro.Digest, &options, &state, &ro.RequestedBy, &created, &updated, &ro.Message,
		&ro.Owner, &ro.Epoch, &leaseUntil, &resumed); err != nil {
		return ro, err
	}
	ro.State, ro.CreatedAt, ro.UpdatedAt = store.RolloutState(state), time.Unix(0, created), time.Unix(0, updated)
	if leaseUntil != 0 {
		ro.LeaseUntil = time.Unix(0, leaseUntil)
	}
	if resumed != 0 {
		ro.ResumedAt = time.Unix(0, resumed)
	}
	var o controlplanev1.RolloutOptions
	if err := proto.Unmarshal(options, &o); err != nil {
		return ro, err
	}
	ro.Options = store.RolloutOptions{Prefetch: o.GetPrefetch(), CanaryTenants: o.GetCanaryTenants(),
		MaxParallelTenants: o.GetMaxParallelTenants(), HaltAfterFailures: o.GetHaltAfterFailures(), MaxParallelContainers: o.GetMaxParallelContainers()}
	return ro, nil
}

// LeaseNanos is a lease end's column value: 0 (never held, expired) for
// the zero time, whose UnixNano is out of range.
func LeaseNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// SortRollouts orders rollouts oldest first (by creation, then ID): the
// order ClaimRollouts returns them in, whatever order RETURNING gave.
func SortRollouts(rs []store.Rollout) {
	slices.SortFunc(rs, func(a, b store.Rollout) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
}

// ScanAgent reads a row of AgentColumns. The runtimes column is a
// HealthReport holding them.
func ScanAgent(row Scanner) (store.Agent, error) {
	var a store.Agent
	var connected, seen int64
	var runtimes []byte
	if err := row.Scan(&a.Identity, &a.Tenant, &a.Name, &connected, &seen, &a.Hostname, &a.AgentVersion, &a.DockerVersion, &a.DockerReachable, &runtimes); err != nil {
		return a, err
	}
	a.ConnectedAt, a.LastSeen = time.Unix(0, connected), time.Unix(0, seen)
	var report tenantagentv1.HealthReport
	if err := proto.Unmarshal(runtimes, &report); err != nil {
		return a, err
	}
	a.Runtimes = report.Runtimes
	return a, nil
}

// RolloutOptions encodes a rollout's options for its column. The column
// keeps the API's encoding, so stored rollouts read back across versions.
func RolloutOptions(o store.RolloutOptions) ([]byte, error) {
	return proto.Marshal(&controlplanev1.RolloutOptions{Prefetch: o.Prefetch, CanaryTenants: o.CanaryTenants,
		MaxParallelTenants: o.MaxParallelTenants, HaltAfterFailures: o.HaltAfterFailures, MaxParallelContainers: o.MaxParallelContainers})
}

// MarshalOrNil encodes m, or gives NULL for a nil message.
func MarshalOrNil(m proto.Message) ([]byte, error) {
	if m == nil || !m.ProtoReflect().IsValid() {
		return nil, nil
	}
	return proto.Marshal(m)
}

// OneRollout is SetRolloutState's answer from the rows its conditional
// update returned: the rollout, or why there was none (ErrNotFound, or
// ErrConflict naming the state it is in).
func OneRollout(ctx context.Context, st interface {
	GetRollout(context.Context, string) (store.Rollout, error)
}, id string, from []store.RolloutState, rs []store.Rollout, err error) (store.Rollout, error) {
	if err != nil {
		return store.Rollout{}, err
	}
	if len(rs) == 1 {
		return rs[0], nil
	}
	cur, err := st.GetRollout(ctx, id)
	if err != nil {
		return store.Rollout{}, err
	}
	return store.Rollout{}, fmt.Errorf("rollout %s is %s, not %v: %w", id, cur.State, from, store.ErrConflict)
}

// ScanTicketKey reads a row of (created_at, secret) of tls_ticket_keys.
func ScanTicketKey(row Scanner) (store.TicketKey, error) {
	var k store.TicketKey
	var at int64
	var secret []byte
	if err := row.Scan(&at, &secret); err != nil {
		return k, err
	}
	if len(secret) != len(k.Secret) {
		return k, fmt.Errorf("TLS session ticket key of %d bytes; want %d", len(secret), len(k.Secret))
	}
	copy(k.Secret[:], secret)
	k.CreatedAt = time.Unix(0, at)
	return k, nil
}
