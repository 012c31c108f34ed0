-- The SQLite schema in PostgreSQL types. Times stay Unix nanoseconds
-- (BIGINT, UTC): timestamptz keeps microseconds, and both stores must
-- hand back the times they were given. Protobuf columns hold binary
-- protobuf.

CREATE TABLE pins (
    seq              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    runtime          TEXT    NOT NULL,
    template_name    TEXT    NOT NULL,
    image_repository TEXT    NOT NULL,
    image_digest     TEXT    NOT NULL,
    git_sha          TEXT    NOT NULL DEFAULT '',
    promoted_at      BIGINT  NOT NULL,
    promoted_by      TEXT    NOT NULL,
    notes            TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX pins_by_runtime ON pins (runtime, seq DESC);

CREATE TABLE commands (
    seq              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    agent            TEXT    NOT NULL,
    tenant           TEXT    NOT NULL,
    kind             INTEGER NOT NULL,
    runtime          TEXT    NOT NULL,
    image_repository TEXT    NOT NULL,
    image_digest     TEXT    NOT NULL,
    options          BYTEA,
    state            INTEGER NOT NULL,
    requested_by     TEXT    NOT NULL,
    rollout_id       TEXT    NOT NULL DEFAULT '',
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    deadline         BIGINT  NOT NULL,
    error            TEXT    NOT NULL DEFAULT '',
    result           BYTEA
);
CREATE INDEX commands_by_agent ON commands (agent, state);
CREATE INDEX commands_by_tenant ON commands (tenant, seq DESC);
CREATE INDEX commands_by_rollout ON commands (rollout_id) WHERE rollout_id <> '';
CREATE INDEX commands_by_state ON commands (state, deadline);
-- At most one PENDING (1) refresh (1) per agent and runtime: InsertCommands
-- supersedes the old one first. SQLite's single writer keeps this by
-- itself; here two replicas inserting at once would otherwise both keep
-- theirs, so the second one's transaction fails instead.
CREATE UNIQUE INDEX commands_one_pending_refresh ON commands (agent, runtime) WHERE kind = 1 AND state = 1;

CREATE TABLE command_events (
    seq        BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    command_id TEXT    NOT NULL REFERENCES commands (id),
    at         BIGINT  NOT NULL,
    state      INTEGER NOT NULL,
    progress   BYTEA,
    message    TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX command_events_by_command ON command_events (command_id, seq);

CREATE TABLE agents (
    identity         TEXT    PRIMARY KEY,
    tenant           TEXT    NOT NULL,
    name             TEXT    NOT NULL DEFAULT '',
    connected_at     BIGINT  NOT NULL,
    last_seen        BIGINT  NOT NULL,
    hostname         TEXT    NOT NULL DEFAULT '',
    agent_version    TEXT    NOT NULL DEFAULT '',
    docker_version   TEXT    NOT NULL DEFAULT '',
    docker_reachable BOOLEAN NOT NULL DEFAULT FALSE,
    runtimes         BYTEA
);
CREATE INDEX agents_by_tenant ON agents (tenant);

CREATE TABLE holds (
    tenant  TEXT    PRIMARY KEY,
    reason  TEXT    NOT NULL DEFAULT '',
    held_by TEXT    NOT NULL,
    held_at BIGINT  NOT NULL
);

CREATE TABLE denials (
    kind      TEXT    NOT NULL,
    value     TEXT    NOT NULL,
    reason    TEXT    NOT NULL DEFAULT '',
    denied_by TEXT    NOT NULL,
    denied_at BIGINT  NOT NULL,
    PRIMARY KEY (kind, value)
);

CREATE TABLE rollouts (
    seq              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    runtime          TEXT    NOT NULL,
    image_repository TEXT    NOT NULL,
    image_digest     TEXT    NOT NULL,
    options          BYTEA,
    state            TEXT    NOT NULL,
    requested_by     TEXT    NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    message          TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX rollouts_by_runtime ON rollouts (runtime, seq DESC);
