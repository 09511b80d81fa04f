//! Signed checkpoints: the service signs the head hash of every stream with an Ed25519 key
//! kept outside the log, and keeps the signatures in a log of their own. The hash chain alone
//! shows any edit of an event — unless the editor also recomputes every later hash. A
//! checkpoint closes that gap: rewriting history then means the stream no longer holds the
//! hash the service signed at that version, and without the key nobody can sign the new one.
//!
//! The checkpoint log is `checkpoints/` beside the embedded log (its own sled database), or
//! the `<NS>_CHECKPOINTS` stream on JetStream, where each stream's checkpoints go to a subject
//! of their own so that the latest is one direct get away.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use domain::{StreamName, Timestamp};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use eventstore::chain::{ChainHash, VerifyReport};

use crate::keyfile::KeyError;
use eventstore::{EventStore, JetStreamEventStore, StoreError};

/// The environment variable that may hold the signing key (base64 of its 32-byte seed); every
/// process of a deployment must sign with the same key.
pub const KEY_ENV: &str = "HARMONY_CHECKPOINT_KEY";

/// One stream's head, as the service signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub stream: String,
    pub version: u64,
    pub position: u64,
    /// The chain hash of the event at `version`, hex.
    pub hash: String,
    pub signed_at: Timestamp,
    /// Names the public key that verifies the signature.
    pub key_id: String,
    /// Ed25519 over [`Checkpoint::message`], hex.
    pub signature: String,
}

impl Checkpoint {
    /// The bytes that are signed.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "harmony-checkpoint/1\n{}\n{}\n{}\n{}",
            self.stream, self.version, self.hash, self.signed_at
        )
        .into_bytes()
    }
}

/// The key checkpoints are signed with.
pub struct CheckpointKey {
    signing: SigningKey,
}

impl fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointKey")
            .field("id", &self.id())
            .finish()
    }
}

