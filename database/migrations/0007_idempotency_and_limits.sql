-- Runs on SQLite and on PostgreSQL alike.
-- The first answer to each write sent with an `Idempotency-Key` (gateway/src/idempotency.rs),
-- kept for a day so that a retried request gets the same answer instead of acting twice.
-- `scope` is the SHA-256 of the caller's token: one caller's keys never meet another's.
-- `status` is NULL while the first request is still being answered.
CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    idem_key     TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    status       BIGINT,
    content_type TEXT,
    body         TEXT,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- Tokens exempt from the per-token rate limit (load generators, trusted services).
ALTER TABLE api_tokens ADD COLUMN unlimited BIGINT NOT NULL DEFAULT 0;
