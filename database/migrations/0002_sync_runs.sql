-- Runs on SQLite and on PostgreSQL alike: keep to the SQL both share.
-- The sync logs: one row per sync run of an integration, newest found by `position`.
CREATE TABLE sync_runs (
    sync_id        TEXT PRIMARY KEY,
    integration_id TEXT NOT NULL,
    workspace      TEXT NOT NULL,
    owner          TEXT,                 -- the user, for a personal integration
    kind           TEXT NOT NULL,        -- full | incremental
    trigger_kind   TEXT NOT NULL,        -- manual | schedule
    requested_by   TEXT,                 -- the user who asked, for a manual sync
    requested_at   TEXT NOT NULL,
    started_at     TEXT,
    finished_at    TEXT,
    status         TEXT NOT NULL,        -- requested | running | completed | failed | cancelled
    pulled         BIGINT NOT NULL,
    created        BIGINT NOT NULL,
    updated        BIGINT NOT NULL,
    deleted        BIGINT NOT NULL,
    error_code     TEXT,
    error_message  TEXT,
    duration_ms    BIGINT,
    position       BIGINT NOT NULL       -- where the run was requested in the log: the paging order
);
CREATE INDEX sync_runs_by_integration ON sync_runs (integration_id, position);

-- Each page a run pulled.
CREATE TABLE sync_run_pages (
    sync_id  TEXT NOT NULL,
    object   TEXT NOT NULL,
    page     BIGINT NOT NULL,
    pulled   BIGINT NOT NULL,
    created  BIGINT NOT NULL,
    updated  BIGINT NOT NULL,
    deleted  BIGINT NOT NULL,
    cursor   TEXT,
    at       TEXT NOT NULL,
    PRIMARY KEY (sync_id, object, page)
);
