package agentsvc

import (
	"strconv"
	"strings"
	"testing"

	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// n returns a string of n bytes.
func n(count int) string { return strings.Repeat("x", count) }

func runtimes(nRuntimes, perRuntime int, mutate func(*tenantagentv1.ContainerStatus)) []*tenantagentv1.RuntimeStatus {
	var out []*tenantagentv1.RuntimeStatus
	for range nRuntimes {
		rt := &tenantagentv1.RuntimeStatus{Runtime: "codex", ImageRepository: "registry.example/ws"}
		for range perRuntime {
			c := &tenantagentv1.ContainerStatus{Name: "c", Id: "id", ImageRef: "registry.example/ws@sha256:x", ImageDigest: "sha256:x"}
			if mutate != nil {
				mutate(c)
			}
			rt.Containers = append(rt.Containers, c)
		}
		out = append(out, rt)
	}
	return out
}

func ids(count, size int) []string {
	out := make([]string, count)
	for i := range out {
		out[i] = n(size)
	}
	return out
}

func hello(mutate func(*tenantagentv1.Hello)) *tenantagentv1.AgentMessage {
	h := &tenantagentv1.Hello{Tenant: "acme", AgentVersion: "v1", Hostname: "host", DockerVersion: "27", Runtimes: runtimes(1, 2, nil)}
	mutate(h)
	return &tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Hello{Hello: h}}
}

func health(mutate func(*tenantagentv1.HealthReport)) *tenantagentv1.AgentMessage {
	h := &tenantagentv1.HealthReport{AgentVersion: "v1", Runtimes: runtimes(1, 2, nil)}
	mutate(h)
	return &tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Health{Health: h}}
}

func progress(mutate func(*tenantagentv1.CommandProgress)) *tenantagentv1.AgentMessage {
	p := &tenantagentv1.CommandProgress{CommandId: "c-1", Message: "pulling"}
	mutate(p)
	return &tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Progress{Progress: p}}
}

func result(mutate func(*tenantagentv1.CommandResult)) *tenantagentv1.AgentMessage {
	r := &tenantagentv1.CommandResult{CommandId: "c-1", Outcome: tenantagentv1.CommandOutcome_COMMAND_OUTCOME_FAILED, Error: "boom"}
	mutate(r)
	return &tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Result{Result: r}}
}

func layers(count int, mutate func(*tenantagentv1.LayerProgress)) []*tenantagentv1.LayerProgress {
	out := make([]*tenantagentv1.LayerProgress, count)
	for i := range out {
		out[i] = &tenantagentv1.LayerProgress{Id: "l", Status: "Downloading"}
		if mutate != nil {
			mutate(out[i])
		}
	}
	return out
}

func containerResults(count int, mutate func(*tenantagentv1.ContainerResult)) []*tenantagentv1.ContainerResult {
	out := make([]*tenantagentv1.ContainerResult, count)
	for i := range out {
		out[i] = &tenantagentv1.ContainerResult{Name: "c"}
		if mutate != nil {
			mutate(out[i])
		}
	}
	return out
}

