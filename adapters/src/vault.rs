//! The credential vault: secrets (access and refresh tokens, API keys, client secrets) kept
//! out of the log, encrypted in the service's database.
//!
//! Each integration has a data key of its own (32 random bytes) that encrypts its secrets with
//! XChaCha20-Poly1305; the data key is stored wrapped (encrypted) by the master key, which
//! never touches the database. Events carry only a reference (`vault:<integration>:<id>`).
//! Shredding an integration deletes its data key: the history stays readable and verifiable,
//! the secrets are gone for good, whoever kept a copy of the database. Every ciphertext is
//! bound to its row (the reference or the integration as associated data), so ciphertexts
//! moved between rows do not decrypt.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use domain::{CredentialRef, IntegrationId, Timestamp};
use projections::ReadDb;
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
    #[error("{0:?} is not a reference the vault gave out")]
    UnknownReference(String),
    #[error("the secrets of integration {0} were shredded")]
    Shredded(String),
    #[error(
        "the data key of integration {integration} is wrapped by master key {stored}, not by the \
         master key given ({given}): rotate with the old key, or start with the right one"
    )]
    WrongMasterKey {
        integration: String,
        stored: String,
        given: String,
    },
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
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| VaultError::MasterKey("it is not base64".into()))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            VaultError::MasterKey(format!("it is {} bytes long, not 32", bytes.len()))
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key as base64, for writing it where it is kept.
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(BASE64.encode(self.key.expose_secret()))
    }

    /// The master key from `HARMONY_MASTER_KEY` if set, else from `path`, which is created
    /// (mode 0600, with a new random key) when absent. A key file others may read is refused.
    pub fn load_or_create(path: &Path) -> Result<Self, VaultError> {
        if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
            return Self::from_base64(&text)
                .map_err(|error| VaultError::MasterKey(format!("{MASTER_KEY_ENV}: {error}")));
        }
        match eventstore::keyfile::read_private(path).map_err(VaultError::MasterKey)? {
            Some(text) => Self::from_base64(&text)
                .map_err(|error| VaultError::MasterKey(format!("{}: {error}", path.display()))),
            None => {
                let key = Self::generate();
                key.write_new(path)?;
                tracing::info!(path = %path.display(), id = %key.id, "created a new master key");
                Ok(key)
            }
        }
    }

    /// Writes the key to a new file at `path`, readable by its owner alone.
    pub fn write_new(&self, path: &Path) -> Result<(), VaultError> {
        eventstore::keyfile::write_new_private(path, self.to_base64().expose_secret())
            .map_err(|e| VaultError::MasterKey(format!("{}: {e}", path.display())))
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

fn secret_aad(reference: &str) -> String {
    format!("harmony vault secret {reference}")
}

/// Runs the same statements on either database's pool or transaction.
/// The vault on the service's database.
pub struct Vault {
    db: ReadDb,
    master: MasterKey,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("master_key", &self.master.id)
            .finish_non_exhaustive()
    }
}

impl Vault {
    pub fn new(db: ReadDb, master: MasterKey) -> Self {
        Self { db, master }
    }

    /// The master key it works with.
    pub fn master_key(&self) -> &MasterKey {
        &self.master
    }

