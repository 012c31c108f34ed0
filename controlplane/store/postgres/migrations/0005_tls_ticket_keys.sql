-- TLS session ticket keys (issue #16): kept in the store so that tickets
-- outlive a restart and every replica can resume the others' sessions.
-- created_at is Unix nanoseconds; secret is 32 random bytes. Secret
-- material: never logged, never served by the admin API.
CREATE TABLE tls_ticket_keys (
    created_at BIGINT NOT NULL,
    secret     BYTEA  NOT NULL
);
