-- Rollout leases (issue #13): the replica running a rollout owns it until
-- lease_until (Unix nanoseconds) and renews it; epoch counts claims, and
-- every write of a running rollout is fenced by (owner, epoch). Rollouts
-- from before have no owner and an expired lease: the first claim takes
-- them.
ALTER TABLE rollouts ADD COLUMN owner       TEXT    NOT NULL DEFAULT '';
ALTER TABLE rollouts ADD COLUMN epoch       INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
-- The claim scan reads running rollouts only.
CREATE INDEX rollouts_running ON rollouts (lease_until) WHERE state = 'running';

-- A rollout issues at most one command of a kind per agent, so a replica
-- that lost a rollout but has not noticed yet and the one that took it
-- over can never both refresh a tenant: the later insert fails. The
-- rollout already reused its commands by agent, newest first; should an
-- older journal hold a second one anyway, the newest stays the rollout's
-- and the others are detached (kept, with no rollout) so the index builds.
UPDATE commands SET rollout_id = ''
WHERE rollout_id <> ''
  AND seq NOT IN (SELECT MAX(seq) FROM commands WHERE rollout_id <> '' GROUP BY rollout_id, agent, kind);
CREATE UNIQUE INDEX commands_one_per_rollout_agent ON commands (rollout_id, agent, kind) WHERE rollout_id <> '';
