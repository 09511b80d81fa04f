-- Runs on SQLite and on PostgreSQL alike.
-- The version of the projection code that built a read model's rows. A release that changes
-- what a projection makes of events it has already applied raises its version; the runner
-- holding the projection then rebuilds it beside the live tables. Rows from before this
-- column were built by version 1.
ALTER TABLE checkpoints ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