impl CheckpointKey {
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::from_bytes(&rand::random::<[u8; 32]>()),
        }
    }

    /// Reads a key written as base64 of its 32-byte seed.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Self::parse(text, "the key given")
    }

    /// [`Self::from_base64`], naming in an error where the text came from.
    fn parse(text: &str, whence: &str) -> Result<Self, KeyError> {
        let seed = crate::keyfile::seed_from_base64(text, whence)?;
        Ok(Self {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// The key `from_env` holds (the value of `HARMONY_CHECKPOINT_KEY`, which the caller read
    /// at start) if given, else from `path`, created (mode 0600, a new random key) when absent.
    /// A key file others may read is refused.
    pub fn load_or_create(path: &Path, from_env: Option<&str>) -> Result<Self, KeyError> {
        if let Some(text) = from_env {
            return Self::parse(text, KEY_ENV);
        }
        match crate::keyfile::read_private(path)? {
            Some(text) => Self::parse(&text, &path.display().to_string()),
            None => {
                let key = Self::generate();
                crate::keyfile::write_new_private(path, &BASE64.encode(key.signing.to_bytes()))
                    .map_err(|source| KeyError::File {
                        path: path.to_owned(),
                        source,
                    })?;
                tracing::info!(path = %path.display(), id = %key.id(), "created a new checkpoint key");
                Ok(key)
            }
        }
    }

    /// The public half, which is all a verifier needs.
    pub fn verifying(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Names the key: the start of its public key, hex.
    pub fn id(&self) -> String {
        key_id(&self.verifying())
    }

    fn sign(&self, stream: &StreamName, version: u64, position: u64, hash: String) -> Checkpoint {
        let mut checkpoint = Checkpoint {
            stream: stream.as_str().to_owned(),
            version,
            position,
            hash,
            signed_at: Timestamp::now(),
            key_id: self.id(),
            signature: String::new(),
        };
        checkpoint.signature = hex::encode(self.signing.sign(&checkpoint.message()).to_bytes());
        checkpoint
    }
}

fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&key.to_bytes()[..8])
}

/// Where checkpoints are kept.
#[async_trait]
pub trait CheckpointLog: Send + Sync + fmt::Debug {
    /// Keeps `checkpoints`, and notes that the log has been signed up to position
    /// `covered_to`.
    async fn record(&self, checkpoints: &[Checkpoint], covered_to: u64) -> Result<(), StoreError>;
    /// The newest checkpoint of `stream`, if it was ever signed.
    async fn latest(&self, stream: &StreamName) -> Result<Option<Checkpoint>, StoreError>;
    /// The position up to which the log has been signed (0: nothing yet).
    async fn covered_to(&self) -> Result<u64, StoreError>;
}

fn corrupt(reason: impl fmt::Display) -> StoreError {
    StoreError::Corrupt {
        position: 0,
        reason: format!("a checkpoint cannot be read: {reason}"),
    }
}

/// The embedded checkpoint log: a sled database of its own.
#[derive(Clone, Debug)]
pub struct SledCheckpointLog {
    latest: sled::Tree,
    history: sled::Tree,
    meta: sled::Tree,
    db: sled::Db,
}

impl SledCheckpointLog {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::open(dir)?;
        Ok(Self {
            latest: db.open_tree("latest")?,
            history: db.open_tree("history")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }
}

#[async_trait]
impl CheckpointLog for SledCheckpointLog {
    async fn record(&self, checkpoints: &[Checkpoint], covered_to: u64) -> Result<(), StoreError> {
        for checkpoint in checkpoints {
            let bytes = serde_json::to_vec(checkpoint).map_err(corrupt)?;
            let id = self.db.generate_id()?;
            self.history.insert(id.to_be_bytes(), bytes.as_slice())?;
            self.latest.insert(checkpoint.stream.as_bytes(), bytes)?;
        }
        self.meta.insert("covered_to", &covered_to.to_be_bytes())?;
        self.db.flush_async().await?;
        Ok(())
    }

    async fn latest(&self, stream: &StreamName) -> Result<Option<Checkpoint>, StoreError> {
        self.latest
            .get(stream.as_str().as_bytes())?
            .map(|bytes| serde_json::from_slice(&bytes).map_err(corrupt))
            .transpose()
    }

    async fn covered_to(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get("covered_to")?
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }
}

/// The checkpoint log on JetStream: `<NS>_CHECKPOINTS`.
#[derive(Clone, Debug)]
pub struct JetStreamCheckpointLog {
    js: jetstream::Context,
    stream: String,
    namespace: String,
}

impl JetStreamCheckpointLog {
    /// Creates (or checks) `<NS>_CHECKPOINTS` beside the event log of `store`.
    pub async fn open(store: &JetStreamEventStore) -> Result<Self, StoreError> {
        let config = store.config().clone();
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(store.client().clone());
        let name = format!("{}_CHECKPOINTS", config.namespace.to_ascii_uppercase());
        let wanted = stream::Config {
            name: name.clone(),
            description: Some("Harmony Sync: signed checkpoints of the event log".into()),
            subjects: vec![format!("{}.checkpoints.>", config.namespace)],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: config.duplicate_window,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            ..Default::default()
        };
        eventstore::jetstream::ensure_stream(&js, wanted).await?;
        Ok(Self {
            js,
            stream: name,
            namespace: config.namespace,
        })
    }

    fn subject(&self, stream: &str) -> String {
        format!("{}.checkpoints.stream.{stream}", self.namespace)
    }

    fn covered_subject(&self) -> String {
        format!("{}.checkpoints.covered", self.namespace)
    }

    async fn last(&self, subject: String) -> Result<Option<bytes::Bytes>, StoreError> {
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|error| StoreError::unavailable_from("the checkpoint stream", error))?;
        match stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Ok(Some(message.payload)),
            Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(error) => Err(StoreError::unavailable_from("reading a checkpoint", error)),
        }
    }
}

