-- Runs on SQLite and on PostgreSQL alike: keep to the SQL both share.
-- Where each projection is in the event log. Written in the same transaction as its rows.
CREATE TABLE checkpoints (
    name     TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);

-- Marketplace > Installed: one row per integration that is not deleted.
CREATE TABLE installed (
    integration_id    TEXT PRIMARY KEY,
    workspace         TEXT NOT NULL,
    app               TEXT NOT NULL,
    scope             TEXT NOT NULL,        -- workspace | personal
    owner             TEXT,                 -- the user, for a personal integration
    status            TEXT NOT NULL,        -- connected | needs_reauth | syncing | error | disconnected
    connected_by      TEXT NOT NULL,
    connected_at      TEXT NOT NULL,
    last_sync_at      TEXT,
    last_sync_outcome TEXT,                 -- completed | failed | cancelled
    records_pulled    BIGINT NOT NULL,
    records_created   BIGINT NOT NULL,
    records_updated   BIGINT NOT NULL,
    records_deleted   BIGINT NOT NULL,
    mapping_version   BIGINT NOT NULL,
    actions           TEXT NOT NULL,        -- JSON array of the actions available now
    version           BIGINT NOT NULL,      -- the stream version folded into this row
    state             TEXT NOT NULL         -- the folded integration, to apply what comes next
);
CREATE INDEX installed_by_workspace ON installed (workspace, app, integration_id);
