package server

import (
	"context"
	"log/slog"

	"github.com/molecule-ai/tenant-agent/controlplane/cluster"
	"github.com/molecule-ai/tenant-agent/controlplane/dispatch"
	"github.com/molecule-ai/tenant-agent/controlplane/fleet"
	"github.com/molecule-ai/tenant-agent/controlplane/session"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// peers is how this replica answers the others: each doorbell goes to the
// component that owns what changed, which re-reads the store.
type peers struct {
	dispatcher *dispatch.Dispatcher
	fleet      *fleet.Fleet
	sessions   *session.Registry
	logger     *slog.Logger
}

var _ cluster.Handler = peers{}

func (p peers) Deliver(ctx context.Context, agents []string) {
	p.dispatcher.DeliverPending(ctx, agents)
}

func (p peers) Cancel(ctx context.Context, agent, commandID string) {
	p.dispatcher.CancelHere(ctx, agent, commandID)
}

func (p peers) CommandsChanged(ctx context.Context, ids []string) { p.dispatcher.Reread(ctx, ids) }

func (p peers) Progress(pr *tenantagentv1.CommandProgress) { p.dispatcher.ForwardProgress(pr) }

func (p peers) AgentsChanged(ctx context.Context, ids []string, all bool) {
	if err := p.fleet.ReloadAgents(ctx, ids, all); err != nil {
		p.logger.Error("cannot re-read agents another replica changed", "agents", len(ids), "all", all, "error", err)
	}
}

func (p peers) StateChanged(ctx context.Context) {
	if err := p.fleet.ReloadState(ctx); err != nil {
		p.logger.Error("cannot re-read pins, holds and denials another replica changed", "error", err)
	}
}

func (p peers) Replaced(agent string, epoch int64) {
	if p.sessions.CloseOlder(agent, epoch) {
		p.logger.Info("agent's stream closed: it has a newer one on another replica", "agent", agent, "epoch", epoch)
	}
}
