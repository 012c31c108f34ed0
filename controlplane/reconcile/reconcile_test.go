package reconcile

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/dispatch"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

const (
	digest    = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	oldDigest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
)

type fakeStore struct {
	rollouts []store.Rollout
	commands []*store.Command // newest first
}

func (s *fakeStore) ListRollouts(context.Context, string, store.RolloutState) ([]store.Rollout, error) {
	return s.rollouts, nil
}

func (s *fakeStore) ListCommands(context.Context, store.CommandFilter) ([]*store.Command, error) {
	return s.commands, nil
}

type fakeFleet struct{ held bool }

func (fakeFleet) Pin(runtime string) (store.Pin, bool) {
	return store.Pin{Runtime: runtime, Repository: "registry.example/ws-codex", Digest: digest}, true
}

func (f fakeFleet) Held(tenant string) (store.Hold, bool) { return store.Hold{Tenant: tenant}, f.held }

type issuer struct{ issued []*store.Command }

func (i *issuer) Command(req dispatch.Request, a store.Agent) (*store.Command, error) {
	return &store.Command{Agent: a.Identity, Tenant: a.Tenant, Kind: req.Kind, Runtime: req.Runtime, Repository: req.Repository, Digest: req.Digest, RequestedBy: req.RequestedBy}, nil
}

func (i *issuer) Issue(_ context.Context, cmds []*store.Command) error {
	i.issued = append(i.issued, cmds...)
	return nil
}

// offPin is an agent whose codex container runs the old digest.
var offPin = store.Agent{Identity: "spiffe://td/tenant/acme", Tenant: "acme", Runtimes: []*tenantagentv1.RuntimeStatus{{
	Runtime: "codex", Containers: []*tenantagentv1.ContainerStatus{{Name: "ws-1", ImageDigest: oldDigest}},
}}}

func newReconciler(t *testing.T, st *fakeStore, fl fakeFleet, now *time.Time) (*Reconciler, *issuer) {
	t.Helper()
	is := &issuer{}
	r, err := New(Config{Store: st, Fleet: fl, Issuer: is, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		BackoffBase: time.Minute, BackoffMax: 10 * time.Minute, Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	return r, is
}

func TestReconcileIssuesARefreshToThePin(t *testing.T) {
	now := time.Unix(1000, 0)
	r, is := newReconciler(t, &fakeStore{}, fakeFleet{}, &now)
	r.Reconcile(context.Background(), offPin)
	if len(is.issued) != 1 || is.issued[0].Digest != digest || is.issued[0].Repository != "registry.example/ws-codex" ||
		is.issued[0].Agent != offPin.Identity || is.issued[0].RequestedBy != "reconcile" {
		t.Fatalf("issued %+v; want one refresh of the pin for the offPin agent", is.issued)
	}
}

func TestReconcileLeavesHeldTenantsAndRunningRolloutsAlone(t *testing.T) {
	now := time.Unix(1000, 0)
	r, is := newReconciler(t, &fakeStore{}, fakeFleet{held: true}, &now)
	r.Reconcile(context.Background(), offPin)
	if len(is.issued) != 0 {
		t.Errorf("held tenant got %d refreshes", len(is.issued))
	}
	st := &fakeStore{rollouts: []store.Rollout{{ID: "r1", Runtime: "codex", Digest: digest, State: store.RolloutHalted}}}
	r, is = newReconciler(t, st, fakeFleet{}, &now)
	r.Reconcile(context.Background(), offPin)
	if len(is.issued) != 0 {
		t.Errorf("a halted rollout of the pin is in charge, yet %d refreshes were issued", len(is.issued))
	}
}

func TestReconcileBacksOffExponentiallyAfterFailures(t *testing.T) {
	t0 := time.Unix(1000, 0)
	failedAt := func(state controlplanev1.CommandState) *store.Command {
		return &store.Command{Digest: digest, State: state, UpdatedAt: t0}
	}
	for _, tc := range []struct {
		name    string
		history []*store.Command
		after   time.Duration
		issue   bool
	}{
		{"one failure, within 1m", []*store.Command{failedAt(controlplanev1.CommandState_COMMAND_STATE_FAILED)}, 59 * time.Second, false},
		{"one failure, after 1m", []*store.Command{failedAt(controlplanev1.CommandState_COMMAND_STATE_FAILED)}, 61 * time.Second, true},
		{"two failures (one PARTIAL), within 2m", []*store.Command{failedAt(controlplanev1.CommandState_COMMAND_STATE_PARTIAL), failedAt(controlplanev1.CommandState_COMMAND_STATE_FAILED)}, 119 * time.Second, false},
		{"two failures, after 2m", []*store.Command{failedAt(controlplanev1.CommandState_COMMAND_STATE_ROLLED_BACK), failedAt(controlplanev1.CommandState_COMMAND_STATE_EXPIRED)}, 121 * time.Second, true},
		{"five failures, capped at 10m", []*store.Command{failedAt(controlplanev1.CommandState_COMMAND_STATE_FAILED), failedAt(controlplanev1.CommandState_COMMAND_STATE_FAILED), failedAt(controlplanev1.CommandState_COMMAND_STATE_FAILED), failedAt(controlplanev1.CommandState_COMMAND_STATE_FAILED), failedAt(controlplanev1.CommandState_COMMAND_STATE_FAILED)}, 10*time.Minute + time.Second, true},
		{"a success ends the run of failures", []*store.Command{failedAt(controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED), failedAt(controlplanev1.CommandState_COMMAND_STATE_FAILED)}, time.Second, true},
		{"a refresh under way", []*store.Command{failedAt(controlplanev1.CommandState_COMMAND_STATE_RUNNING)}, time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := t0.Add(tc.after)
			r, is := newReconciler(t, &fakeStore{commands: tc.history}, fakeFleet{}, &now)
			r.Reconcile(context.Background(), offPin)
			if got := len(is.issued) == 1; got != tc.issue {
				t.Errorf("issued %d refreshes %s after the newest; want issue=%v", len(is.issued), tc.after, tc.issue)
			}
		})
	}
}
