-- Runs on SQLite and on PostgreSQL alike.
-- Runs that change nothing are cheap, and the read models say so without a row each.
--
-- sync_runs: consecutive completed runs of an integration that changed nothing (same kind and
-- trigger) share one row: `checks` runs, the first ended at `first_checked_at`, the last at
-- `last_checked_at` (the row's other columns are the last run's). A row of one run has
-- checks = 1, and both times are when it ended. Rows written before this migration stand for
-- one run each; the sync logs' projection (version 2) rebuilds them at start, merging as it goes.
ALTER TABLE sync_runs ADD COLUMN checks BIGINT NOT NULL DEFAULT 1;
ALTER TABLE sync_runs ADD COLUMN first_checked_at TEXT;
ALTER TABLE sync_runs ADD COLUMN last_checked_at TEXT;
-- installed: when a run last created, updated or deleted a record (Installed, version 3).
ALTER TABLE installed ADD COLUMN last_changed_at TEXT;
