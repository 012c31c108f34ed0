package dispatch

import (
	"context"
	"slices"

	"github.com/molecule-ai/tenant-agent/controlplane/session"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// What other replicas ask of this one (cluster.Handler, through the
// server). Each re-reads the store: the request is only a hint.

// DeliverPending sends the PENDING commands of those agents whose stream
// is here: another replica journaled them, or a doorbell was lost and the
// sweep found them. One read and one write for the lot.
func (d *Dispatcher) DeliverPending(ctx context.Context, agents []string) {
	sessions := map[string]*session.Session{}
	var here []string
	for _, a := range agents {
		if s := d.cfg.Sessions.Get(a); s != nil {
			sessions[a] = s
			here = append(here, a)
		}
	}
	if len(here) == 0 {
		return
	}
	pending, err := d.cfg.Store.ListCommands(ctx, store.CommandFilter{Agents: here,
		States: []controlplanev1.CommandState{controlplanev1.CommandState_COMMAND_STATE_PENDING}, Oldest: true})
	if err != nil {
		d.cfg.Logger.Error("cannot read pending commands", "agents", len(here), "error", err)
		return
	}
	var sent []string
	for _, c := range pending {
		s := sessions[c.Agent]
		ok, err := s.SendCommand(c.ID, ControlMessage(c))
		if err != nil {
			d.cfg.Logger.Warn("command not sent; it stays pending", "command", c.ID, "agent", c.Agent, "error", err)
			continue
		}
		if ok {
			sent = append(sent, c.ID)
		}
	}
	d.markSent(ctx, sent, "sent on the agent's stream")
}

// CancelHere sends agent a CancelCommand for a command another replica
// ended (expired) or was asked to cancel, if the agent's stream is here
// and the command is the agent's and has no result yet.
func (d *Dispatcher) CancelHere(ctx context.Context, agent, id string) {
	s := d.cfg.Sessions.Get(agent)
	if s == nil {
		return
	}
	c, err := d.cfg.Store.GetCommand(ctx, id)
	if err != nil || c.Agent != agent || c.Result != nil {
		return
	}
	reason := "canceled"
	if c.State == controlplanev1.CommandState_COMMAND_STATE_EXPIRED {
		reason = "expired"
	}
	_ = s.Send(cancelMessage(id, reason))
}

// Reread re-reads commands another replica changed, for the watchers
// here; nil ids means every watched command. One read for the lot.
func (d *Dispatcher) Reread(ctx context.Context, ids []string) {
	if ids == nil {
		ids = append(d.updates.Keys(), d.states.Keys()...)
		slices.Sort(ids)
		ids = slices.Compact(ids)
	}
	var watched []string
	for _, id := range ids {
		if d.watched(id) {
			watched = append(watched, id)
		} else {
			d.reread.Delete(id)
		}
	}
	if len(watched) == 0 {
		return
	}
	cmds, err := d.cfg.Store.ListCommands(ctx, store.CommandFilter{IDs: watched})
	if err != nil {
		d.cfg.Logger.Warn("cannot re-read commands another replica changed", "commands", len(watched), "error", err)
		return
	}
	for _, c := range cmds {
		// Several doorbells may ring for one change: tell watchers of a
		// change once.
		if last, ok := d.reread.Load(c.ID); ok && last.(commandVersion) == versionOf(c) {
			continue
		}
		if store.Terminal(c.State) {
			d.reread.Delete(c.ID)
		} else {
			d.reread.Store(c.ID, versionOf(c))
		}
		d.publish(c)
	}
}

// commandVersion tells one stored change of a command from the next.
type commandVersion struct {
	state   controlplanev1.CommandState
	updated int64
}

func versionOf(c *store.Command) commandVersion {
	return commandVersion{c.State, c.UpdatedAt.UnixNano()}
}

// ForwardProgress passes another replica's progress report to the
// watchers here.
func (d *Dispatcher) ForwardProgress(p *tenantagentv1.CommandProgress) {
	d.updates.Publish(p.GetCommandId(), Update{Progress: p})
}

func cancelMessage(id, reason string) *tenantagentv1.ControlMessage {
	return &tenantagentv1.ControlMessage{Body: &tenantagentv1.ControlMessage_Cancel{Cancel: &tenantagentv1.CancelCommand{CommandId: id, Reason: reason}}}
}
