//! The run-detail log: what a sync run records as it goes (its `SyncStarted` and
//! `SyncProgressed`), one stream per run, `run-<sync id>`, kept for a retention and then gone.
//!
//! The event log keeps, per run, only its request and its outcome; the outcome (schema 2 of
//! `SyncCompleted` and `SyncFailed`) names the head of the run's detail stream, so the
//! integration's hash chain commits to the detail: while it lasts it cannot be altered
//! unnoticed, and once aged out it is known to have existed (docs/adr/009-run-detail-log.md).
//! The detail streams have the event log's canonical form and hash chain (ADR 003), and the
//! same optimistic concurrency: an append names the head it continues, so a worker that lost
//! its run's lease cannot add to a run another worker carries on.
//!
//! - Embedded: a sled database of its own (`<data-dir>/run-detail`); [`RunDetailLog::expire`]
//!   removes each run whose last detail is older than the retention, a run per atomic batch.
//! - On JetStream: the stream `<NS>_RUNS`, subjects `<ns>.runs.<sync id>`, one message per
//!   append holding its events, `max_age` = the retention, purges allowed; the server ages the
//!   detail out by itself.

use async_trait::async_trait;
use domain::{StreamName, SyncId, Timestamp};

use crate::chain::{canonical_bytes, canonical_data, link};
use crate::error::{ExpectedVersion, StoreError};
use crate::hash::ChainHash;
use crate::types::{NewEvent, RecordedEvent};

mod embedded;
mod on_jetstream;

pub use embedded::SledRunDetailLog;
pub use on_jetstream::JetStreamRunDetailLog;

/// Where a run's detail stream ends: what the next append continues, and what the run's
/// outcome commits to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetailTip {
    /// The version of the last event (0: the stream is empty).
    pub version: u64,
    /// Its chain hash ([`ChainHash::GENESIS`] for an empty stream).
    pub hash: ChainHash,
    /// Where the backend stored it (JetStream: the message's sequence, which the next append
    /// expects as the subject's last; embedded: the version), 0 for an empty stream.
    pub position: u64,
}

impl DetailTip {
    /// The tip of a stream with no event.
    pub const EMPTY: DetailTip = DetailTip {
        version: 0,
        hash: ChainHash::GENESIS,
        position: 0,
    };

    /// The tip after `event`, stored at its position.
    pub fn after(event: &RecordedEvent) -> Self {
        DetailTip {
            version: event.version,
            hash: event.hash,
            position: event.position,
        }
    }

    /// Whether both name the same end of a stream (wherever it was stored).
    pub fn same_end(&self, other: &DetailTip) -> bool {
        self.version == other.version && self.hash == other.hash
    }
}

/// The run-detail log contract both backends meet.
#[async_trait]
pub trait RunDetailLog: Send + Sync + 'static {
    /// Appends `events` to run `sync_id`'s detail stream if it ends at `after`, and returns
    /// its new tip once they are durable. `Conflict` if it does not end there (another worker
    /// appended).
    async fn append(
        &self,
        sync_id: SyncId,
        after: DetailTip,
        events: Vec<NewEvent>,
    ) -> Result<DetailTip, StoreError>;

    /// Every event of run `sync_id`'s detail that is still kept, in version order (empty once
    /// aged out).
    async fn read(&self, sync_id: SyncId) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Stores events read from another run-detail log as they are (ids, versions and hashes),
    /// for `harmony log copy`. A run the log already holds is left as it is.
    async fn import(&self, sync_id: SyncId, events: Vec<RecordedEvent>) -> Result<(), StoreError>;

    /// Removes every run whose newest detail is older than `cutoff`; how many. A backend that
    /// ages its detail out by itself (JetStream's `max_age`) removes nothing here.
    async fn expire(&self, cutoff: Timestamp) -> Result<u64, StoreError>;
}

