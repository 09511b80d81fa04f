//! The credential vault: secrets (access and refresh tokens, API keys, client secrets) kept
//! out of the log, encrypted in the service's database.
//!
//! Each integration has a data key of its own (32 random bytes) that encrypts its secrets with
//! XChaCha20-Poly1305; the data key is stored wrapped (encrypted) by a master key, which
//! never touches the database. Events carry only a reference (`vault:<integration>:<id>`).
//! Shredding an integration deletes its data key: the history stays readable and verifiable,
//! the secrets are gone for good, whoever kept a copy of the database — and marks the
//! integration shredded, so that its data key is never created again: a straggler (an OAuth
//! callback finished after a delete, a seal racing a disconnect) finds the vault closed to it
//! instead of storing a secret nothing would ever remove. Every ciphertext is
//! bound to its row (the reference or the integration as associated data), so ciphertexts
//! moved between rows do not decrypt.
//!
//! **Master keys and their rotation.** The database names the *current* master key
//! (`vault_master_keys`); new data keys are wrapped under it and only under it — the insert
//! itself checks, so no process can wrap one under a key a rotation has begun to retire. A
//! process holds a [`Keyring`]: the keys it was given, and where they came from, so that it
//! looks again (the key file and the next key beside it) when the database names a key it
//! does not hold. A rotation ([`Vault::begin_rotation`], [`Vault::rewrap`],
//! [`Vault::finish_rotation`]) makes the new key current first, then re-wraps the data keys
//! one by one, each in a statement of its own: a crash at any point leaves every data key
//! wrapped by a key that still exists, and running it again carries on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use database::ServiceDb;
use domain::{CredentialRef, IntegrationId, Timestamp};
use rand::RngCore;
use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox, SecretString};

/// The environment variable that may hold the master key (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "HARMONY_MASTER_KEY";

const NONCE: usize = 24;

/// What can go wrong in the vault. No variant ever carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the vault's database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the master key: {0}")]
    Key(#[from] command::keyfile::KeyError),
    #[error("{0:?} is not a reference the vault gave out")]
    UnknownReference(String),
    #[error("the secrets of integration {0} were shredded")]
    Shredded(String),
    #[error(
        "the data key of integration {integration} is wrapped by master key {stored}, which this \
         process does not hold (it holds {given}): start it with that key"
    )]
    WrongMasterKey {
        integration: String,
        stored: String,
        given: String,
    },
    #[error(
        "the vault's current master key is {current}, which this process does not hold: give it \
         the new key ({MASTER_KEY_ENV}, or the key file under the data directory) and restart it"
    )]
    CurrentKeyNotHeld { current: String },
    #[error("a stored ciphertext does not decrypt: it was altered or moved ({0})")]
    Corrupt(String),
    #[error("the master key: {0}")]
    MasterKey(String),
}

/// The key that wraps every data key. Held in a `secrecy` box: never printed, zeroed on drop.
pub struct MasterKey {
    key: SecretBox<[u8; 32]>,
    id: String,
}

impl Clone for MasterKey {
    fn clone(&self) -> Self {
        Self {
            key: SecretBox::new(Box::new(*self.key.expose_secret())),
            id: self.id.clone(),
        }
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish()
    }
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    fn from_bytes(bytes: [u8; 32]) -> Self {
        // The id names the key in the database without revealing it: the start of the
        // key's own encryption of a fixed label.
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&bytes));
        let tag = cipher
            .encrypt(
                XNonce::from_slice(&[0u8; NONCE]),
                &b"harmony master key id"[..],
            )
            .expect("encrypting a short label cannot fail");
        let id = tag[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            key: SecretBox::new(Box::new(bytes)),
            id,
        }
    }

    /// Reads a key written as base64 of 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, VaultError> {
        Self::parse(text, "the key given")
    }

    /// [`Self::from_base64`], naming in an error where the text came from.
    fn parse(text: &str, whence: &str) -> Result<Self, VaultError> {
        Ok(Self::from_bytes(command::keyfile::seed_from_base64(
            text, whence,
        )?))
    }

    /// The key as base64, for writing it where it is kept.
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(BASE64.encode(self.key.expose_secret()))
    }

    /// The master key in the file at `path`, which is created (mode 0600, with a new random
    /// key) when absent. A key file others may read is refused. (`HARMONY_MASTER_KEY` is read
    /// by [`Keyring::load_or_create`], not here.)
    pub fn load_or_create(path: &Path) -> Result<Self, VaultError> {
        match read_key_file(path)? {
            Some(key) => Ok(key),
            None => {
                let key = Self::generate();
                key.write_new(path)?;
                tracing::info!(path = %path.display(), id = %key.id, "created a new master key");
                Ok(key)
            }
        }
    }

    /// Writes the key to a new file at `path`, readable by its owner alone, and makes both
    /// the file and its name durable (the directory is synced too).
    pub fn write_new(&self, path: &Path) -> Result<(), VaultError> {
        command::keyfile::write_new_private(path, self.to_base64().expose_secret())
            .and_then(|()| command::keyfile::sync_parent(path))
            .map_err(|source| {
                VaultError::Key(command::keyfile::KeyError::File {
                    path: path.to_owned(),
                    source,
                })
            })
    }

    /// The key's name in the database (not secret).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(self.key.expose_secret()))
    }
}

