-- Runs on SQLite and on PostgreSQL alike.
-- version: the version of the projection code that built a read model's rows. A release that
-- changes what a projection makes of events it has already applied raises its version; the
-- runner holding the projection then rebuilds it beside the live tables. Rows from before
-- this column were built by version 1.
-- generation: raised by every rebuild's swap, which replaces the rows without moving the
-- position; what was answered at (position, generation) stays right while both stand.
ALTER TABLE checkpoints ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE checkpoints ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
