-- Replicas and agent sessions (issue #13): which replica holds each
-- agent's stream, so a replica that journals a command for an agent whose
-- stream is elsewhere can wake the one holding it (pgcluster). Times are
-- Unix nanoseconds like every other time column here.

-- A replica heartbeats its row (seen_at) at every sweep; one not seen
-- for the cluster's ReplicaTTL is dead, and its sessions are reaped.
CREATE TABLE replicas (
    id         TEXT   PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL
);

-- One row per agent ever claimed. A released or reaped session keeps its
-- row with replica = '', so the epoch only ever grows per identity: the
-- holder of an older epoch knows it was replaced.
CREATE TABLE agent_sessions (
    identity     TEXT   PRIMARY KEY,
    replica      TEXT   NOT NULL,
    epoch        BIGINT NOT NULL,
    connected_at BIGINT NOT NULL
);
-- The sweep reads and reaps the held sessions only.
CREATE INDEX agent_sessions_held ON agent_sessions (replica) WHERE replica <> '';
