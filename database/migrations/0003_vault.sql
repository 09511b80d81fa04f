-- Runs on SQLite and on PostgreSQL alike: keep to the SQL both share.
-- The credential vault (adapters/src/vault.rs). Operational state, not a read model: a
-- rebuild never touches it, and it cannot be rebuilt from the log (secrets never enter it).

-- One data key per integration, wrapped (AEAD) by the master key named by `master_key_id`.
-- Deleting the row shreds every secret of the integration.
CREATE TABLE vault_keys (
    integration_id TEXT PRIMARY KEY,
    wrapped_key    TEXT NOT NULL,   -- base64: nonce, then ciphertext and tag
    master_key_id  TEXT NOT NULL,
    created_at     TEXT NOT NULL
);

-- Each secret, encrypted (AEAD) under its integration's data key; `reference` is what events carry.
CREATE TABLE vault_secrets (
    reference      TEXT PRIMARY KEY,
    integration_id TEXT NOT NULL,
    ciphertext     TEXT NOT NULL,   -- base64: nonce, then ciphertext and tag
    created_at     TEXT NOT NULL
);
CREATE INDEX vault_secrets_by_integration ON vault_secrets (integration_id);
