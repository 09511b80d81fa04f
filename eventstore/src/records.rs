//! The records log: one message per synced record created, updated or deleted at a provider.
//!
//! Records are not integration events (they are not part of any hash chain, and there are many
//! more of them) and they are personal data: the log keeps them for a configurable maximum age
//! and purges an integration's records when the integration is deleted. Integration events are
//! never purged.
//!
//! - On JetStream: the stream `HARMONY_RECORDS`, subjects
//!   `harmony.records.<workspace>.<owner>.<integration>.<object>` (`<owner>` is `ws` or the
//!   user id, as for events), file storage, `max_age` = the retention, deletes denied, purges
//!   allowed (by subject, for one integration).
//! - Embedded: a sled database under `<data-dir>/records` with the same contract.
//!
//! A record change travels as a CloudEvent like the events do: `type` is `RecordCreated`,
//! `RecordUpdated` or `RecordDeleted`; `subject` is `<object>/<provider record id>`; the
//! extension attributes `integration`, `object`, `recordid`, `op`, `contenthash`, `syncid`,
//! `workspace` and `owner` (personal integrations) carry the rest; `data` is the mapped record
//! (`null` for a deletion). The headers are those of events (`Harmony-Event-Type`,
//! `Harmony-Event-Id`, `Harmony-Event-Schema`) plus `Nats-Msg-Id` = the change's id.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use domain::{EventId, IntegrationId, SyncId, Timestamp, UserId, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::jetstream::{direct_batch, ensure_stream, DirectBatch, JetStreamConfig};
use crate::JetStreamEventStore;

/// What happened to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordOp {
    Created,
    Updated,
    Deleted,
}

impl RecordOp {
    fn event_type(self) -> &'static str {
        match self {
            RecordOp::Created => "RecordCreated",
            RecordOp::Updated => "RecordUpdated",
            RecordOp::Deleted => "RecordDeleted",
        }
    }
}

/// One record change, as a sync found it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordChange {
    /// The change's id (UUID v7): the idempotency key.
    pub id: EventId,
    pub workspace: WorkspaceId,
    /// The owner of a personal integration.
    pub owner: Option<UserId>,
    pub integration: IntegrationId,
    /// The Harmony object, e.g. `contacts`: a lower-case slug.
    pub object: String,
    /// The provider's id of the record.
    pub record_id: String,
    pub op: RecordOp,
    /// The record after the mapping; `null` for a deletion.
    pub data: serde_json::Value,
    /// SHA-256 of the canonical form of `data`, hex: what the next sync compares against.
    pub content_hash: String,
    pub sync_id: SyncId,
    pub occurred_at: Timestamp,
}

impl RecordChange {
    /// The content hash of mapped data.
    pub fn hash_of(data: &serde_json::Value) -> Result<String, StoreError> {
        use sha2::{Digest, Sha256};
        let canonical = crate::chain::canonical_data(data)?;
        Ok(hex::encode(Sha256::digest(canonical.as_bytes())))
    }
}

/// A change as stored, at its position in the records log.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRecordChange {
    pub position: u64,
    pub change: RecordChange,
}

/// The records log contract both backends meet.
#[async_trait]
pub trait RecordLog: Send + Sync + 'static {
    /// Stores the changes, in order, and returns once they are durable. A change whose id was
    /// stored recently is not stored again (JetStream: within the duplicate window; embedded:
    /// among the last [`DEDUP_WINDOW`] changes), so a retried publish stores nothing twice.
    async fn publish(&self, changes: Vec<RecordChange>) -> Result<(), StoreError>;

    /// Up to `limit` changes with position ≥ `from`, in order. Changes past the retention age
    /// or purged are gone.
    async fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredRecordChange>, StoreError>;

    /// Removes every change of an integration, for good. Returns how many were removed.
    async fn purge_integration(
        &self,
        workspace: &WorkspaceId,
        owner: Option<&UserId>,
        integration: IntegrationId,
    ) -> Result<u64, StoreError>;

    /// The position in the event log up to which deleted integrations were purged.
    async fn purge_checkpoint(&self) -> Result<u64, StoreError>;

    async fn save_purge_checkpoint(&self, position: u64) -> Result<(), StoreError>;
}

