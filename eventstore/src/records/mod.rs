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

use async_trait::async_trait;
use domain::{EventId, IntegrationId, SyncId, Timestamp, UserId, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

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
    F: Fn(domain::IntegrationId) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<(), StoreError>> + Send,
{
    let checkpoint = PurgeCheckpoint(records.clone());
    let mut purge = Purge { records, also };
    crate::follow::follow(events.as_ref(), &checkpoint, &mut purge).await
}

/// Where the purge keeps its position: in the records log it purges.
struct PurgeCheckpoint(Arc<dyn RecordLog>);

#[async_trait]
impl crate::follow::Checkpoint for PurgeCheckpoint {
    async fn load(&self) -> Result<u64, StoreError> {
        self.0.purge_checkpoint().await
    }
    async fn save(&self, position: u64) -> Result<(), StoreError> {
        self.0.save_purge_checkpoint(position).await
    }
    fn name(&self) -> &str {
        "purge of deleted integrations"
    }
}

struct Purge<F> {
    records: Arc<dyn RecordLog>,
    also: F,
}

#[async_trait]
impl<F, Fut> crate::follow::Follower for Purge<F>
where
    F: Fn(domain::IntegrationId) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<(), StoreError>> + Send,
{
    async fn on_event(&mut self, event: &crate::RecordedEvent) -> Result<(), StoreError> {
        let Some(integration) = event.stream.integration_id() else {
            return Ok(());
        };
        use domain::IntegrationEventKind as Kind;
        match Kind::of(&event.event_type) {
            Some(Kind::Disconnected) => (self.also)(integration).await,
            Some(Kind::Deleted) => {
                (self.also)(integration).await?;
                let purged = self
                    .records
                    .purge_integration(
                        &event.metadata.workspace,
                        event.metadata.owner.as_ref(),
                        integration,
                    )
                    .await?;
                tracing::info!(%integration, purged, "purged the records of a deleted integration");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A change as it travels, read back: what [`decode`] needs of it (the CloudEvents attributes
/// derived from these are left unread).
#[derive(Deserialize)]
struct Envelope {
    id: String,
    time: String,
    workspace: String,
    #[serde(default)]
    owner: Option<String>,
    integration: String,
    object: String,
    recordid: String,
    op: RecordOp,
    contenthash: String,
    syncid: String,
    data: serde_json::Value,
}

/// A change as it is written, borrowed from the change, so encoding copies nothing (the
/// record's data least of all).
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    specversion: &'a str,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: &'a str,
    subject: String,
    time: String,
    datacontenttype: &'a str,
    workspace: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
    integration: String,
    object: &'a str,
    recordid: &'a str,
    op: RecordOp,
    contenthash: &'a str,
    syncid: String,
    data: &'a serde_json::Value,
}

/// The CloudEvents body of a change.
pub fn encode(change: &RecordChange) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&EnvelopeOut {
        specversion: crate::wire::SPEC_VERSION,
        id: change.id.to_string(),
        source: crate::wire::source(&change.workspace),
        event_type: change.op.event_type(),
        subject: format!("{}/{}", change.object, change.record_id),
        time: change.occurred_at.to_string(),
        datacontenttype: "application/json",
        workspace: change.workspace.as_str(),
        owner: change.owner.as_ref().map(UserId::as_str),
        integration: change.integration.to_string(),
        object: &change.object,
        recordid: &change.record_id,
        op: change.op,
        contenthash: &change.content_hash,
        syncid: change.sync_id.to_string(),
        data: &change.data,
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

mod embedded;
mod on_jetstream;

pub use embedded::{SledRecordLog, DEDUP_WINDOW};
pub use on_jetstream::JetStreamRecordLog;
