-- commands_by_rollout (rollout_id, where not '') duplicates the leading
-- column of commands_one_per_rollout_agent (rollout_id, agent, kind, on
-- the same rows), which serves the same queries (ListCommands says
-- rollout_id <> '' so that the partial index applies): one index less
-- for every command written and every state it moves through.
DROP INDEX commands_by_rollout;