/// Follows the event log from the records log's checkpoint and purges the records of every
/// integration whose `Deleted` event it meets; `also` is called for every `Disconnected` and
/// `Deleted` event first (the service shreds the integration's secrets there, in case the
/// request that ended it could not); runs until the subscription ends. Purging
/// is idempotent, so several processes may run it and a crash between a purge and its
/// checkpoint only repeats a purge. A failure of `also` ends the run before the checkpoint
/// moves past the event, so the next run tries it again.
pub async fn purge_deleted_integrations<F, Fut>(
    events: Arc<dyn crate::EventStore>,
    records: Arc<dyn RecordLog>,
    also: F,
) -> Result<(), StoreError>
where
    F: Fn(domain::IntegrationId) -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    use futures::StreamExt;
    const SAVE_EVERY: u64 = 1024;
    let from = records.purge_checkpoint().await? + 1;
    let mut subscription = events.subscribe(from);
    let mut unsaved = 0u64;
    let mut last = from - 1;
    loop {
        // Save the checkpoint whenever the log goes quiet, so a restart does not reread it.
        let next = if unsaved > 0 {
            match tokio::time::timeout(Duration::from_secs(1), subscription.next()).await {
                Ok(next) => next,
                Err(_) => {
                    records.save_purge_checkpoint(last).await?;
                    unsaved = 0;
                    continue;
                }
            }
        } else {
            subscription.next().await
        };
        let Some(event) = next else { return Ok(()) };
        let event = event?;
        last = event.position;
        unsaved += 1;
        if event.event_type == "Disconnected" {
            if let Some(integration) = event.stream.integration_id() {
                also(integration).await?;
            }
        }
        if event.event_type == "Deleted" {
            if let Some(integration) = event.stream.integration_id() {
                also(integration).await?;
                let purged = records
                    .purge_integration(
                        &event.metadata.workspace,
                        event.metadata.owner.as_ref(),
                        integration,
                    )
                    .await?;
                tracing::info!(%integration, purged, "purged the records of a deleted integration");
                records.save_purge_checkpoint(last).await?;
                unsaved = 0;
            }
        }
        if unsaved >= SAVE_EVERY {
            records.save_purge_checkpoint(last).await?;
            unsaved = 0;
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    subject: String,
    time: String,
    datacontenttype: String,
    workspace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    integration: String,
    object: String,
    recordid: String,
    op: RecordOp,
    contenthash: String,
    syncid: String,
    data: serde_json::Value,
}

/// The CloudEvents body of a change.
pub fn encode(change: &RecordChange) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&Envelope {
        specversion: crate::wire::SPEC_VERSION.into(),
        id: change.id.to_string(),
        source: crate::wire::source(&change.workspace),
        event_type: change.op.event_type().into(),
        subject: format!("{}/{}", change.object, change.record_id),
        time: change.occurred_at.to_string(),
        datacontenttype: "application/json".into(),
        workspace: change.workspace.to_string(),
        owner: change.owner.as_ref().map(ToString::to_string),
        integration: change.integration.to_string(),
        object: change.object.clone(),
        recordid: change.record_id.clone(),
        op: change.op,
        contenthash: change.content_hash.clone(),
        syncid: change.sync_id.to_string(),
        data: change.data.clone(),
    })
    .map_err(|error| StoreError::InvalidData(error.to_string()))
}

/// A change from its body.
pub fn decode(body: &[u8], position: u64) -> Result<StoredRecordChange, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|error| corrupt(format!("not a record change: {error}")))?;
    let change = RecordChange {
        id: envelope
            .id
            .parse()
            .map_err(|e| corrupt(format!("id: {e}")))?,
        workspace: envelope
            .workspace
            .parse()
            .map_err(|e| corrupt(format!("workspace: {e}")))?,
        owner: envelope
            .owner
            .map(|o| o.parse())
            .transpose()
            .map_err(|e| corrupt(format!("owner: {e}")))?,
        integration: envelope
            .integration
            .parse()
            .map_err(|e| corrupt(format!("integration: {e}")))?,
        object: envelope.object,
        record_id: envelope.recordid,
        op: envelope.op,
        data: envelope.data,
        content_hash: envelope.contenthash,
        sync_id: envelope
            .syncid
            .parse()
            .map_err(|e| corrupt(format!("syncid: {e}")))?,
        occurred_at: Timestamp::parse(&envelope.time).map_err(|e| corrupt(format!("time: {e}")))?,
    };
    Ok(StoredRecordChange { position, change })
}

fn check_object(object: &str) -> Result<(), StoreError> {
    let ok = !object.is_empty()
        && object.len() <= 64
        && object
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidData(format!(
            "object {object:?} must be a lower-case slug"
        )))
    }
}

