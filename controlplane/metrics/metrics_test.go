package metrics

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/molecule-ai/tenant-agent/controlplane/auth"
	"github.com/molecule-ai/tenant-agent/controlplane/fleet"
	"github.com/molecule-ai/tenant-agent/controlplane/session"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/teststore"
)

func newMetrics(t *testing.T) *Metrics {
	st := teststore.Open(t)
	sessions := session.NewRegistry(8)
	f, err := fleet.New(context.Background(), fleet.Config{Store: st, Sessions: sessions, Deny: auth.NewDenyList()})
	if err != nil {
		t.Fatal(err)
	}
	return New(sessions, f)
}

// A finished command is counted by kind and state, its result's pull and
// containers by outcome, with no command or container ID in any label.
func TestCommandFinishedCountsByBoundedLabels(t *testing.T) {
	m := newMetrics(t)
	now := time.Now()
	m.CommandFinished(&store.Command{
		ID: "c-1", Kind: controlplanev1.CommandKind_COMMAND_KIND_REFRESH, State: controlplanev1.CommandState_COMMAND_STATE_PARTIAL,
		CreatedAt: now.Add(-3 * time.Second), UpdatedAt: now,
		Result: &tenantagentv1.CommandResult{PulledBytes: 2048, PullDuration: durationpb.New(time.Second), Containers: []*tenantagentv1.ContainerResult{
			{Name: "ws-1", Outcome: tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED, Downtime: durationpb.New(400 * time.Millisecond)},
			{Name: "ws-2", Outcome: tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_NOT_ATTEMPTED},
		}},
	})
	m.ReconnectRefused()
	m.ConnRefused()
	m.ConnRefused()
	if got := value(t, m, "commands_finished_total", "refresh", "partial"); got != 1 {
		t.Errorf("refresh/partial counted %v", got)
	}
	if got := value(t, m, "containers_refreshed_total", "recreated"); got != 1 {
		t.Errorf("recreated containers counted %v", got)
	}
	if got := value(t, m, "pull_bytes_total"); got != 2048 {
		t.Errorf("pull bytes %v", got)
	}
	if got := value(t, m, "agent_admissions_refused_total", "connection_cap"); got != 2 {
		t.Errorf("connection_cap refusals %v", got)
	}
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		for _, metric := range mf.GetMetric() {
			for _, l := range metric.GetLabel() {
				if strings.Contains(l.GetValue(), "c-1") || strings.HasPrefix(l.GetValue(), "ws-") {
					t.Errorf("%s has label %s=%s: IDs and names make unbounded series", mf.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
}

// value reads one counter from the registry by name and label values.
func value(t *testing.T, m *Metrics, name string, labels ...string) float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != namespace+"_"+name {
			continue
		}
	metrics:
		for _, metric := range mf.GetMetric() {
			if len(metric.GetLabel()) != len(labels) {
				continue
			}
			for i, l := range metric.GetLabel() {
				if l.GetValue() != labels[i] {
					continue metrics
				}
			}
			return metric.GetCounter().GetValue()
		}
	}
	return 0
}