fn seal(cipher: &XChaCha20Poly1305, plain: &[u8], aad: &str) -> String {
    let mut nonce = [0u8; NONCE];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: aad.as_bytes(),
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any message this size");
    let mut out = nonce.to_vec();
    out.extend(sealed);
    BASE64.encode(out)
}

fn open(cipher: &XChaCha20Poly1305, stored: &str, aad: &str) -> Result<Vec<u8>, VaultError> {
    let bytes = BASE64
        .decode(stored)
        .map_err(|_| VaultError::Corrupt(aad.to_owned()))?;
    if bytes.len() < NONCE {
        return Err(VaultError::Corrupt(aad.to_owned()));
    }
    let (nonce, sealed) = bytes.split_at(NONCE);
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| VaultError::Corrupt(aad.to_owned()))
}

fn key_aad(integration: &str) -> String {
    format!("harmony vault data key of {integration}")
}

fn payload_aad(integration: &str) -> String {
    format!("harmony vault sealed payload of {integration}")
}

fn secret_aad(reference: &str) -> String {
    format!("harmony vault secret {reference}")
}

/// Where a process's master keys come from, so that it can look again when the vault has
/// moved on to a key it was not started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `HARMONY_MASTER_KEY`: one key, or several comma-separated (the first wraps new data
    /// keys when the vault has no current key yet). Read once: a new key needs a restart.
    Environment,
    /// The key file under the data directory, and during a rotation the next key beside it
    /// ([`Keyring::next_path`]); both are read again when the vault names a key not held.
    File(PathBuf),
    /// Keys given in code: nothing to read again.
    Fixed,
}

/// The master keys a process holds.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<MasterKey>,
    source: KeySource,
}

impl Keyring {
    /// Exactly these keys; the first is preferred.
    pub fn fixed(keys: Vec<MasterKey>) -> Self {
        Self {
            keys,
            source: KeySource::Fixed,
        }
    }

    /// The keys `from_env` holds (the value of `HARMONY_MASTER_KEY`, which the caller read
    /// at start) if given, else from the key file at `path` (created, mode 0600, with a new
    /// random key when absent) and the next key beside it, when a rotation left one.
    pub fn load_or_create(
        path: &Path,
        from_env: Option<&SecretString>,
    ) -> Result<Self, VaultError> {
        if let Some(text) = from_env {
            return Ok(Self {
                keys: keys_from_env(text.expose_secret())?,
                source: KeySource::Environment,
            });
        }
        let key = MasterKey::load_or_create(path)?;
        let mut keys = vec![key];
        keys.extend(read_key_file(&Self::next_path(path))?);
        Ok(Self {
            keys,
            source: KeySource::File(path.to_owned()),
        })
    }

    /// Where a rotation keeps the new key until every data key is wrapped under it.
    pub fn next_path(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(".next");
        path.with_file_name(name)
    }

    /// The keys held.
    pub fn keys(&self) -> &[MasterKey] {
        &self.keys
    }

    /// Where they came from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Reads the key files again (a rotation may have written a next key, or put it in
    /// place); other sources give nothing new.
    fn reread(&self) -> Result<Vec<MasterKey>, VaultError> {
        match &self.source {
            KeySource::File(path) => {
                let mut keys = Vec::new();
                keys.extend(read_key_file(path)?);
                keys.extend(read_key_file(&Self::next_path(path))?);
                Ok(keys)
            }
            KeySource::Environment | KeySource::Fixed => Ok(Vec::new()),
        }
    }
}