#[async_trait]
impl CheckpointLog for JetStreamCheckpointLog {
    async fn record(&self, checkpoints: &[Checkpoint], covered_to: u64) -> Result<(), StoreError> {
        let unavailable = |error| StoreError::unavailable_from("recording a checkpoint", error);
        let mut acks = Vec::with_capacity(checkpoints.len() + 1);
        for checkpoint in checkpoints {
            let bytes = serde_json::to_vec(checkpoint).map_err(corrupt)?;
            acks.push(
                self.js
                    .publish(self.subject(&checkpoint.stream), bytes.into())
                    .await
                    .map_err(unavailable)?,
            );
        }
        for ack in acks {
            ack.await.map_err(unavailable)?;
        }
        self.js
            .publish(
                self.covered_subject(),
                covered_to.to_string().into_bytes().into(),
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn latest(&self, stream: &StreamName) -> Result<Option<Checkpoint>, StoreError> {
        self.last(self.subject(stream.as_str()))
            .await?
            .map(|bytes| serde_json::from_slice(&bytes).map_err(corrupt))
            .transpose()
    }

    async fn covered_to(&self) -> Result<u64, StoreError> {
        Ok(self
            .last(self.covered_subject())
            .await?
            .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok())
            .unwrap_or(0))
    }
}

/// Signs the head of every stream that changed since the last signing. Returns how many
/// streams it signed.
pub async fn sign_new(
    store: &dyn EventStore,
    log: &dyn CheckpointLog,
    key: &CheckpointKey,
) -> Result<usize, StoreError> {
    const PAGE: usize = 1000;
    let head = store.head_position().await?;
    let mut from = log.covered_to().await? + 1;
    if from > head {
        return Ok(0);
    }
    let mut heads: BTreeMap<StreamName, (u64, u64, String)> = BTreeMap::new();
    while from <= head {
        let page = store.read_all(from, PAGE).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        for event in page.into_iter().filter(|e| e.position <= head) {
            heads.insert(
                event.stream.clone(),
                (event.version, event.position, event.hash.to_hex()),
            );
        }
        from = last + 1;
    }
    let checkpoints: Vec<Checkpoint> = heads
        .into_iter()
        .map(|(stream, (version, position, hash))| key.sign(&stream, version, position, hash))
        .collect();
    log.record(&checkpoints, head).await?;
    Ok(checkpoints.len())
}

/// What the newest checkpoint of a stream says about the stream as it is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CheckpointCheck {
    /// The stream has not been signed yet.
    NotSigned,
    /// The stream still holds, at the signed version, the hash the service signed.
    Holds {
        version: u64,
        /// RFC 3339.
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        signed_at: Timestamp,
    },
    /// It does not: the history was rewritten (or the checkpoint is not the service's).
    Broken { version: u64, reason: String },
}

impl CheckpointCheck {
    pub fn is_broken(&self) -> bool {
        matches!(self, CheckpointCheck::Broken { .. })
    }
}

/// Checks the newest checkpoint of `stream` against the stream, with the public key
/// `verifying`.
pub async fn check(
    store: &dyn EventStore,
    log: &dyn CheckpointLog,
    verifying: &VerifyingKey,
    stream: &StreamName,
) -> Result<CheckpointCheck, StoreError> {
    let checkpoint = match latest_signed(log, verifying, stream).await? {
        Ok(checkpoint) => checkpoint,
        Err(answer) => return Ok(answer),
    };
    let at = store.read_stream(stream, checkpoint.version, 1).await?;
    let found = at
        .first()
        .filter(|event| event.version == checkpoint.version)
        .map(|event| event.hash);
    Ok(compare(&checkpoint, found))
}

/// The newest checkpoint of `stream` if this service's key signed it; otherwise what to
/// answer about it.
async fn latest_signed(
    log: &dyn CheckpointLog,
    verifying: &VerifyingKey,
    stream: &StreamName,
) -> Result<Result<Checkpoint, CheckpointCheck>, StoreError> {
    let Some(checkpoint) = log.latest(stream).await? else {
        return Ok(Err(CheckpointCheck::NotSigned));
    };
    let signature = hex::decode(&checkpoint.signature)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok());
    let signed = signature.is_some_and(|signature| {
        checkpoint.key_id == key_id(verifying)
            && verifying.verify(&checkpoint.message(), &signature).is_ok()
    });
    if !signed {
        return Ok(Err(CheckpointCheck::Broken {
            version: checkpoint.version,
            reason: format!(
                "the checkpoint of version {} is not signed by this service's key {}",
                checkpoint.version,
                key_id(verifying)
            ),
        }));
    }
    Ok(Ok(checkpoint))
}

