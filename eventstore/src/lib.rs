//! The event log of Harmony Sync: the only source of truth.
//!
//! [`EventStore`] is the contract every backend meets: atomic, durable, idempotent appends
//! with an optimistic-concurrency check; reads of one stream, of one workspace (indexed, so they
//! cost that workspace's events) or of everything in global order; subscriptions that catch up and then follow live with no gap and no duplicate at the seam;
//! and a SHA-256 hash chain per stream over canonical bytes that leave out the global position,
//! so a chain verifies the same on every backend and in every export.
//!
//! [`SledEventStore`] is the embedded backend (a custom log on sled with group commit);
//! [`JetStreamEventStore`] the distributed one, on NATS JetStream. [`conformance`] is the one
//! suite both pass. [`wire`] is the CloudEvents form events travel in to downstream consumers.
//!
//! Beside the log, two stores that forget: [`records`] (synced record changes, personal data,
//! kept for a maximum age and purged by integration) and [`run_detail`] (each sync run's
//! progress, one chained stream per run, which the run's outcome in the log commits to and
//! which ages out after a retention).
//!
//! [`follow`] is the loop every background reader of the log runs: from a saved position,
//! never saving past work still in flight.
//!
//! This crate is the storage engine alone: it knows no domain rule, nothing of HTTP, SQL or
//! providers. Loading aggregates, executing commands and signing checkpoints sit above it, in
//! the `command` crate.

pub mod chain;
#[cfg(any(test, feature = "test-support"))]
pub mod conformance;
pub mod copy;
mod error;
pub mod follow;
mod hash;
pub mod jetstream;
#[cfg(any(test, feature = "test-support"))]
pub mod nats_server;
pub mod records;
pub mod run_detail;
mod sled_store;
mod types;
#[cfg(any(test, feature = "test-support"))]
pub mod waiting;
pub mod wire;

pub use chain::{verify_stream, BrokenLink, ChainHash, VerifyReport};
pub use error::{caused_by_outage, ExpectedVersion, Source, StoreError};
pub use jetstream::{JetStreamConfig, JetStreamEventStore};
pub use records::{
    purge_deleted_integrations, JetStreamRecordLog, RecordChange, RecordLog, RecordOp,
    SledRecordLog, StoredRecordChange,
};
pub use run_detail::{
    check_detail, DetailCheck, DetailTip, JetStreamRunDetailLog, RunDetailLog, SledRunDetailLog,
};
pub use sled_store::{SledConfig, SledEventStore, SledStats};
pub use types::{AppendResult, EventStream, NewEvent, RecordedEvent, Snapshot};

use async_trait::async_trait;
use domain::{StreamName, WorkspaceId};

/// The event log contract. Positions start at 1; versions of a stream start at 1.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` atomically if the stream is at `expected`, and returns once
    /// they are durable. Re-appending a batch whose event ids are already stored returns the
    /// original result and writes nothing.
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// Up to `limit` events of `stream` with version ≥ `from_version`, in version order.
    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events with position ≥ `from_position`, in position order.
    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events of `workspace` (its integrations' and its policy's) with position
    /// ≥ `from_position`, in position order. The backends index them by workspace, so the
    /// cost follows the workspace's own events rather than the log's; this default reads the
    /// whole log.
    async fn read_workspace(
        &self,
        workspace: &WorkspaceId,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut found = Vec::new();
        let mut from = from_position.max(1);
        while found.len() < limit {
            let page = self.read_all(from, 1024).await?;
            let Some(last) = page.last().map(|event| event.position) else {
                break;
            };
            found.extend(
                page.into_iter()
                    .filter(|event| event.metadata.workspace == *workspace)
                    .take(limit - found.len()),
            );
            from = last + 1;
        }
        Ok(found)
    }

    /// Tells the store that `stream` has reached at least `version`, learnt elsewhere than
    /// from this process's own append (an event a follower was handed, a work item offered by
    /// another process): this process's reads of the stream show that version from now on.
    /// A backend whose reads can come from a replica behind the log waits for it; one whose
    /// reads are always current ignores this.
    fn observed(&self, stream: &StreamName, version: u64) {
        let _ = (stream, version);
    }

    /// The position of the last durable event, 0 for an empty log.
    async fn head_position(&self) -> Result<u64, StoreError>;

    /// The current version of `stream`, `None` if it has no events.
    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>, StoreError>;

    /// Every event with position ≥ `from_position`: history first, then live events as they
    /// become durable, with no gap and no duplicate in between.
    fn subscribe(&self, from_position: u64) -> EventStream;

    /// The latest snapshot of `stream`, if one was saved. Snapshots are derived data: a
    /// backend may lose them, and readers check them against the chain.
    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, StoreError>;

    async fn save_snapshot(
        &self,
        stream: &StreamName,
        snapshot: Snapshot,
    ) -> Result<(), StoreError>;
}

/// Every event of `workspace` with position > `after`: its history read through the
/// workspace index (see [`EventStore::read_workspace`]) up to the head of the log as it is
/// now, then the live log from there, filtered to the workspace — no gap and no duplicate in
/// between. A replay costs the workspace's own events, not the log's.
pub async fn subscribe_workspace(
    store: std::sync::Arc<dyn EventStore>,
    workspace: WorkspaceId,
    after: u64,
) -> Result<EventStream, StoreError> {
    use futures::{StreamExt, TryStreamExt};
    const PAGE: usize = 512;
    let head = store.head_position().await?;
    // Nothing lies past the largest position: a start there (or a wrap) is never the first.
    let replay = futures::stream::try_unfold(after.saturating_add(1), {
        let (store, workspace) = (store.clone(), workspace.clone());
        move |from| {
            let (store, workspace) = (store.clone(), workspace.clone());
            async move {
                if from > head {
                    return Ok::<_, StoreError>(None);
                }
                let page: Vec<RecordedEvent> = store
                    .read_workspace(&workspace, from, PAGE)
                    .await?
                    .into_iter()
                    .filter(|event| event.position <= head)
                    .collect();
                let Some(last) = page.last().map(|event| event.position) else {
                    return Ok(None);
                };
                Ok(Some((
                    futures::stream::iter(page.into_iter().map(Ok)),
                    last.saturating_add(1),
                )))
            }
        }
    })
    .try_flatten();
    let live = store
        .subscribe(head.max(after).saturating_add(1))
        .filter(move |event| {
            std::future::ready(
                event
                    .as_ref()
                    .map_or(true, |event| event.metadata.workspace == workspace),
            )
        });
    Ok(Box::pin(replay.chain(live)))
}
