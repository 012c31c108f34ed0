-- Operators abort and resume rollouts (issue #14): resumed_at (Unix
-- nanoseconds, 0 for never) is when a halted rollout was last resumed;
-- failures before it no longer count towards its halt.
ALTER TABLE rollouts ADD COLUMN resumed_at BIGINT NOT NULL DEFAULT 0;