/// The recorded events of an append, chained after `after`.
pub(crate) fn chain_after(
    sync_id: SyncId,
    after: DetailTip,
    events: Vec<NewEvent>,
    position: impl Fn(u64) -> u64,
) -> Result<(Vec<RecordedEvent>, DetailTip), StoreError> {
    let stream = StreamName::run(sync_id);
    let mut tip = after;
    let mut recorded = Vec::with_capacity(events.len());
    for event in events {
        let version = tip.version + 1;
        let data = canonical_data(&event.data)?;
        let bytes = canonical_bytes(
            &event.id,
            &stream,
            version,
            &event.event_type,
            event.schema,
            &data,
            &event.metadata,
        )?;
        let hash = link(&tip.hash, &bytes);
        recorded.push(RecordedEvent {
            id: event.id,
            stream: stream.clone(),
            version,
            position: position(version),
            event_type: event.event_type,
            schema: event.schema,
            data_json: data,
            metadata: event.metadata,
            hash,
        });
        tip = DetailTip {
            version,
            hash,
            position: position(version),
        };
    }
    Ok((recorded, tip))
}

/// The conflict of an append whose `after` is not the stream's end.
pub(crate) fn conflict(sync_id: SyncId, after: DetailTip, actual: u64) -> StoreError {
    StoreError::Conflict {
        stream: StreamName::run(sync_id),
        expected: ExpectedVersion::from_version(after.version),
        actual: (actual > 0).then_some(actual),
    }
}

/// What became of a run's detail, as its outcome committed to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetailCheck {
    /// Present, its chain intact and ending at the committed head.
    Intact { events: u64 },
    /// Its oldest events aged out (JetStream ages messages, not runs); what is left links up
    /// and ends at the committed head.
    PartlyAgedOut { events: u64 },
    /// Gone, and the run ended longer ago than the retention: as expected.
    AgedOut,
    /// Gone although the run ended within the retention.
    Missing,
    /// Present but not what the outcome committed to.
    Altered { reason: String },
}

impl DetailCheck {
    /// Whether the detail is as the outcome says (or aged out as it should).
    pub fn holds(&self) -> bool {
        !matches!(self, DetailCheck::Missing | DetailCheck::Altered { .. })
    }
}

/// Checks run `sync_id`'s detail against the head its outcome committed to (`version` and
/// `hash`, hex), the outcome having been recorded at `ended_at`; `retention` is how long the
/// log keeps detail.
pub async fn check_detail(
    log: &dyn RunDetailLog,
    sync_id: SyncId,
    version: u64,
    hash: &str,
    ended_at: Timestamp,
    retention: std::time::Duration,
) -> Result<DetailCheck, StoreError> {
    let events = log.read(sync_id).await?;
    if events.is_empty() {
        let age = Timestamp::now().unix_micros() - ended_at.unix_micros();
        let retention = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        return Ok(if age >= retention {
            DetailCheck::AgedOut
        } else {
            DetailCheck::Missing
        });
    }
    let altered = |reason: String| Ok(DetailCheck::Altered { reason });
    let stream = StreamName::run(sync_id);
    // The oldest detail may have aged out (JetStream ages messages): what is kept must still
    // link up from its first event.
    let aged = events[0].version != 1;
    if let Some(broken) = crate::chain::check_events(stream, &events, aged).broken {
        return altered(format!("version {}: {}", broken.version, broken.reason));
    }
    let last = events.last().expect("the detail is not empty");
    if last.version != version || last.hash.to_hex() != hash {
        return altered(format!(
            "the outcome committed to version {version} ending in {hash}, the detail ends at version {} in {}",
            last.version, last.hash
        ));
    }
    Ok(if events[0].version == 1 {
        DetailCheck::Intact {
            events: events.len() as u64,
        }
    } else {
        DetailCheck::PartlyAgedOut {
            events: events.len() as u64,
        }
    })
}

#[cfg(test)]
mod tests;