// ---------------------------------------------------------------------------------------
// JetStream

/// The records log on JetStream, sharing the event log's connection.
#[derive(Clone, Debug)]
pub struct JetStreamRecordLog {
    js: jetstream::Context,
    config: JetStreamConfig,
    stream: String,
    /// The purge checkpoint, in the snapshots bucket.
    state: jetstream::kv::Store,
}

impl JetStreamRecordLog {
    /// Creates (or checks) `HARMONY_RECORDS` beside the event log of `store`.
    pub async fn open(store: &JetStreamEventStore) -> Result<Self, StoreError> {
        let config = store.config().clone();
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(store.client().clone());
        let wanted = stream::Config {
            name: config.records_stream(),
            description: Some("Harmony Sync: synced record changes (personal data)".into()),
            subjects: vec![format!("{}.records.>", config.namespace)],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: config.records_max_age,
            duplicate_window: config.duplicate_window.min(config.records_max_age),
            deny_delete: true,
            deny_purge: false,
            allow_direct: true,
            ..Default::default()
        };
        ensure_stream(&js, wanted).await?;
        let state = js
            .get_key_value(config.snapshots_bucket())
            .await
            .map_err(|error| {
                StoreError::Unavailable(format!("opening the state bucket: {error}"))
            })?;
        Ok(Self {
            js,
            stream: config.records_stream(),
            config,
            state,
        })
    }

    fn integration_subjects(
        &self,
        workspace: &WorkspaceId,
        owner: Option<&UserId>,
        integration: IntegrationId,
    ) -> String {
        format!(
            "{}.records.{workspace}.{}.{integration}",
            self.config.namespace,
            owner.map_or("ws", UserId::as_str)
        )
    }
}

#[async_trait]
impl RecordLog for JetStreamRecordLog {
    async fn publish(&self, changes: Vec<RecordChange>) -> Result<(), StoreError> {
        // Publish them all, then wait for every acknowledgement: one round trip's latency for
        // a page of records, not one per record.
        let mut acks = Vec::with_capacity(changes.len());
        for change in &changes {
            check_object(&change.object)?;
            let subject = format!(
                "{}.{}",
                self.integration_subjects(
                    &change.workspace,
                    change.owner.as_ref(),
                    change.integration
                ),
                change.object
            );
            let mut headers = HeaderMap::new();
            let id = change.id.to_string();
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert(crate::wire::HEADER_EVENT_ID, id.as_str());
            headers.insert(crate::wire::HEADER_EVENT_TYPE, change.op.event_type());
            headers.insert(crate::wire::HEADER_EVENT_SCHEMA, "1");
            headers.insert("Content-Type", crate::wire::CONTENT_TYPE);
            let ack = self
                .js
                .publish_with_headers(subject, headers, Bytes::from(encode(change)?))
                .await
                .map_err(|error| {
                    StoreError::Unavailable(format!("publishing a record: {error}"))
                })?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|error| StoreError::Unavailable(format!("storing a record: {error}")))?;
        }
        Ok(())
    }

    async fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredRecordChange>, StoreError> {
        const PAGE: usize = 1024;
        let filter = format!("{}.records.>", self.config.namespace);
        let mut out = Vec::new();
        let mut next = from.max(1);
        while out.len() < limit {
            let want = (limit - out.len()).min(PAGE);
            let page = direct_batch(
                &self.js.client(),
                &self.stream,
                self.config.request_timeout,
                DirectBatch {
                    from: Some(next),
                    start_time: None,
                    filter: &filter,
                    batch: want,
                },
            )
            .await?;
            let len = page.len();
            for (seq, payload) in page {
                next = seq + 1;
                match decode(&payload, seq) {
                    Ok(change) => out.push(change),
                    Err(error) => tracing::warn!(%error, "skipping an undecodable record"),
                }
            }
            if len < want {
                break;
            }
        }
        Ok(out)
    }

    async fn purge_integration(
        &self,
        workspace: &WorkspaceId,
        owner: Option<&UserId>,
        integration: IntegrationId,
    ) -> Result<u64, StoreError> {
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|error| StoreError::Unavailable(format!("opening the records: {error}")))?;
        let filter = format!(
            "{}.>",
            self.integration_subjects(workspace, owner, integration)
        );
        let purged = stream
            .purge()
            .filter(filter)
            .await
            .map_err(|error| StoreError::Unavailable(format!("purging records: {error}")))?;
        Ok(purged.purged)
    }

    async fn purge_checkpoint(&self) -> Result<u64, StoreError> {
        let value = self
            .state
            .get(PURGE_CHECKPOINT_KEY)
            .await
            .map_err(|error| StoreError::Unavailable(format!("reading a checkpoint: {error}")))?;
        Ok(value
            .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok())
            .unwrap_or(0))
    }

    async fn save_purge_checkpoint(&self, position: u64) -> Result<(), StoreError> {
        self.state
            .put(PURGE_CHECKPOINT_KEY, Bytes::from(position.to_string()))
            .await
            .map_err(|error| StoreError::Unavailable(format!("saving a checkpoint: {error}")))?;
        Ok(())
    }
}

