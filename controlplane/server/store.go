package server

import (
	"context"
	"crypto/rand"
	"net/url"
	"strings"

	"github.com/molecule-ai/tenant-agent/controlplane/cluster"
	"github.com/molecule-ai/tenant-agent/controlplane/cluster/pgcluster"
	"github.com/molecule-ai/tenant-agent/controlplane/session"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/controlplane/store/postgres"
	"github.com/molecule-ai/tenant-agent/controlplane/store/sqlite"
)

// isPostgres reports whether --store names a PostgreSQL database rather
// than a SQLite file.
func isPostgres(spec string) bool {
	return strings.HasPrefix(spec, "postgres://") || strings.HasPrefix(spec, "postgresql://")
}

// replicaID names this process among the replicas: fresh for each start
// on PostgreSQL (a dead replica's sessions and leases are never mistaken
// for a new one's), and the cluster of one's on SQLite, which one process
// holds at a time.
func replicaID(spec string) string {
	if !isPostgres(spec) {
		return cluster.LocalReplica
	}
	return "r" + strings.ToLower(rand.Text()[:12])
}

// openStore opens the store --store names: a PostgreSQL URL, shared by
// replicas, or else a SQLite file.
func openStore(ctx context.Context, spec, replica string) (store.Store, error) {
	// A failed open returns a nil interface, never a nil *Store inside
	// one, which close would call.
	if isPostgres(spec) {
		st, err := postgres.Open(ctx, spec, postgres.Replica(replica))
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	st, err := sqlite.Open(ctx, spec)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// openCluster joins the replicas sharing the store: on PostgreSQL, with
// doorbells over LISTEN/NOTIFY; on SQLite the cluster is this process
// alone.
func openCluster(ctx context.Context, cfg Config, replica string, sessions *session.Registry) (cluster.Cluster, error) {
	if !isPostgres(cfg.StorePath) {
		return cluster.NewLocal(sessions), nil
	}
	return pgcluster.New(ctx, pgcluster.Config{DSN: cfg.StorePath, Replica: replica, Logger: cfg.Logger,
		SweepEvery: cfg.ClusterSweep, ReplicaTTL: cfg.ReplicaTTL})
}

// storeForLog is --store fit for a log line: a URL loses its password.
func storeForLog(spec string) string {
	if !isPostgres(spec) {
		return spec
	}
	u, err := url.Parse(spec)
	if err != nil {
		return "postgres (unparsable URL)"
	}
	return u.Redacted()
}