/// The key in the file at `path`, if there is one.
pub fn read_key_file(path: &Path) -> Result<Option<MasterKey>, VaultError> {
    match command::keyfile::read_private(path)? {
        Some(text) => MasterKey::parse(&text, &path.display().to_string()).map(Some),
        None => Ok(None),
    }
}

/// One key or several, comma-separated, as `HARMONY_MASTER_KEY` holds them.
fn keys_from_env(text: &str) -> Result<Vec<MasterKey>, VaultError> {
    let keys = text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| MasterKey::parse(part, MASTER_KEY_ENV))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(VaultError::MasterKey(format!("{MASTER_KEY_ENV} is empty")));
    }
    Ok(keys)
}

/// What a master key is to the vault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterKeyState {
    pub id: String,
    /// `current` (wraps new data keys), `retiring` (a rotation away from it is under way) or
    /// `retired` (nothing is wrapped under it any more).
    pub state: String,
}

/// The vault on the service's database.
pub struct Vault {
    db: ServiceDb,
    keys: RwLock<Vec<Arc<MasterKey>>>,
    source: KeySource,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self
            .keys
            .read()
            .map(|keys| keys.iter().map(|k| k.id.clone()).collect())
            .unwrap_or_default();
        f.debug_struct("Vault")
            .field("master_keys", &ids)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// The vault with one master key.
    pub fn new(db: ServiceDb, master: MasterKey) -> Self {
        Self::with_keyring(db, Keyring::fixed(vec![master]))
    }

    /// The vault with the keys of `keyring`, looking again where they came from when the
    /// database names a key it does not hold.
    pub fn with_keyring(db: ServiceDb, keyring: Keyring) -> Self {
        Self {
            db,
            keys: RwLock::new(keyring.keys.into_iter().map(Arc::new).collect()),
            source: keyring.source,
        }
    }

    fn held(&self, id: &str) -> Option<Arc<MasterKey>> {
        self.keys
            .read()
            .expect("the master keys' lock")
            .iter()
            .find(|key| key.id == id)
            .cloned()
    }