/// The key of the purge checkpoint in the JetStream state bucket.
const PURGE_CHECKPOINT_KEY: &str = "checkpoint.records-purge";

// ---------------------------------------------------------------------------------------
// sled

/// The embedded records log: a sled database of its own (`<data-dir>/records`).
///
/// Changes are stored in chunks: each publish writes the changes of one integration that it
/// carries as one value, `C‖first position` → (stored at, integration, the changes' bodies
/// each with its length), and `I‖integration‖first position` → () to purge by integration.
/// `N` holds the last position used. A chunk is one write however many changes it holds, so
/// a sync page costs two keys, not three per record. Expired chunks are removed from the
/// oldest on, at each publish and read.
///
/// A change whose id was stored among the last [`DEDUP_WINDOW`] changes is not stored again
/// (the ids are kept in memory, read back from the newest chunks at open): a retried publish,
/// or a sync resumed after a crash, never stores a change twice — as JetStream's duplicate
/// window does for the distributed log.
#[derive(Clone)]
pub struct SledRecordLog {
    inner: Arc<SledRecords>,
}

/// How many of the newest change ids the embedded records log remembers to drop repeats.
pub const DEDUP_WINDOW: usize = 1 << 17;
/// The most changes in one chunk.
const CHUNK_MAX: usize = 16;

struct SledRecords {
    db: sled::Db,
    max_age: Duration,
    writer: tokio::sync::Mutex<Recent>,
}

/// The newest change ids, oldest first.
#[derive(Default)]
struct Recent {
    ids: std::collections::HashSet<EventId>,
    order: std::collections::VecDeque<EventId>,
}

impl Recent {
    fn insert(&mut self, id: EventId) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            while self.order.len() > DEDUP_WINDOW {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

impl std::fmt::Debug for SledRecordLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledRecordLog")
            .field("max_age", &self.inner.max_age)
            .finish_non_exhaustive()
    }
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = vec![prefix];
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

/// A chunk as stored.
struct Chunk<'a> {
    first: u64,
    /// The changes' bodies, in position order.
    bodies: Vec<&'a [u8]>,
}

fn corrupt_chunk(first: u64, reason: &str) -> StoreError {
    StoreError::Corrupt {
        position: first,
        reason: format!("a records chunk is damaged: {reason}"),
    }
}

fn encode_chunk(stored_at: i64, integration: IntegrationId, bodies: &[Vec<u8>]) -> Vec<u8> {
    let size = 24 + bodies.iter().map(|b| b.len() + 4).sum::<usize>();
    let mut value = Vec::with_capacity(size);
    value.extend_from_slice(&stored_at.to_be_bytes());
    value.extend_from_slice(integration.0.as_bytes());
    for body in bodies {
        let length = u32::try_from(body.len()).unwrap_or(u32::MAX);
        value.extend_from_slice(&length.to_be_bytes());
        value.extend_from_slice(body);
    }
    value
}

/// A chunk's position, time and integration, without walking its changes.
fn chunk_header(k: &[u8], value: &[u8]) -> Result<(u64, i64, IntegrationId), StoreError> {
    let first = k
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt_chunk(0, "its key holds no position"))?;
    let header = value
        .get(..24)
        .ok_or_else(|| corrupt_chunk(first, "it is shorter than its header"))?;
    let stored_at = i64::from_be_bytes(header[..8].try_into().expect("eight bytes"));
    let integration = IntegrationId(
        uuid::Uuid::from_slice(&header[8..24]).map_err(|_| corrupt_chunk(first, "integration"))?,
    );
    Ok((first, stored_at, integration))
}

