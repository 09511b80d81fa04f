-- Runs on SQLite and on PostgreSQL alike.
-- Sessions of the admin console (gateway/src/console): a signed-in browser holds a random
-- session id in an HttpOnly cookie; only its SHA-256 is kept, with the hash of the API token
-- it signed in with (so revoking the token ends the session at once) and the session's CSRF
-- token, which every form must send back.
CREATE TABLE console_sessions (
    id_hash    TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);