    fn held_ids(&self) -> String {
        self.keys
            .read()
            .expect("the master keys' lock")
            .iter()
            .map(|key| key.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The master key `id`, from the keys held or, failing that, from their source read again.
    fn key(&self, id: &str) -> Result<Option<Arc<MasterKey>>, VaultError> {
        if let Some(key) = self.held(id) {
            return Ok(Some(key));
        }
        let again = Keyring {
            keys: Vec::new(),
            source: self.source.clone(),
        }
        .reread()?;
        let mut keys = self.keys.write().expect("the master keys' lock");
        for key in again {
            if !keys.iter().any(|held| held.id == key.id) {
                tracing::info!(id = %key.id, "read a new master key");
                keys.push(Arc::new(key));
            }
        }
        Ok(keys.iter().find(|key| key.id == id).cloned())
    }

    /// The master key `master_id` that `integration`'s data key is wrapped under, or why it
    /// cannot be had.
    fn wrapping_key(
        &self,
        integration: &str,
        master_id: &str,
    ) -> Result<Arc<MasterKey>, VaultError> {
        self.key(master_id)?
            .ok_or_else(|| VaultError::WrongMasterKey {
                integration: integration.to_owned(),
                stored: master_id.to_owned(),
                given: self.held_ids(),
            })
    }

    /// Every master key the vault knows, with its state.
    pub async fn master_keys(&self) -> Result<Vec<MasterKeyState>, VaultError> {
        let sql = "SELECT key_id, state FROM vault_master_keys ORDER BY changed_at, key_id";
        let rows: Vec<(String, String)> =
            on_db!(&self.db, |pool| sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(id, state)| MasterKeyState { id, state })
            .collect())
    }

    /// The key new data keys are wrapped under: the database's current one. A vault that has
    /// none yet takes this process's preferred key.
    pub async fn current_key(&self) -> Result<Arc<MasterKey>, VaultError> {
        let select = "SELECT key_id FROM vault_master_keys WHERE state = 'current'";
        let mut current: Option<String> = on_db!(&self.db, |pool| sqlx::query_scalar(select)
            .fetch_optional(pool)
            .await?);
        if current.is_none() {
            let preferred = self
                .keys
                .read()
                .expect("the master keys' lock")
                .first()
                .map(|key| key.id.clone())
                .ok_or_else(|| VaultError::MasterKey("no master key is held".into()))?;
            let insert = "INSERT INTO vault_master_keys (key_id, state, changed_at) \
                          VALUES ($1, 'current', $2) ON CONFLICT DO NOTHING";
            on_db!(&self.db, |pool| sqlx::query(insert)
                .bind(&preferred)
                .bind(Timestamp::now().unix_micros())
                .execute(pool)
                .await
                .map(drop)?);
            current = on_db!(&self.db, |pool| sqlx::query_scalar(select)
                .fetch_optional(pool)
                .await?);
        }
        let current = current
            .ok_or_else(|| VaultError::MasterKey("the vault names no current key".into()))?;
        self.key(&current)?
            .ok_or(VaultError::CurrentKeyNotHeld { current })
    }

    /// Inserts a data key wrapped under `master` only while `master` is the current key, in one
    /// step a rotation cannot come between. `false`: not inserted (the integration has a data
    /// key already, or the key stopped being current).
    async fn insert_data_key(
        &self,
        integration: &str,
        wrapped: &str,
        master: &MasterKey,
    ) -> Result<bool, VaultError> {
        let created = Timestamp::now().to_string();
        let inserted = match &self.db {
            // One statement: SQLite runs one writer at a time.
            ServiceDb::Sqlite(pool) => sqlx::query(
                "INSERT INTO vault_keys (integration_id, wrapped_key, master_key_id, created_at) \
                 SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM vault_master_keys \
                 WHERE key_id = $3 AND state = 'current') AND NOT EXISTS (SELECT 1 FROM \
                 vault_shredded WHERE integration_id = $1) ON CONFLICT (integration_id) DO NOTHING",
            )
            .bind(integration)
            .bind(wrapped)
            .bind(&master.id)
            .bind(&created)
            .execute(pool)
            .await?
            .rows_affected(),
            // The key's row is share-locked until the insert commits: a rotation's demotion of
            // it waits for this insert, and this one sees the demotion if it came first.
            ServiceDb::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // One at a time with a shredding of the same integration.
                lock_integration!(tx, integration);
                let shredded: i64 = sqlx::query_scalar(SHREDDED)
                    .bind(integration)
                    .fetch_one(&mut *tx)
                    .await?;
                if shredded > 0 {
                    return Ok(false);
                }
                let current: Option<String> = sqlx::query_scalar(
                    "SELECT key_id FROM vault_master_keys WHERE key_id = $1 \
                     AND state = 'current' FOR SHARE",
                )
                .bind(&master.id)
                .fetch_optional(&mut *tx)
                .await?;
                if current.is_none() {
                    return Ok(false);
                }
                let inserted = sqlx::query(
                    "INSERT INTO vault_keys (integration_id, wrapped_key, master_key_id, \
                     created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (integration_id) DO NOTHING",
                )
                .bind(integration)
                .bind(wrapped)
                .bind(&master.id)
                .bind(&created)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                inserted
            }
        };
        Ok(inserted > 0)
    }

    /// The stored data key of `integration`, unwrapped, if it has one.
    async fn stored_data_key(
        &self,
        integration: &str,
    ) -> Result<Option<XChaCha20Poly1305>, VaultError> {
        let sql = "SELECT wrapped_key, master_key_id FROM vault_keys WHERE integration_id = $1";
        let stored: Option<(String, String)> = on_db!(&self.db, |pool| sqlx::query_as(sql)
            .bind(integration)
            .fetch_optional(pool)
            .await?);
        let Some((wrapped, master_id)) = stored else {
            return Ok(None);
        };
        let master = self.wrapping_key(integration, &master_id)?;
        let bytes = SecretBox::new(Box::new(open(
            &master.cipher(),
            &wrapped,
            &key_aad(integration),
        )?));
        XChaCha20Poly1305::new_from_slice(bytes.expose_secret())
            .map(Some)
            .map_err(|_| VaultError::Corrupt(key_aad(integration)))
    }