fn decode_chunk<'a>(k: &[u8], value: &'a [u8]) -> Result<Chunk<'a>, StoreError> {
    let (first, _, _) = chunk_header(k, value)?;
    let mut bodies = Vec::new();
    let mut rest = &value[24..];
    while !rest.is_empty() {
        let length = rest
            .get(..4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("four bytes")) as usize)
            .ok_or_else(|| corrupt_chunk(first, "a length is cut short"))?;
        let body = rest
            .get(4..4 + length)
            .ok_or_else(|| corrupt_chunk(first, "a change is cut short"))?;
        bodies.push(body);
        rest = &rest[4 + length..];
    }
    Ok(Chunk { first, bodies })
}

impl SledRecordLog {
    pub fn open(path: impl AsRef<std::path::Path>, max_age: Duration) -> Result<Self, StoreError> {
        // Changes are written once and read in order by a few subscribers: a page cache the
        // size of the event log's would only hold memory (a long sync writes millions).
        // Every write that must last flushes itself, so sled's periodic flusher would only
        // repeat the work.
        let db = sled::Config::new()
            .path(path.as_ref())
            .cache_capacity(8 * 1024 * 1024)
            .flush_every_ms(None)
            .open()?;
        migrate_from_single_changes(&db)?;
        // The newest ids, for dropping repeats.
        let mut newest: Vec<Vec<EventId>> = Vec::new();
        let mut remembered = 0;
        for entry in db.scan_prefix([b'C']).rev() {
            let (k, value) = entry?;
            let chunk = decode_chunk(&k, &value)?;
            let ids = chunk
                .bodies
                .iter()
                .enumerate()
                .map(|(i, body)| decode(body, chunk.first + i as u64).map(|s| s.change.id))
                .collect::<Result<Vec<_>, _>>()?;
            remembered += ids.len();
            newest.push(ids);
            if remembered >= DEDUP_WINDOW {
                break;
            }
        }
        let mut recent = Recent::default();
        for ids in newest.into_iter().rev() {
            for id in ids {
                recent.insert(id);
            }
        }
        Ok(Self {
            inner: Arc::new(SledRecords {
                db,
                max_age,
                writer: tokio::sync::Mutex::new(recent),
            }),
        })
    }

    /// Removes chunks older than the retention age, oldest first.
    fn expire(&self) -> Result<(), StoreError> {
        let cutoff = Timestamp::now().unix_micros()
            - i64::try_from(self.inner.max_age.as_micros()).unwrap_or(i64::MAX);
        let db = &self.inner.db;
        for entry in db.scan_prefix([b'C']) {
            let (k, value) = entry?;
            // Every publish looks here: the header alone says whether the oldest chunk expired.
            let (first, stored_at, integration) = chunk_header(&k, &value)?;
            if stored_at >= cutoff {
                break;
            }
            let mut batch = sled::Batch::default();
            batch.remove(key(b'I', &[integration.0.as_bytes(), &first.to_be_bytes()]));
            batch.remove(k.clone());
            db.apply_batch(batch)?;
        }
        Ok(())
    }

    fn last_position(db: &sled::Db) -> Result<u64, StoreError> {
        db.get([b'N'])?.map_or(Ok(0), |v| {
            <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    position: 0,
                    reason: "the records log's last position is not 8 bytes".into(),
                })
        })
    }
}

/// Rewrites a records log written one key per change (`R‖position`, `I‖integration‖position`,
/// `M‖id`) as chunks, keeping every position.
fn migrate_from_single_changes(db: &sled::Db) -> Result<(), StoreError> {
    if db.scan_prefix([b'R']).next().is_none() {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    for entry in db.scan_prefix([b'R']) {
        let (k, value) = entry?;
        let position = k
            .get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| corrupt_chunk(0, "an old change's key holds no position"))?;
        let stored_at = value
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes)
            .unwrap_or(i64::MAX);
        let body = value.get(8..).unwrap_or_default();
        let stored = decode(body, position)?;
        let integration = stored.change.integration;
        batch.insert(
            key(b'C', &[&position.to_be_bytes()]),
            encode_chunk(stored_at, integration, &[body.to_vec()]),
        );
        batch.insert(
            key(b'I', &[integration.0.as_bytes(), &position.to_be_bytes()]),
            &[],
        );
        batch.remove(k);
        batch.remove(key(b'M', &[stored.change.id.0.as_bytes()]));
    }
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(())
}

