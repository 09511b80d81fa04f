-- Runs on SQLite and on PostgreSQL alike.
-- The log position a kept answer's request wrote up to (its Harmony-Position), replayed with
-- it; NULL when it wrote nothing.
ALTER TABLE idempotency_keys ADD COLUMN position BIGINT;