    /// The data key of `integration`, created (and stored wrapped under the current master
    /// key) on first use when `create`.
    async fn data_key(
        &self,
        integration: &str,
        create: bool,
    ) -> Result<XChaCha20Poly1305, VaultError> {
        if let Some(key) = self.stored_data_key(integration).await? {
            return Ok(key);
        }
        if !create {
            return Err(VaultError::Shredded(integration.to_owned()));
        }
        let mut bytes = SecretBox::new(Box::new([0u8; 32]));
        rand::rng().fill_bytes(bytes.expose_secret_mut());
        // A rotation may make another key current between the read and the insert: then the
        // insert refuses, and the key is wrapped again under the new one.
        for _ in 0..5 {
            let master = self.current_key().await?;
            let wrapped = seal(
                &master.cipher(),
                bytes.expose_secret(),
                &key_aad(integration),
            );
            if self.insert_data_key(integration, &wrapped, &master).await? {
                return XChaCha20Poly1305::new_from_slice(bytes.expose_secret())
                    .map_err(|_| VaultError::Corrupt(key_aad(integration)));
            }
            // Another writer created it first: use theirs.
            if let Some(key) = self.stored_data_key(integration).await? {
                return Ok(key);
            }
            // Or the integration was shredded: its key is never created again.
            if self.is_shredded(integration).await? {
                return Err(VaultError::Shredded(integration.to_owned()));
            }
        }
        Err(VaultError::MasterKey(
            "the current master key kept changing while a data key was stored".into(),
        ))
    }

    /// Stores `secret` for `integration`; returns the reference events carry.
    pub async fn put(
        &self,
        integration: IntegrationId,
        secret: &SecretString,
    ) -> Result<CredentialRef, VaultError> {
        let integration = integration.to_string();
        let key = self.data_key(&integration, true).await?;
        let reference = format!("vault:{integration}:{}", uuid::Uuid::now_v7().simple());
        let ciphertext = seal(
            &key,
            secret.expose_secret().as_bytes(),
            &secret_aad(&reference),
        );
        // Stored only while the data key is: a shredding between reading the key and this
        // insert leaves no ciphertext behind.
        let insert =
            "INSERT INTO vault_secrets (reference, integration_id, ciphertext, created_at) \
                      SELECT $1, $2, $3, $4 WHERE EXISTS \
                      (SELECT 1 FROM vault_keys WHERE integration_id = $2)";
        let created = Timestamp::now().to_string();
        let postgres = matches!(self.db, ServiceDb::Postgres(_));
        let stored = on_db!(&self.db, |pool| {
            let mut tx = pool.begin().await?;
            if postgres {
                lock_integration!(tx, &integration);
            }
            let stored = sqlx::query(insert)
                .bind(&reference)
                .bind(&integration)
                .bind(&ciphertext)
                .bind(&created)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            stored
        });
        if stored == 0 {
            return Err(VaultError::Shredded(integration));
        }
        Ok(CredentialRef(reference))
    }

    /// Forgets the one secret `reference` names — one stored for a command the domain then
    /// refused. The integration's other secrets stay.
    pub async fn discard(&self, reference: &CredentialRef) -> Result<(), VaultError> {
        let sql = "DELETE FROM vault_secrets WHERE reference = $1";
        on_db!(&self.db, |pool| sqlx::query(sql)
            .bind(&reference.0)
            .execute(pool)
            .await
            .map(drop)?);
        Ok(())
    }

    /// Whether `integration`'s secrets were shredded (its data key can never come back).
    async fn is_shredded(&self, integration: &str) -> Result<bool, VaultError> {
        let shredded: i64 = on_db!(&self.db, |pool| sqlx::query_scalar(SHREDDED)
            .bind(integration)
            .fetch_one(pool)
            .await?);
        Ok(shredded > 0)
    }

    /// The secret `reference` names.
    pub async fn get(&self, reference: &CredentialRef) -> Result<SecretString, VaultError> {
        let unknown = || VaultError::UnknownReference(reference.0.clone());
        let integration = reference
            .0
            .strip_prefix("vault:")
            .and_then(|rest| rest.rsplit_once(':'))
            .map(|(integration, _)| integration.to_owned())
            .ok_or_else(unknown)?;
        let sql = "SELECT ciphertext FROM vault_secrets WHERE reference = $1";
        let stored: Option<String> = on_db!(&self.db, |pool| sqlx::query_scalar(sql)
            .bind(&reference.0)
            .fetch_optional(pool)
            .await?);
        let key = self.data_key(&integration, false).await?;
        let ciphertext = stored.ok_or_else(unknown)?;
        let plain = open(&key, &ciphertext, &secret_aad(&reference.0))?;
        let text =
            String::from_utf8(plain).map_err(|_| VaultError::Corrupt(reference.0.clone()))?;
        Ok(SecretString::from(text))
    }