#[async_trait]
impl RecordLog for SledRecordLog {
    async fn publish(&self, changes: Vec<RecordChange>) -> Result<(), StoreError> {
        let mut bodies = Vec::with_capacity(changes.len());
        for change in &changes {
            check_object(&change.object)?;
            bodies.push(encode(change)?);
        }
        {
            let mut recent = self.inner.writer.lock().await;
            self.expire()?;
            let db = &self.inner.db;
            // `N` holds the last position ever used, so positions never repeat after an
            // expiry or a purge emptied the log.
            let mut next = Self::last_position(db)? + 1;
            let stored_at = Timestamp::now().unix_micros();
            let mut batch = sled::Batch::default();
            let mut fresh: Vec<EventId> = Vec::new();
            // Consecutive changes of one integration go into one chunk.
            let mut run: Option<(IntegrationId, Vec<Vec<u8>>)> = None;
            let close =
                |batch: &mut sled::Batch, run: (IntegrationId, Vec<Vec<u8>>), next: &mut u64| {
                    let (integration, bodies) = run;
                    let first = (*next).to_be_bytes();
                    batch.insert(
                        key(b'C', &[&first]),
                        encode_chunk(stored_at, integration, &bodies),
                    );
                    batch.insert(key(b'I', &[integration.0.as_bytes(), &first]), &[]);
                    *next += bodies.len() as u64;
                };
            let mut seen_here = std::collections::HashSet::new();
            for (change, body) in changes.iter().zip(bodies) {
                if recent.ids.contains(&change.id) || !seen_here.insert(change.id) {
                    continue;
                }
                fresh.push(change.id);
                match &mut run {
                    Some((integration, bodies))
                        if *integration == change.integration && bodies.len() < CHUNK_MAX =>
                    {
                        bodies.push(body);
                    }
                    _ => {
                        if let Some(done) = run.take() {
                            close(&mut batch, done, &mut next);
                        }
                        run = Some((change.integration, vec![body]));
                    }
                }
            }
            if let Some(done) = run.take() {
                close(&mut batch, done, &mut next);
            }
            if fresh.is_empty() {
                return Ok(());
            }
            batch.insert(&[b'N'][..], &(next - 1).to_be_bytes());
            db.apply_batch(batch)?;
            for id in fresh {
                recent.insert(id);
            }
        }
        self.inner.db.flush_async().await?;
        Ok(())
    }

    async fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredRecordChange>, StoreError> {
        self.expire()?;
        let from = from.max(1);
        let db = &self.inner.db;
        // The chunk that holds `from` starts at or before it.
        let start = db
            .range(key(b'C', &[])..=key(b'C', &[&from.to_be_bytes()]))
            .next_back()
            .transpose()?
            .map_or_else(|| key(b'C', &[&from.to_be_bytes()]), |(k, _)| k.to_vec());
        let mut out = Vec::new();
        for entry in db.range(start..key(b'D', &[])) {
            let (k, value) = entry?;
            let chunk = decode_chunk(&k, &value)?;
            for (i, body) in chunk.bodies.iter().enumerate() {
                let position = chunk.first + i as u64;
                if position < from {
                    continue;
                }
                if out.len() == limit {
                    return Ok(out);
                }
                out.push(decode(body, position)?);
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    async fn purge_integration(
        &self,
        _workspace: &WorkspaceId,
        _owner: Option<&UserId>,
        integration: IntegrationId,
    ) -> Result<u64, StoreError> {
        let _writer = self.inner.writer.lock().await;
        let db = &self.inner.db;
        let prefix = key(b'I', &[integration.0.as_bytes()]);
        let mut batch = sled::Batch::default();
        let mut purged = 0;
        for entry in db.scan_prefix(&prefix) {
            let (k, _) = entry?;
            let first = &k[prefix.len()..];
            let chunk_key = key(b'C', &[first]);
            if let Some(value) = db.get(&chunk_key)? {
                purged += decode_chunk(&chunk_key, &value)?.bodies.len() as u64;
                batch.remove(chunk_key);
            }
            batch.remove(k);
        }
        db.apply_batch(batch)?;
        db.flush_async().await?;
        Ok(purged)
    }

    async fn purge_checkpoint(&self) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .db
            .get([b'P'])?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    async fn save_purge_checkpoint(&self, position: u64) -> Result<(), StoreError> {
        self.inner.db.insert([b'P'], &position.to_be_bytes())?;
        self.inner.db.flush_async().await?;
        Ok(())
    }
}
