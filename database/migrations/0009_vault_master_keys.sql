-- Runs on SQLite and on PostgreSQL alike: keep to the SQL both share.
-- Which master key wraps new data keys (adapters/src/vault.rs). A rotation makes the new key
-- current and the old one retiring in one transaction, then re-wraps the data keys; new data
-- keys are inserted only under the current key (the insert checks this row), so no process
-- can wrap one under a key being retired.
CREATE TABLE vault_master_keys (
    key_id     TEXT PRIMARY KEY,
    state      TEXT NOT NULL,     -- current | retiring | retired
    changed_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX vault_master_keys_one_current ON vault_master_keys (state)
    WHERE state = 'current';

-- A vault that already holds data keys: the key most of them are wrapped under is current.
INSERT INTO vault_master_keys (key_id, state, changed_at)
SELECT master_key_id, 'current', 0 FROM vault_keys
GROUP BY master_key_id ORDER BY COUNT(*) DESC, master_key_id LIMIT 1;