func TestCheckMessageBounds(t *testing.T) {
	cases := []struct {
		name string
		msg  *tenantagentv1.AgentMessage
		// field is what the error must name; empty means accepted.
		field string
		limit int
	}{
		{"hello within limits", hello(func(*tenantagentv1.Hello) {}), "", 0},
		{"hello at every limit", hello(func(h *tenantagentv1.Hello) {
			h.Tenant, h.Hostname, h.AgentVersion, h.DockerVersion = n(limits.Name), n(limits.Hostname), n(limits.Version), n(limits.Version)
			h.ResultCommandIds, h.RunningCommandIds = ids(limits.HeldCommands/2, limits.ID), ids(limits.HeldCommands/2, limits.ID)
			h.Runtimes = runtimes(limits.Runtimes, limits.Containers/limits.Runtimes, func(c *tenantagentv1.ContainerStatus) {
				c.Name, c.Id, c.ImageRef, c.ImageDigest = n(limits.Name), n(limits.ID), n(limits.ImageRef), n(limits.ImageRef)
			})
			h.Runtimes[0].Runtime, h.Runtimes[0].ImageRepository = n(limits.Name), n(limits.ImageRef)
		}), "", 0},
		{"hostname", hello(func(h *tenantagentv1.Hello) { h.Hostname = n(2 << 20) }), "hello.hostname", limits.Hostname},
		{"hostname one over", hello(func(h *tenantagentv1.Hello) { h.Hostname = n(limits.Hostname + 1) }), "hello.hostname", limits.Hostname},
		{"claimed tenant", hello(func(h *tenantagentv1.Hello) { h.Tenant = n(limits.Name + 1) }), "hello.tenant", limits.Name},
		{"agent version", hello(func(h *tenantagentv1.Hello) { h.AgentVersion = n(limits.Version + 1) }), "hello.agent_version", limits.Version},
		{"docker version", hello(func(h *tenantagentv1.Hello) { h.DockerVersion = n(limits.Version + 1) }), "hello.docker_version", limits.Version},
		{"held commands", hello(func(h *tenantagentv1.Hello) {
			h.ResultCommandIds, h.RunningCommandIds = ids(limits.HeldCommands, 4), ids(1, 4)
		}), "hello.result_command_ids+running_command_ids", limits.HeldCommands},
		{"held command ID", hello(func(h *tenantagentv1.Hello) { h.RunningCommandIds = []string{"ok", n(limits.ID + 1)} }), "hello.running_command_ids[1]", limits.ID},
		{"runtimes", hello(func(h *tenantagentv1.Hello) { h.Runtimes = runtimes(limits.Runtimes+1, 0, nil) }), "hello.runtimes", limits.Runtimes},
		{"containers over all runtimes", hello(func(h *tenantagentv1.Hello) { h.Runtimes = runtimes(2, limits.Containers/2+1, nil) }), "hello.runtimes[*].containers", limits.Containers},
		{"5000 containers", hello(func(h *tenantagentv1.Hello) { h.Runtimes = runtimes(1, 5000, nil) }), "hello.runtimes[*].containers", limits.Containers},
		{"runtime name", hello(func(h *tenantagentv1.Hello) { h.Runtimes[0].Runtime = n(limits.Name + 1) }), "hello.runtimes[0].runtime", limits.Name},
		{"runtime repository", hello(func(h *tenantagentv1.Hello) { h.Runtimes[0].ImageRepository = n(limits.ImageRef + 1) }), "hello.runtimes[0].image_repository", limits.ImageRef},
		{"container name", hello(func(h *tenantagentv1.Hello) { h.Runtimes[0].Containers[1].Name = n(limits.Name + 1) }), "hello.runtimes[0].containers[1].name", limits.Name},
		{"container id", hello(func(h *tenantagentv1.Hello) { h.Runtimes[0].Containers[0].Id = n(limits.ID + 1) }), "hello.runtimes[0].containers[0].id", limits.ID},
		{"container image ref", hello(func(h *tenantagentv1.Hello) { h.Runtimes[0].Containers[0].ImageRef = n(limits.ImageRef + 1) }), "hello.runtimes[0].containers[0].image_ref", limits.ImageRef},
		{"container digest", hello(func(h *tenantagentv1.Hello) { h.Runtimes[0].Containers[0].ImageDigest = n(limits.ImageRef + 1) }), "hello.runtimes[0].containers[0].image_digest", limits.ImageRef},

		{"health within limits", health(func(*tenantagentv1.HealthReport) {}), "", 0},
		{"health agent version", health(func(h *tenantagentv1.HealthReport) { h.AgentVersion = n(limits.Version + 1) }), "health.agent_version", limits.Version},
		{"docker error", health(func(h *tenantagentv1.HealthReport) { h.DockerError = n(limits.Message + 1) }), "health.docker_error", limits.Message},
		{"health running commands", health(func(h *tenantagentv1.HealthReport) { h.RunningCommandIds = ids(limits.HeldCommands+1, 4) }), "health.running_command_ids", limits.HeldCommands},
		{"health command ID", health(func(h *tenantagentv1.HealthReport) { h.RunningCommandIds = ids(1, limits.ID+1) }), "health.running_command_ids[0]", limits.ID},
		{"health containers", health(func(h *tenantagentv1.HealthReport) { h.Runtimes = runtimes(3, 400, nil) }), "health.runtimes[*].containers", limits.Containers},
		{"health container name", health(func(h *tenantagentv1.HealthReport) { h.Runtimes[0].Containers[1].Name = n(limits.Name + 1) }), "health.runtimes[0].containers[1].name", limits.Name},

		{"ack", &tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Ack{Ack: &tenantagentv1.CommandAck{CommandId: n(limits.ID + 1)}}}, "ack.command_id", limits.ID},

		{"progress within limits", progress(func(p *tenantagentv1.CommandProgress) { p.Layers = layers(limits.Layers, nil) }), "", 0},
		{"progress command ID", progress(func(p *tenantagentv1.CommandProgress) { p.CommandId = n(limits.ID + 1) }), "progress.command_id", limits.ID},
		{"progress message", progress(func(p *tenantagentv1.CommandProgress) { p.Message = n(limits.Message + 1) }), "progress.message", limits.Message},
		{"progress container", progress(func(p *tenantagentv1.CommandProgress) { p.Container = n(limits.Name + 1) }), "progress.container", limits.Name},
		{"layers", progress(func(p *tenantagentv1.CommandProgress) { p.Layers = layers(limits.Layers+1, nil) }), "progress.layers", limits.Layers},
		{"layer id", progress(func(p *tenantagentv1.CommandProgress) {
			p.Layers = layers(3, nil)
			p.Layers[2].Id = n(limits.ID + 1)
		}), "progress.layers[2].id", limits.ID},
		{"layer status", progress(func(p *tenantagentv1.CommandProgress) {
			p.Layers = layers(1, func(l *tenantagentv1.LayerProgress) { l.Status = n(limits.Message + 1) })
		}), "progress.layers[0].status", limits.Message},

		{"result within limits", result(func(r *tenantagentv1.CommandResult) {
			r.Error = n(limits.ResultError)
			r.Containers = containerResults(limits.Containers, nil)
		}), "", 0},
		{"result command ID", result(func(r *tenantagentv1.CommandResult) { r.CommandId = n(limits.ID + 1) }), "result.command_id", limits.ID},
		{"result error", result(func(r *tenantagentv1.CommandResult) { r.Error = n(limits.ResultError + 1) }), "result.error", limits.ResultError},
		{"result image ref", result(func(r *tenantagentv1.CommandResult) { r.ImageRef = n(limits.ImageRef + 1) }), "result.image_ref", limits.ImageRef},
		{"result containers", result(func(r *tenantagentv1.CommandResult) { r.Containers = containerResults(limits.Containers+1, nil) }), "result.containers", limits.Containers},
		{"result container name", result(func(r *tenantagentv1.CommandResult) {
			r.Containers = containerResults(1, func(c *tenantagentv1.ContainerResult) { c.Name = n(limits.Name + 1) })
		}), "result.containers[0].name", limits.Name},
		{"result container old id", result(func(r *tenantagentv1.CommandResult) {
			r.Containers = containerResults(1, func(c *tenantagentv1.ContainerResult) { c.OldContainerId = n(limits.ID + 1) })
		}), "result.containers[0].old_container_id", limits.ID},
		{"result container new id", result(func(r *tenantagentv1.CommandResult) {
			r.Containers = containerResults(1, func(c *tenantagentv1.ContainerResult) { c.NewContainerId = n(limits.ID + 1) })
		}), "result.containers[0].new_container_id", limits.ID},
		{"result container old digest", result(func(r *tenantagentv1.CommandResult) {
			r.Containers = containerResults(1, func(c *tenantagentv1.ContainerResult) { c.OldDigest = n(limits.ImageRef + 1) })
		}), "result.containers[0].old_digest", limits.ImageRef},
		{"result container new digest", result(func(r *tenantagentv1.CommandResult) {
			r.Containers = containerResults(1, func(c *tenantagentv1.ContainerResult) { c.NewDigest = n(limits.ImageRef + 1) })
		}), "result.containers[0].new_digest", limits.ImageRef},
		{"in flight", progress(func(p *tenantagentv1.CommandProgress) { p.InFlight = ids(limits.InFlight+1, 4) }), "progress.in_flight", limits.InFlight},
		{"in flight name", progress(func(p *tenantagentv1.CommandProgress) { p.InFlight = []string{"a", n(limits.Name + 1)} }), "progress.in_flight[1]", limits.Name},
		{"removed images", result(func(r *tenantagentv1.CommandResult) { r.RemovedImages = ids(limits.Containers+1, 4) }), "result.removed_images", limits.Containers},
		{"removed image", result(func(r *tenantagentv1.CommandResult) { r.RemovedImages = []string{n(limits.ImageRef + 1)} }), "result.removed_images[0]", limits.ImageRef},
		{"signature within limits", result(func(r *tenantagentv1.CommandResult) {
			r.Signature = &tenantagentv1.SignatureCheck{Rule: n(limits.ImageRef), Mode: n(limits.Name), SignedBy: n(limits.Message), Problem: n(limits.Message), SignatureRef: n(limits.ImageRef)}
		}), "", 0},
		{"signature problem", result(func(r *tenantagentv1.CommandResult) {
			r.Signature = &tenantagentv1.SignatureCheck{Problem: n(limits.Message + 1)}
		}), "result.signature.problem", limits.Message},
		{"signature signed by", result(func(r *tenantagentv1.CommandResult) {
			r.Signature = &tenantagentv1.SignatureCheck{SignedBy: n(2 << 20)}
		}), "result.signature.signed_by", limits.Message},
		{"signature rule", result(func(r *tenantagentv1.CommandResult) {
			r.Signature = &tenantagentv1.SignatureCheck{Rule: n(limits.ImageRef + 1)}
		}), "result.signature.rule", limits.ImageRef},
		{"container error", result(func(r *tenantagentv1.CommandResult) {
			r.Containers = containerResults(2, nil)
			r.Containers[1].Error = n(limits.Message + 1)
		}), "result.containers[1].error", limits.Message},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := checkMessage(tc.msg)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if cperr.KindOf(err) != cperr.KindInvalid {
				t.Errorf("kind %v, want KindInvalid", cperr.KindOf(err))
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tc.field+" ") || !strings.Contains(msg, "at most "+strconv.Itoa(tc.limit)) {
				t.Errorf("error %q does not name field %s and limit %d", msg, tc.field, tc.limit)
			}
			if len(msg) > 200 {
				t.Errorf("error is %d bytes, want a short quote: %.200s", len(msg), msg)
			}
		})
	}
}
