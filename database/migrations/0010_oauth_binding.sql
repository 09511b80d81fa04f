-- Runs on SQLite and on PostgreSQL alike.
-- A pending authorization is bound to the browser that started it (the SHA-256 of a cookie set
-- then) and to the API token it was started with (its SHA-256): the callback is refused in
-- another browser, and refused once the token is revoked.
ALTER TABLE oauth_states ADD COLUMN browser_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE oauth_states ADD COLUMN token_hash TEXT NOT NULL DEFAULT '';