    /// Seals `value` — personal data an event of `integration` will carry — under the
    /// integration's data key: shredding the integration makes it unreadable for good.
    pub async fn seal(
        &self,
        integration: IntegrationId,
        value: &serde_json::Value,
    ) -> Result<domain::integration::Sealed, VaultError> {
        let integration = integration.to_string();
        let key = self.data_key(&integration, true).await?;
        let plain = serde_json::to_vec(value).expect("a JSON value serializes");
        Ok(domain::integration::Sealed {
            ciphertext: seal(&key, &plain, &payload_aad(&integration)),
            bytes: plain.len() as u64,
        })
    }

    /// The value `sealed` holds; [`VaultError::Shredded`] once the integration is deleted.
    pub async fn unseal(
        &self,
        integration: IntegrationId,
        sealed: &domain::integration::Sealed,
    ) -> Result<serde_json::Value, VaultError> {
        let integration = integration.to_string();
        let key = self.data_key(&integration, false).await?;
        let aad = payload_aad(&integration);
        let plain = open(&key, &sealed.ciphertext, &aad)?;
        serde_json::from_slice(&plain).map_err(|_| VaultError::Corrupt(aad))
    }

    /// A Companion action's arguments or result as people may see them: the value while the
    /// integration lives; once its key is shredded, only that there was something and its
    /// size.
    pub async fn show(
        &self,
        integration: IntegrationId,
        payload: &domain::integration::ActionPayload,
    ) -> Result<serde_json::Value, VaultError> {
        use domain::integration::ActionPayload;
        match payload {
            ActionPayload::Plain(value) => Ok(value.clone()),
            ActionPayload::Sealed(sealed) => match self.unseal(integration, &sealed.sealed).await {
                Err(VaultError::Shredded(_)) => Ok(serde_json::json!({
                    "shredded": true,
                    "bytes": sealed.sealed.bytes,
                })),
                other => other,
            },
        }
    }

    /// Destroys `integration`'s data key and its ciphertexts: its secrets cannot be read again
    /// by anyone. Returns whether there was a key.
    pub async fn shred(&self, integration: IntegrationId) -> Result<bool, VaultError> {
        let integration = integration.to_string();
        let marked = Timestamp::now().to_string();
        let mark = "INSERT INTO vault_shredded (integration_id, shredded_at) VALUES ($1, $2) \
                    ON CONFLICT (integration_id) DO NOTHING";
        let keys = "DELETE FROM vault_keys WHERE integration_id = $1";
        let secrets = "DELETE FROM vault_secrets WHERE integration_id = $1";
        let postgres = matches!(self.db, ServiceDb::Postgres(_));
        let shredded = on_db!(&self.db, |pool| {
            let mut tx = pool.begin().await?;
            if postgres {
                lock_integration!(tx, &integration);
            }
            sqlx::query(mark)
                .bind(&integration)
                .bind(&marked)
                .execute(&mut *tx)
                .await?;
            let removed = sqlx::query(keys)
                .bind(&integration)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(secrets)
                .bind(&integration)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            removed > 0
        });
        Ok(shredded)
    }

