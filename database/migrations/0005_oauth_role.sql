-- Runs on SQLite and on PostgreSQL alike.
-- The role of whoever started an authorization: the callback acts with it, since the provider's
-- redirect carries only the `state`.
ALTER TABLE oauth_states ADD COLUMN role TEXT NOT NULL DEFAULT 'member';
