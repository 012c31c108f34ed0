package adminsvc

import (
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/molecule-ai/tenant-agent/controlplane/dispatch"
	"github.com/molecule-ai/tenant-agent/controlplane/fleet"
	"github.com/molecule-ai/tenant-agent/controlplane/rollout"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

// promoteRequest is the rollout's own form of a promote.
func promoteRequest(req *controlplanev1.PromoteRuntimeImageRequest) rollout.Request {
	o := req.GetOptions()
	return rollout.Request{Runtime: req.GetRuntime(), ImageRef: req.GetImageRef(), GitSHA: req.GetGitSha(), Notes: req.GetNotes(),
		Options: store.RolloutOptions{Prefetch: o.GetPrefetch(), CanaryTenants: o.GetCanaryTenants(),
			MaxParallelTenants: o.GetMaxParallelTenants(), HaltAfterFailures: o.GetHaltAfterFailures(), MaxParallelContainers: o.GetMaxParallelContainers()}}
}

func rolloutEventProto(ev rollout.Event) *controlplanev1.RolloutEvent {
	out := &controlplanev1.RolloutEvent{Time: timestamppb.New(ev.Time), RolloutId: ev.RolloutID, Kind: ev.Kind, Phase: ev.Phase,
		Tenant: ev.Tenant, CommandId: ev.CommandID, State: ev.State, Message: ev.Message}
	if ev.Pin != nil {
		out.Pin = pinProto(*ev.Pin)
	}
	if c := ev.Counts; c != nil {
		out.Counts = &controlplanev1.RolloutCounts{Tenants: c.Tenants, Succeeded: c.Succeeded, Failed: c.Failed, Skipped: c.Skipped}
	}
	return out
}

func pinProto(p store.Pin) *controlplanev1.RuntimePin {
	return &controlplanev1.RuntimePin{
		Runtime: p.Runtime, TemplateName: p.TemplateName, ImageRepository: p.Repository, ImageDigest: p.Digest, ImageRef: p.Ref(),
		GitSha: p.GitSHA, PromotedAt: timestamppb.New(p.PromotedAt), PromotedBy: p.PromotedBy, Notes: p.Notes,
	}
}

func agentProto(v fleet.AgentView) *controlplanev1.Agent {
	out := &controlplanev1.Agent{
		Identity: v.Identity, Tenant: v.Tenant, AgentName: v.Name, Connected: v.Connected,
		ConnectedAt: timestamppb.New(v.ConnectedAt), LastSeen: timestamppb.New(v.LastSeen),
		Hostname: v.Hostname, AgentVersion: v.AgentVersion, DockerVersion: v.DockerVersion, DockerReachable: v.DockerReachable,
		Held: v.Held, Denied: v.Denied,
	}
	for _, r := range v.Runtimes {
		out.Runtimes = append(out.Runtimes, &controlplanev1.AgentRuntime{Status: r.Status, PinnedDigest: r.PinnedDigest, OnPin: r.OnPin, OffPin: r.OffPin})
	}
	return out
}

func commandProto(c *store.Command) *controlplanev1.Command {
	return &controlplanev1.Command{
		CommandId: c.ID, Tenant: c.Tenant, Kind: c.Kind, Runtime: c.Runtime,
		ImageRepository: c.Repository, ImageDigest: c.Digest, State: c.State,
		RequestedBy: c.RequestedBy, RolloutId: c.RolloutID,
		CreatedAt: timestamppb.New(c.CreatedAt), UpdatedAt: timestamppb.New(c.UpdatedAt), Deadline: timestamppb.New(c.Deadline),
		Error: c.Error, Result: c.Result,
	}
}

func storedEventProto(ev store.Event) *controlplanev1.CommandEvent {
	out := &controlplanev1.CommandEvent{Time: timestamppb.New(ev.At), State: ev.State, Message: ev.Message}
	if ev.Progress != nil {
		out.Event = &controlplanev1.CommandEvent_Progress{Progress: ev.Progress}
	}
	return out
}

func snapshotEvent(c *store.Command, message string) *controlplanev1.CommandEvent {
	if message == "" {
		message = describeState(c)
	}
	return &controlplanev1.CommandEvent{
		Time: timestamppb.New(c.UpdatedAt), State: c.State, Message: message,
		Event: &controlplanev1.CommandEvent_Command{Command: commandProto(c)},
	}
}

func updateEvent(u dispatch.Update) *controlplanev1.CommandEvent {
	if u.Command != nil {
		return snapshotEvent(u.Command, "")
	}
	return &controlplanev1.CommandEvent{
		Time: u.Progress.GetTime(), State: controlplanev1.CommandState_COMMAND_STATE_RUNNING, Message: u.Progress.GetMessage(),
		Event: &controlplanev1.CommandEvent_Progress{Progress: u.Progress},
	}
}

func describeState(c *store.Command) string {
	s := strings.ToLower(strings.TrimPrefix(c.State.String(), "COMMAND_STATE_"))
	if c.Error != "" {
		s += ": " + c.Error
	}
	return s
}

func rolloutProto(ro store.Rollout, c rollout.Counts) *controlplanev1.Rollout {
	state := map[store.RolloutState]controlplanev1.RolloutState{
		store.RolloutRunning: controlplanev1.RolloutState_ROLLOUT_STATE_RUNNING, store.RolloutCompleted: controlplanev1.RolloutState_ROLLOUT_STATE_COMPLETED,
		store.RolloutHalted: controlplanev1.RolloutState_ROLLOUT_STATE_HALTED, store.RolloutAborted: controlplanev1.RolloutState_ROLLOUT_STATE_ABORTED,
	}[ro.State]
	o := ro.Options
	return &controlplanev1.Rollout{
		RolloutId: ro.ID, Runtime: ro.Runtime, ImageRef: ro.Repository + "@" + ro.Digest,
		Options: &controlplanev1.RolloutOptions{Prefetch: o.Prefetch, CanaryTenants: o.CanaryTenants, MaxParallelTenants: o.MaxParallelTenants, HaltAfterFailures: o.HaltAfterFailures,
			MaxParallelContainers: o.MaxParallelContainers},
		State: state, RequestedBy: ro.RequestedBy, CreatedAt: timestamppb.New(ro.CreatedAt), UpdatedAt: timestamppb.New(ro.UpdatedAt), Message: ro.Message,
		Counts: &controlplanev1.RolloutCounts{Tenants: c.Tenants, Succeeded: c.Succeeded, Failed: c.Failed, Skipped: c.Skipped},
	}
}

// rolloutStateOf is a ListRollouts filter in the store's terms; ok is
// false for a value the API does not define.
func rolloutStateOf(s controlplanev1.RolloutState) (store.RolloutState, bool) {
	switch s {
	case controlplanev1.RolloutState_ROLLOUT_STATE_UNSPECIFIED:
		return "", true
	case controlplanev1.RolloutState_ROLLOUT_STATE_RUNNING:
		return store.RolloutRunning, true
	case controlplanev1.RolloutState_ROLLOUT_STATE_COMPLETED:
		return store.RolloutCompleted, true
	case controlplanev1.RolloutState_ROLLOUT_STATE_HALTED:
		return store.RolloutHalted, true
	case controlplanev1.RolloutState_ROLLOUT_STATE_ABORTED:
		return store.RolloutAborted, true
	}
	return "", false
}
