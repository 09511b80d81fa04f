-- Runs on SQLite and on PostgreSQL alike: keep to the SQL both share.
-- Operational state of the sync worker (adapters/src/sync.rs). Not read models: a rebuild never
-- touches them.

-- The content hash of every record as the last sync saw it, so an unchanged record produces no
-- record event. `scope` is the integration id and the object joined by U+001F; `key` adds the
-- provider's record id the same way. `seen_sync` is the last run that saw the record: after a
-- full run, the rows of the scope it did not see are records deleted at the provider.
CREATE TABLE record_hashes (
    key       TEXT PRIMARY KEY,
    scope     TEXT NOT NULL,
    record_id TEXT NOT NULL,
    hash      TEXT NOT NULL,
    seen_sync TEXT NOT NULL
);
CREATE INDEX record_hashes_by_scope ON record_hashes (scope, key);

-- Where the next incremental run of an integration's object starts (the provider's sync token,
-- history id or modification time).
CREATE TABLE sync_watermarks (
    integration_id TEXT NOT NULL,
    object         TEXT NOT NULL,
    watermark      TEXT NOT NULL,
    PRIMARY KEY (integration_id, object)
);

-- Work that one process at a time may do (a sync run of one integration, a token refresh, the
-- scheduler): held by `holder` until `expires_at` (Unix milliseconds) unless renewed.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Authorizations started in a popup and not yet finished (adapters/src/oauth.rs), keyed by the
-- SHA-256 of their single-use `state`. Taking one deletes it.
CREATE TABLE oauth_states (
    state_hash     TEXT PRIMARY KEY,
    workspace_id   TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    app            TEXT NOT NULL,
    integration_id TEXT,
    setup          TEXT NOT NULL,
    verifier       TEXT NOT NULL,
    expires_at     BIGINT NOT NULL
);
