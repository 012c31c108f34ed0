package dispatch

import (
	"crypto/rand"
	"strings"

	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/imageref"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// Agents is what dispatch reads of the fleet to choose targets.
type Agents interface {
	// Agents returns every agent record; a non-empty tenant filters.
	Agents(tenant string) []store.Agent
}

// Request is a refresh or prefetch of one runtime, before it is addressed
// to agents. Admin refreshes, rollouts and reconcile all build their
// commands from one, so ID, deadline and repository are chosen in one
// place (Command).
type Request struct {
	Kind    controlplanev1.CommandKind
	Runtime string
	Digest  string
	// Repository is the pin's repository. Empty (a runtime with no pin
	// refreshed by digest) means the one the agent reports for the runtime.
	Repository  string
	Options     *tenantagentv1.RefreshOptions
	RequestedBy string
	RolloutID   string
}

// NewCommandID returns a fresh, unguessable command ID.
func NewCommandID() string { return "c-" + strings.ToLower(rand.Text()) }

// RuntimeStatus returns what an agent last reported for a runtime, or nil.
func RuntimeStatus(a store.Agent, runtime string) *tenantagentv1.RuntimeStatus {
	for _, r := range a.Runtimes {
		if r.GetRuntime() == runtime {
			return r
		}
	}
	return nil
}

// Targets returns the agents that report runtime, by tenant then
// identity; a non-empty tenant filters. An agent that does not report a
// runtime has no containers of it to refresh.
func (d *Dispatcher) Targets(tenant, runtime string) []store.Agent {
	var out []store.Agent
	for _, a := range d.cfg.Agents.Agents(tenant) {
		if RuntimeStatus(a, runtime) != nil {
			out = append(out, a)
		}
	}
	return out
}

// Command builds, without journaling it, req's command for agent a: a
// fresh ID, the deadline CommandTTL from now, and req's repository or,
// without one, the repository a reports for the runtime (which must be a
// valid repository: a KindPrecondition error otherwise).
func (d *Dispatcher) Command(req Request, a store.Agent) (*store.Command, error) {
	repo := req.Repository
	if repo == "" {
		repo = RuntimeStatus(a, req.Runtime).GetImageRepository()
		if err := imageref.ValidateRepository(repo); err != nil {
			return nil, cperr.Precondition("runtime %s on %s: %v", limits.Quoted(req.Runtime), a.Identity, err)
		}
	}
	return &store.Command{
		ID: NewCommandID(), Agent: a.Identity, Tenant: a.Tenant, Kind: req.Kind,
		Runtime: req.Runtime, Repository: repo, Digest: req.Digest, Options: req.Options,
		RequestedBy: req.RequestedBy, RolloutID: req.RolloutID, Deadline: d.cfg.Now().Add(d.cfg.CommandTTL),
	}, nil
}

// Plan builds req's commands for every agent of tenant that reports the
// runtime, or KindNotFound if there is none.
func (d *Dispatcher) Plan(tenant string, req Request) ([]*store.Command, error) {
	var cmds []*store.Command
	for _, a := range d.Targets(tenant, req.Runtime) {
		c, err := d.Command(req, a)
		if err != nil {
			return nil, err
		}
		cmds = append(cmds, c)
	}
	if len(cmds) == 0 {
		return nil, cperr.NotFound("tenant %s has no agent reporting runtime %s", limits.Quoted(tenant), limits.Quoted(req.Runtime))
	}
	return cmds, nil
}
