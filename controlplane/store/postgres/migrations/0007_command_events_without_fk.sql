-- command_events.command_id no longer references commands (id): the
-- foreign key's check ran a locking lookup of the command for every
-- event row, and a promote writes four events a command. It was half of
-- PostgreSQL's time for a fan-out of 1,000 (storetest.BenchFanOut with
-- pg_stat_statements: 2.7-3.4 s of statement time for ten fan-outs with
-- it, 1.2-1.3 s without). The store keeps the rule itself: an event is
-- written with or after its command, in the command's own transaction or
-- for a command just read, and PruneHistory deletes a command's events
-- before the command, in one transaction.
ALTER TABLE command_events DROP CONSTRAINT command_events_command_id_fkey;
