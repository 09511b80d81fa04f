-- Runs on SQLite and on PostgreSQL alike.
-- API tokens (gateway/src/tokens.rs), each scoped to a workspace, a user and a role. Only the
-- SHA-256 of a token is kept; the token itself is shown once, when it is created.
CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    workspace  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    role       TEXT NOT NULL,
    label      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_tokens_by_workspace ON api_tokens (workspace, id);
