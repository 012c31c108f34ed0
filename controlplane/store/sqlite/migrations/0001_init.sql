-- Times are Unix nanoseconds (UTC). Protobuf columns hold binary protobuf.

CREATE TABLE pins (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    runtime          TEXT    NOT NULL,
    template_name    TEXT    NOT NULL,
    image_repository TEXT    NOT NULL,
    image_digest     TEXT    NOT NULL,
    git_sha          TEXT    NOT NULL DEFAULT '',
    promoted_at      INTEGER NOT NULL,
    promoted_by      TEXT    NOT NULL,
    notes            TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX pins_by_runtime ON pins (runtime, seq DESC);

CREATE TABLE commands (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    agent            TEXT    NOT NULL,
    tenant           TEXT    NOT NULL,
    kind             INTEGER NOT NULL,
    runtime          TEXT    NOT NULL,
    image_repository TEXT    NOT NULL,
    image_digest     TEXT    NOT NULL,
    options          BLOB,
    state            INTEGER NOT NULL,
    requested_by     TEXT    NOT NULL,
    rollout_id       TEXT    NOT NULL DEFAULT '',
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    deadline         INTEGER NOT NULL,
    error            TEXT    NOT NULL DEFAULT '',
    result           BLOB
);
CREATE INDEX commands_by_agent ON commands (agent, state);
CREATE INDEX commands_by_tenant ON commands (tenant, seq DESC);
CREATE INDEX commands_by_rollout ON commands (rollout_id) WHERE rollout_id != '';
CREATE INDEX commands_by_state ON commands (state, deadline);

CREATE TABLE command_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id TEXT    NOT NULL REFERENCES commands (id),
    at         INTEGER NOT NULL,
    state      INTEGER NOT NULL,
    progress   BLOB,
    message    TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX command_events_by_command ON command_events (command_id, seq);

CREATE TABLE agents (
    identity         TEXT    PRIMARY KEY,
    tenant           TEXT    NOT NULL,
    name             TEXT    NOT NULL DEFAULT '',
    connected_at     INTEGER NOT NULL,
    last_seen        INTEGER NOT NULL,
    hostname         TEXT    NOT NULL DEFAULT '',
    agent_version    TEXT    NOT NULL DEFAULT '',
    docker_version   TEXT    NOT NULL DEFAULT '',
    docker_reachable INTEGER NOT NULL DEFAULT 0,
    runtimes         BLOB
);
CREATE INDEX agents_by_tenant ON agents (tenant);

CREATE TABLE holds (
    tenant  TEXT    PRIMARY KEY,
    reason  TEXT    NOT NULL DEFAULT '',
    held_by TEXT    NOT NULL,
    held_at INTEGER NOT NULL
);

CREATE TABLE denials (
    kind      TEXT    NOT NULL,
    value     TEXT    NOT NULL,
    reason    TEXT    NOT NULL DEFAULT '',
    denied_by TEXT    NOT NULL,
    denied_at INTEGER NOT NULL,
    PRIMARY KEY (kind, value)
);

CREATE TABLE rollouts (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    runtime          TEXT    NOT NULL,
    image_repository TEXT    NOT NULL,
    image_digest     TEXT    NOT NULL,
    options          BLOB,
    state            TEXT    NOT NULL,
    requested_by     TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    message          TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX rollouts_by_runtime ON rollouts (runtime, seq DESC);