/// What a signed checkpoint says given the hash the stream holds at its version (`None`: the
/// stream no longer reaches it).
fn compare(checkpoint: &Checkpoint, found: Option<ChainHash>) -> CheckpointCheck {
    let broken = |reason: String| CheckpointCheck::Broken {
        version: checkpoint.version,
        reason,
    };
    match found {
        Some(hash) if hash.to_hex() == checkpoint.hash => CheckpointCheck::Holds {
            version: checkpoint.version,
            signed_at: checkpoint.signed_at,
        },
        Some(hash) => broken(format!(
            "version {} hashes to {} but the service signed {} on {}: the history was \
             rewritten",
            checkpoint.version,
            hash.to_hex(),
            checkpoint.hash,
            checkpoint.signed_at
        )),
        None => broken(format!(
            "the stream no longer reaches version {}, which the service signed on {}",
            checkpoint.version, checkpoint.signed_at
        )),
    }
}

/// A checkpoint log and the key, as a process holds them.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    pub log: Arc<dyn CheckpointLog>,
    pub key: Arc<CheckpointKey>,
}

/// A stream checked whole: its chain from the first event, and its newest signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub chain: VerifyReport,
    pub checkpoint: CheckpointCheck,
}

impl Verified {
    /// The chain holds, and so does the newest checkpoint (if the stream was signed yet).
    pub fn is_intact(&self) -> bool {
        self.chain.is_intact() && !self.checkpoint.is_broken()
    }
}

impl Checkpoints {
    /// Checks every stream of the log up to its head as it is now, in one pass: each chain
    /// link by link, and each newest checkpoint against the hash met at its version. The log
    /// is read once, whatever the number of streams; `progress` hears each position read.
    /// Streams in the order they first appear.
    pub async fn verify_all(
        &self,
        store: &dyn EventStore,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<Verified>, StoreError> {
        const PAGE: usize = 1024;
        let verifying = self.key.verifying();
        let head = store.head_position().await?;
        let mut chains = eventstore::chain::LogVerifier::default();
        // Per stream, in first-seen order: its signed checkpoint (or the answer instead), and
        // the hash found at the checkpoint's version.
        let mut signed: Vec<(Result<Checkpoint, CheckpointCheck>, Option<ChainHash>)> = Vec::new();
        let mut index: HashMap<StreamName, usize> = HashMap::new();
        let mut from = 1;
        while from <= head {
            let page = store.read_all(from, PAGE).await?;
            let Some(last) = page.last().map(|e| e.position) else {
                break;
            };
            for event in page.iter().filter(|e| e.position <= head) {
                if chains.next(event) {
                    index.insert(event.stream.clone(), signed.len());
                    let latest = latest_signed(self.log.as_ref(), &verifying, &event.stream);
                    signed.push((latest.await?, None));
                }
                let (checkpoint, found) = &mut signed[index[&event.stream]];
                if let Ok(checkpoint) = checkpoint {
                    if found.is_none() && event.version == checkpoint.version {
                        *found = Some(event.hash);
                    }
                }
            }
            progress(last.min(head));
            from = last + 1;
        }
        Ok(chains
            .finish()
            .into_iter()
            .zip(signed)
            .map(|(chain, (checkpoint, found))| Verified {
                chain,
                checkpoint: match checkpoint {
                    Ok(checkpoint) => compare(&checkpoint, found),
                    Err(answer) => answer,
                },
            })
            .collect())
    }

    /// Checks `stream`'s chain and its newest checkpoint against this service's key.
    pub async fn verify(
        &self,
        store: &dyn EventStore,
        stream: &StreamName,
    ) -> Result<Verified, StoreError> {
        Ok(Verified {
            chain: eventstore::verify_stream(store, stream).await?,
            checkpoint: check(store, self.log.as_ref(), &self.key.verifying(), stream).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_under_its_key_and_not_once_altered() {
        let key = CheckpointKey::generate();
        let stream = StreamName::parse("workspace-acme").unwrap();
        let checkpoint = key.sign(&stream, 3, 9, "ab".repeat(32));
        let signature =
            Signature::from_slice(&hex::decode(&checkpoint.signature).unwrap()).unwrap();
        assert!(key
            .verifying()
            .verify(&checkpoint.message(), &signature)
            .is_ok());
        let mut altered = checkpoint.clone();
        altered.hash = "cd".repeat(32);
        assert!(key
            .verifying()
            .verify(&altered.message(), &signature)
            .is_err());
        let again = CheckpointKey::from_base64(&BASE64.encode(key.signing.to_bytes())).unwrap();
        assert_eq!(again.id(), key.id());
    }
}
