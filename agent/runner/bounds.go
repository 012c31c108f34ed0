package runner

import (
	"fmt"

	"github.com/molecule-ai/tenant-agent/agent/executor"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// The agent bounds what the control plane sends it (a compromised control
// plane must not fill the state dir or a container name) and keeps what it
// sends back inside pkg/limits, which the control plane enforces.

// checkCommandID refuses a command ID the journal, container labels and
// the control plane could not all carry: 1 to limits.ID bytes of
// [A-Za-z0-9._:-].
func checkCommandID(id string) error {
	if id == "" || len(id) > limits.ID {
		return fmt.Errorf("command ID %s must be 1 to %d bytes", limits.Quoted(id), limits.ID)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return fmt.Errorf("command ID %s may hold only letters, digits, '.', '_', ':' and '-'", limits.Quoted(id))
		}
	}
	return nil
}

// checkTarget refuses a runtime or image the agent will not even journal.
func checkTarget(runtime, repo, digest string) error {
	if !executor.ValidRuntime(runtime) {
		return fmt.Errorf("refused: runtime %s is not a plain name ([a-z0-9][a-z0-9_.-]*, at most %d bytes); nothing was changed", limits.Quoted(runtime), limits.Name)
	}
	if len(repo) > limits.ImageRef {
		return fmt.Errorf("refused: repository %s is longer than %d bytes; nothing was changed", limits.Quoted(repo), limits.ImageRef)
	}
	if ref := repo + "@" + digest; len(ref) > limits.ImageRef {
		return fmt.Errorf("refused: image reference %s is longer than %d bytes; nothing was changed", limits.Quoted(ref), limits.ImageRef)
	}
	return nil
}

// boundProgress keeps a progress report inside the limits.
func boundProgress(p *tenantagentv1.CommandProgress) {
	p.Message = limits.Truncate(p.Message, limits.Message)
	p.Container = limits.Truncate(p.Container, limits.Name)
	if len(p.Layers) > limits.Layers {
		p.Layers = p.Layers[:limits.Layers]
	}
	for _, l := range p.Layers {
		l.Id = limits.Truncate(l.Id, limits.ID)
		l.Status = limits.Truncate(l.Status, limits.Message)
	}
	if len(p.InFlight) > limits.InFlight {
		p.InFlight = p.InFlight[:limits.InFlight]
	}
	for i, n := range p.InFlight {
		p.InFlight[i] = limits.Truncate(n, limits.Name)
	}
}

// boundResult keeps a result inside the limits: the joined error, each
// container's error (Docker's errors can be long) and the container count.
func boundResult(r *tenantagentv1.CommandResult) {
	r.Error = limits.Truncate(r.Error, limits.ResultError)
	r.ImageRef = limits.Truncate(r.ImageRef, limits.ImageRef)
	if len(r.Containers) > limits.Containers {
		r.Containers = r.Containers[:limits.Containers]
	}
	for _, c := range r.Containers {
		c.Error = limits.Truncate(c.Error, limits.Message)
		c.Name = limits.Truncate(c.Name, limits.Name)
	}
	if s := r.Signature; s != nil {
		s.Rule = limits.Truncate(s.Rule, limits.ImageRef)
		s.Mode = limits.Truncate(s.Mode, limits.Name)
		s.SignedBy = limits.Truncate(s.SignedBy, limits.Message)
		s.Problem = limits.Truncate(s.Problem, limits.Message)
		s.SignatureRef = limits.Truncate(s.SignatureRef, limits.ImageRef)
	}
}