    /// A rotation's first step: `new` (which this vault must hold) becomes the current key,
    /// and the key that was current begins to retire. From the moment this commits, no data
    /// key is wrapped under the old key. Running it again changes nothing.
    pub async fn begin_rotation(&self, new: &MasterKey) -> Result<(), VaultError> {
        if self.held(&new.id).is_none() {
            self.keys
                .write()
                .expect("the master keys' lock")
                .push(Arc::new(new.clone()));
        }
        let now = Timestamp::now().unix_micros();
        on_db!(&self.db, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE vault_master_keys SET state = 'retiring', changed_at = $1 \
                 WHERE state = 'current' AND key_id <> $2",
            )
            .bind(now)
            .bind(&new.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO vault_master_keys (key_id, state, changed_at) \
                 VALUES ($1, 'current', $2) \
                 ON CONFLICT (key_id) DO UPDATE SET state = 'current', changed_at = $2",
            )
            .bind(&new.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Wraps every data key that is not under the current master key under it, each in a
    /// statement of its own, and answers how many it re-wrapped. `progress` hears each one.
    pub async fn rewrap(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<u64, VaultError> {
        let current = self.current_key().await?;
        let mut count = 0u64;
        let mut after = String::new();
        loop {
            let page = "SELECT integration_id, wrapped_key, master_key_id FROM vault_keys \
                        WHERE master_key_id <> $1 AND integration_id > $2 \
                        ORDER BY integration_id LIMIT 500";
            let rows: Vec<(String, String, String)> = on_db!(&self.db, |pool| sqlx::query_as(page)
                .bind(&current.id)
                .bind(&after)
                .fetch_all(pool)
                .await?);
            let Some((last, _, _)) = rows.last() else {
                break;
            };
            after = last.clone();
            for (integration, wrapped, master_id) in rows {
                let old = self.wrapping_key(&integration, &master_id)?;
                let aad = key_aad(&integration);
                let bytes = SecretBox::new(Box::new(open(&old.cipher(), &wrapped, &aad)?));
                let rewrapped = seal(&current.cipher(), bytes.expose_secret(), &aad);
                let update = "UPDATE vault_keys SET wrapped_key = $1, master_key_id = $2 \
                              WHERE integration_id = $3 AND master_key_id = $4";
                let changed = on_db!(&self.db, |pool| sqlx::query(update)
                    .bind(&rewrapped)
                    .bind(&current.id)
                    .bind(&integration)
                    .bind(&master_id)
                    .execute(pool)
                    .await?
                    .rows_affected());
                count += changed;
                progress(count);
            }
        }
        Ok(count)
    }

    /// A rotation's last step: every retiring key that no data key is wrapped under any more
    /// is retired. Answers how many were.
    pub async fn finish_rotation(&self) -> Result<u64, VaultError> {
        let sql = "UPDATE vault_master_keys SET state = 'retired', changed_at = $1 \
                   WHERE state = 'retiring' AND NOT EXISTS (SELECT 1 FROM vault_keys k \
                   WHERE k.master_key_id = vault_master_keys.key_id)";
        Ok(on_db!(&self.db, |pool| sqlx::query(sql)
            .bind(Timestamp::now().unix_micros())
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// A whole rotation to `new` in one call: begin, re-wrap, finish. Answers how many data
    /// keys were re-wrapped.
    pub async fn rotate_to(&self, new: &MasterKey) -> Result<u64, VaultError> {
        self.begin_rotation(new).await?;
        let rewrapped = self.rewrap(&|_| {}).await?;
        self.finish_rotation().await?;
        Ok(rewrapped)
    }
}

/// PostgreSQL's advisory lock on an integration's vault rows, held to the end of the
/// transaction: a data key's insert, a secret's insert and a shredding of the same integration
/// run one at a time, so that none slips in beside a shredding. (SQLite runs one writer at a
/// time already.)
const LOCK_INTEGRATION: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('harmony vault ' || $1, 0))";

/// Takes [`LOCK_INTEGRATION`] for `integration` in the PostgreSQL transaction `tx`. A macro,
/// as the transaction's type is each database's own inside `on_db!`.
macro_rules! lock_integration {
    ($tx:ident, $integration:expr) => {
        sqlx::query(LOCK_INTEGRATION)
            .bind($integration)
            .execute(&mut *$tx)
            .await?
    };
}
use lock_integration;

const SHREDDED: &str = "SELECT COUNT(*) FROM vault_shredded WHERE integration_id = $1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_may_hold_several_keys_and_the_next_key_sits_beside_the_file() {
        let first = MasterKey::generate();
        let second = MasterKey::generate();
        let text = format!(
            "{}, {}",
            first.to_base64().expose_secret(),
            second.to_base64().expose_secret()
        );
        let keys = keys_from_env(&text).expect("two keys");
        assert_eq!(
            keys.iter().map(MasterKey::id).collect::<Vec<_>>(),
            [first.id(), second.id()]
        );
        assert!(keys_from_env(" , ").is_err());
        assert_eq!(
            Keyring::next_path(Path::new("/data/master.key")),
            Path::new("/data/master.key.next")
        );
    }
}