    /// The data key of `integration`, created (and stored wrapped) on first use.
    async fn data_key(
        &self,
        integration: &str,
        create: bool,
    ) -> Result<XChaCha20Poly1305, VaultError> {
        let sql = "SELECT wrapped_key, master_key_id FROM vault_keys WHERE integration_id = $1";
        let stored: Option<(String, String)> = on_db!(&self.db, |pool| sqlx::query_as(sql)
            .bind(integration)
            .fetch_optional(pool)
            .await?);
        let key = match stored {
            Some((wrapped, master_id)) => {
                if master_id != self.master.id {
                    return Err(VaultError::WrongMasterKey {
                        integration: integration.to_owned(),
                        stored: master_id,
                        given: self.master.id.clone(),
                    });
                }
                let bytes = SecretBox::new(Box::new(open(
                    &self.master.cipher(),
                    &wrapped,
                    &key_aad(integration),
                )?));
                XChaCha20Poly1305::new_from_slice(bytes.expose_secret())
                    .map_err(|_| VaultError::Corrupt(key_aad(integration)))?
            }
            None if create => {
                let mut bytes = SecretBox::new(Box::new([0u8; 32]));
                rand::rng().fill_bytes(bytes.expose_secret_mut());
                let wrapped = seal(
                    &self.master.cipher(),
                    bytes.expose_secret(),
                    &key_aad(integration),
                );
                let insert = "INSERT INTO vault_keys (integration_id, wrapped_key, master_key_id, \
                              created_at) VALUES ($1, $2, $3, $4) \
                              ON CONFLICT (integration_id) DO NOTHING";
                let inserted = on_db!(&self.db, |pool| sqlx::query(insert)
                    .bind(integration)
                    .bind(&wrapped)
                    .bind(&self.master.id)
                    .bind(Timestamp::now().to_string())
                    .execute(pool)
                    .await?
                    .rows_affected());
                if inserted == 0 {
                    // Another writer created it first: use theirs.
                    return Box::pin(self.data_key(integration, false)).await;
                }
                XChaCha20Poly1305::new_from_slice(bytes.expose_secret())
                    .map_err(|_| VaultError::Corrupt(key_aad(integration)))?
            }
            None => return Err(VaultError::Shredded(integration.to_owned())),
        };
        Ok(key)
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
        let insert =
            "INSERT INTO vault_secrets (reference, integration_id, ciphertext, created_at) \
                      VALUES ($1, $2, $3, $4)";
        on_db!(&self.db, |pool| sqlx::query(insert)
            .bind(&reference)
            .bind(&integration)
            .bind(&ciphertext)
            .bind(Timestamp::now().to_string())
            .execute(pool)
            .await
            .map(drop)?);
        Ok(CredentialRef(reference))
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

    /// Destroys `integration`'s data key and its ciphertexts: its secrets cannot be read again
    /// by anyone. Returns whether there was a key.
    pub async fn shred(&self, integration: IntegrationId) -> Result<bool, VaultError> {
        let integration = integration.to_string();
        let shredded = on_db!(&self.db, |pool| {
            let mut tx = pool.begin().await?;
            let keys = sqlx::query("DELETE FROM vault_keys WHERE integration_id = $1")
                .bind(&integration)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM vault_secrets WHERE integration_id = $1")
                .bind(&integration)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            keys > 0
        });
        Ok(shredded)
    }

    /// Re-wraps every data key under `new`, in one transaction, and returns the vault working
    /// with it and how many keys were re-wrapped. The secrets themselves are not touched.
    pub async fn rotate_master(self, new: MasterKey) -> Result<(Vault, u64), VaultError> {
        let rewrapped = on_db!(&self.db, |pool| {
            let mut tx = pool.begin().await?;
            let rows: Vec<(String, String, String)> =
                sqlx::query_as("SELECT integration_id, wrapped_key, master_key_id FROM vault_keys")
                    .fetch_all(&mut *tx)
                    .await?;
            let mut count = 0u64;
            for (integration, wrapped, master_id) in rows {
                if master_id == new.id {
                    continue;
                }
                if master_id != self.master.id {
                    return Err(VaultError::WrongMasterKey {
                        integration,
                        stored: master_id,
                        given: self.master.id.clone(),
                    });
                }
                let aad = key_aad(&integration);
                let bytes = SecretBox::new(Box::new(open(&self.master.cipher(), &wrapped, &aad)?));
                let rewrapped = seal(&new.cipher(), bytes.expose_secret(), &aad);
                sqlx::query(
                    "UPDATE vault_keys SET wrapped_key = $1, master_key_id = $2 \
                     WHERE integration_id = $3",
                )
                .bind(rewrapped)
                .bind(&new.id)
                .bind(&integration)
                .execute(&mut *tx)
                .await?;
                count += 1;
            }
            tx.commit().await?;
            count
        });
        Ok((Vault::new(self.db, new), rewrapped))
    }
}
