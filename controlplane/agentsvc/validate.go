package agentsvc

import (
	"fmt"

	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// Everything an agent sends is checked against pkg/limits here, before it
// reaches the fleet, the dispatcher or a log: any agent identity may be
// hostile, and what it sends is stored, listed to operators and streamed
// to dashboards. Over-limit input is refused whole (never cut and kept),
// with a cperr.TooLong or TooMany error that names the field and the limit
// and quotes a short prefix.

// checker keeps the first violation while walking a message, so the walks
// below read as a list of fields and their limits. Counts are checked
// before the entries, so a huge list is refused without walking it.
type checker struct{ err error }

func (c *checker) str(field, v string, limit int) {
	if c.err == nil && len(v) > limit {
		c.err = cperr.TooLong(field, v, limit)
	}
}

// item is str for a field of the i-th entry of a list; the field's name is
// only formatted for an error (a heartbeat holds up to 1000 containers).
func (c *checker) item(list string, i int, field, v string, limit int) {
	if c.err == nil && len(v) > limit {
		if field != "" {
			field = "." + field
		}
		c.err = cperr.TooLong(fmt.Sprintf("%s[%d]%s", list, i, field), v, limit)
	}
}

func (c *checker) count(field string, n, limit int) {
	if c.err == nil && n > limit {
		c.err = cperr.TooMany(field, n, limit)
	}
}

func (c *checker) ids(field string, ids []string) {
	for i, id := range ids {
		c.item(field, i, "", id, limits.ID)
	}
}

// runtimes checks a report's runtimes and their containers; the container
// limit is over all runtimes together.
func (c *checker) runtimes(field string, rts []*tenantagentv1.RuntimeStatus) {
	c.count(field, len(rts), limits.Runtimes)
	total := 0
	for _, rt := range rts {
		total += len(rt.GetContainers())
	}
	c.count(field+"[*].containers", total, limits.Containers)
	for i, rt := range rts {
		if c.err != nil {
			return
		}
		c.item(field, i, "runtime", rt.GetRuntime(), limits.Name)
		c.item(field, i, "image_repository", rt.GetImageRepository(), limits.ImageRef)
		list := fmt.Sprintf("%s[%d].containers", field, i)
		for j, ct := range rt.GetContainers() {
			c.item(list, j, "name", ct.GetName(), limits.Name)
			c.item(list, j, "id", ct.GetId(), limits.ID)
			c.item(list, j, "image_ref", ct.GetImageRef(), limits.ImageRef)
			// A digest is part of an image reference and bounded as one.
			c.item(list, j, "image_digest", ct.GetImageDigest(), limits.ImageRef)
		}
	}
}

func checkHello(h *tenantagentv1.Hello) error {
	var c checker
	c.str("hello.tenant", h.GetTenant(), limits.Name)
	c.str("hello.agent_version", h.GetAgentVersion(), limits.Version)
	c.str("hello.hostname", h.GetHostname(), limits.Hostname)
	c.str("hello.docker_version", h.GetDockerVersion(), limits.Version)
	c.count("hello.result_command_ids+running_command_ids", len(h.GetResultCommandIds())+len(h.GetRunningCommandIds()), limits.HeldCommands)
	c.ids("hello.result_command_ids", h.GetResultCommandIds())
	c.ids("hello.running_command_ids", h.GetRunningCommandIds())
	c.runtimes("hello.runtimes", h.GetRuntimes())
	return c.err
}

func checkHealth(h *tenantagentv1.HealthReport) error {
	var c checker
	c.str("health.agent_version", h.GetAgentVersion(), limits.Version)
	c.str("health.docker_error", h.GetDockerError(), limits.Message)
	c.count("health.running_command_ids", len(h.GetRunningCommandIds()), limits.HeldCommands)
	c.ids("health.running_command_ids", h.GetRunningCommandIds())
	c.runtimes("health.runtimes", h.GetRuntimes())
	if c.err == nil && h.GetRuntimesUnchanged() && len(h.GetRuntimes()) > 0 {
		c.err = cperr.Invalid("health.runtimes lists %d runtimes but runtimes_unchanged says they are the previous report's; send one or the other", len(h.GetRuntimes()))
	}
	return c.err
}

func checkAck(a *tenantagentv1.CommandAck) error {
	var c checker
	c.str("ack.command_id", a.GetCommandId(), limits.ID)
	return c.err
}

func checkProgress(p *tenantagentv1.CommandProgress) error {
	var c checker
	c.str("progress.command_id", p.GetCommandId(), limits.ID)
	c.str("progress.container", p.GetContainer(), limits.Name)
	c.str("progress.message", p.GetMessage(), limits.Message)
	c.count("progress.layers", len(p.GetLayers()), limits.Layers)
	c.count("progress.in_flight", len(p.GetInFlight()), limits.InFlight)
	if c.err != nil {
		return c.err
	}
	for i, l := range p.GetLayers() {
		c.item("progress.layers", i, "id", l.GetId(), limits.ID)
		c.item("progress.layers", i, "status", l.GetStatus(), limits.Message)
	}
	for i, name := range p.GetInFlight() {
		c.item("progress.in_flight", i, "", name, limits.Name)
	}
	return c.err
}

func checkResult(r *tenantagentv1.CommandResult) error {
	var c checker
	c.str("result.command_id", r.GetCommandId(), limits.ID)
	c.str("result.error", r.GetError(), limits.ResultError)
	c.str("result.image_ref", r.GetImageRef(), limits.ImageRef)
	c.count("result.containers", len(r.GetContainers()), limits.Containers)
	c.count("result.removed_images", len(r.GetRemovedImages()), limits.Containers)
	if sig := r.GetSignature(); sig != nil {
		c.str("result.signature.rule", sig.GetRule(), limits.ImageRef)
		c.str("result.signature.mode", sig.GetMode(), limits.Name)
		c.str("result.signature.signed_by", sig.GetSignedBy(), limits.Message)
		c.str("result.signature.problem", sig.GetProblem(), limits.Message)
		c.str("result.signature.signature_ref", sig.GetSignatureRef(), limits.ImageRef)
	}
	if c.err != nil {
		return c.err
	}
	for i, ref := range r.GetRemovedImages() {
		c.item("result.removed_images", i, "", ref, limits.ImageRef)
	}
	const list = "result.containers"
	for i, ct := range r.GetContainers() {
		c.item(list, i, "name", ct.GetName(), limits.Name)
		c.item(list, i, "old_container_id", ct.GetOldContainerId(), limits.ID)
		c.item(list, i, "new_container_id", ct.GetNewContainerId(), limits.ID)
		c.item(list, i, "old_digest", ct.GetOldDigest(), limits.ImageRef)
		c.item(list, i, "new_digest", ct.GetNewDigest(), limits.ImageRef)
		c.item(list, i, "error", ct.GetError(), limits.Message)
	}
	return c.err
}

// checkMessage checks any message an agent sends after Hello.
func checkMessage(msg *tenantagentv1.AgentMessage) error {
	switch body := msg.GetBody().(type) {
	case *tenantagentv1.AgentMessage_Health:
		return checkHealth(body.Health)
	case *tenantagentv1.AgentMessage_Ack:
		return checkAck(body.Ack)
	case *tenantagentv1.AgentMessage_Progress:
		return checkProgress(body.Progress)
	case *tenantagentv1.AgentMessage_Result:
		return checkResult(body.Result)
	case *tenantagentv1.AgentMessage_Hello:
		return checkHello(body.Hello)
	}
	return nil
}
