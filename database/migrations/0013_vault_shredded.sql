-- Runs on SQLite and on PostgreSQL alike.
-- The integrations whose secrets were shredded (disconnected or deleted). A shredded
-- integration's data key can never be created again: the vault inserts a data key only for an
-- integration not named here, so a late OAuth callback or any other straggler cannot store a
-- secret that nothing would ever remove.
CREATE TABLE vault_shredded (
    integration_id TEXT PRIMARY KEY,
    shredded_at    TEXT NOT NULL
);
