package adminsvc

import (
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/molecule-ai/tenant-agent/controlplane/dispatch"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

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
