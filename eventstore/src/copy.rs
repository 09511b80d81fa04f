//! Moving a whole log from one backend to another (sled to JetStream or back): the migration,
//! and the backup and restore path.
//!
//! Events are appended to the target in the source's global order, stream by stream with the
//! source's versions as the expected versions, so every id, version and hash comes out the same
//! (the chain leaves the position out). A copy that was interrupted resumes: events the target
//! already holds (by stream version) are skipped, and a batch that was in flight when the copy
//! stopped is recognized by its ids. At the end every copied stream is verified on the target
//! and its head compared with the source's.

use std::collections::BTreeMap;

use domain::StreamName;

use crate::chain::{verify_stream, ChainHash};
use crate::error::StoreError;
use crate::types::{ExpectedVersion, NewEvent, RecordedEvent};
use crate::EventStore;

/// What a copy did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Events read from the source.
    pub read: u64,
    /// Events appended to the target.
    pub copied: u64,
    /// Events the target already had.
    pub skipped: u64,
    /// Streams verified on the target, heads equal to the source's.
    pub streams: u64,
}

/// Why a copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading the source: {0}")]
    Source(StoreError),
    #[error("writing the target: {0}")]
    Target(StoreError),
    #[error("the target's {stream} differs from the source's: {reason}")]
    Diverged { stream: StreamName, reason: String },
}

/// How many events one append to the target carries at most.
const BATCH: usize = 100;
const PAGE: usize = 4096;

/// Copies every event of `from` into `to`. `progress` is called with the events read so far
/// and the source's head.
pub async fn copy_log(
    from: &dyn EventStore,
    to: &dyn EventStore,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<CopyReport, CopyError> {
    let head = from.head_position().await.map_err(CopyError::Source)?;
    let mut report = CopyReport::default();
    // Per stream: the target's version when first seen, and the source's last hash.
    let mut target_versions: BTreeMap<StreamName, u64> = BTreeMap::new();
    let mut heads: BTreeMap<StreamName, (u64, ChainHash)> = BTreeMap::new();
    let mut next = 1;
    loop {
        let page = from.read_all(next, PAGE).await.map_err(CopyError::Source)?;
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        report.read += page.len() as u64;
        let mut run: Vec<RecordedEvent> = Vec::new();
        for event in page {
            heads.insert(event.stream.clone(), (event.version, event.hash));
            let already = match target_versions.get(&event.stream) {
                Some(version) => *version,
                None => {
                    let version = to
                        .stream_version(&event.stream)
                        .await
                        .map_err(CopyError::Target)?
                        .unwrap_or(0);
                    target_versions.insert(event.stream.clone(), version);
                    version
                }
            };
            if event.version <= already {
                if event.version == already {
                    // The last event the target holds must be this very one, or the target
                    // has another history and nothing may be added to it.
                    same_event(to, &event).await?;
                }
                report.skipped += 1;
                continue;
            }
            let continues = run.last().is_some_and(|previous| {
                previous.stream == event.stream && previous.version + 1 == event.version
            });
            if !continues || run.len() >= BATCH {
                report.copied += flush(to, &mut run).await?;
            }
            run.push(event);
        }
        report.copied += flush(to, &mut run).await?;
        progress(report.read, head);
    }
    for (stream, (version, hash)) in &heads {
        let verified = verify_stream(to, stream).await.map_err(CopyError::Target)?;
        if let Some(broken) = verified.broken {
            return Err(CopyError::Diverged {
                stream: stream.clone(),
                reason: format!("version {}: {}", broken.version, broken.reason),
            });
        }
        if verified.events != *version || verified.head != *hash {
            return Err(CopyError::Diverged {
                stream: stream.clone(),
                reason: format!(
                    "the target has {} events ending in {}, the source {version} ending in {hash}",
                    verified.events, verified.head
                ),
            });
        }
        report.streams += 1;
    }
    Ok(report)
}

/// Checks that the target holds `event` at its version, with the same id and hash.
async fn same_event(to: &dyn EventStore, event: &RecordedEvent) -> Result<(), CopyError> {
    let held = to
        .read_stream(&event.stream, event.version, 1)
        .await
        .map_err(CopyError::Target)?;
    match held.first() {
        Some(held) if held.id == event.id && held.hash == event.hash => Ok(()),
        Some(held) => Err(CopyError::Diverged {
            stream: event.stream.clone(),
            reason: format!(
                "version {} is event {} on the target, {} in the source",
                event.version, held.id, event.id
            ),
        }),
        None => Err(CopyError::Diverged {
            stream: event.stream.clone(),
            reason: format!("version {} cannot be read on the target", event.version),
        }),
    }
}

/// Appends a run of one stream's consecutive events at the versions they had.
async fn flush(to: &dyn EventStore, run: &mut Vec<RecordedEvent>) -> Result<u64, CopyError> {
    let Some(first) = run.first() else {
        return Ok(0);
    };
    let stream = first.stream.clone();
    let expected = ExpectedVersion::from_version(first.version - 1);
    let first_version = first.version;
    let events = run
        .drain(..)
        .map(|event| {
            Ok(NewEvent {
                id: event.id,
                data: event.data()?,
                event_type: event.event_type,
                schema: event.schema,
                metadata: event.metadata,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()
        .map_err(CopyError::Source)?;
    let count = events.len() as u64;
    let result = to
        .append(&stream, expected, events)
        .await
        .map_err(|error| match error {
            StoreError::Conflict { .. } | StoreError::IdempotencyMismatch { .. } => {
                CopyError::Diverged {
                    stream: stream.clone(),
                    reason: error.to_string(),
                }
            }
            other => CopyError::Target(other),
        })?;
    if result.first_version != first_version {
        return Err(CopyError::Diverged {
            stream,
            reason: format!(
                "version {first_version} landed at {} on the target",
                result.first_version
            ),
        });
    }
    Ok(count)
}

/// Copies every record change of `from` into `to`, in order, resuming after the last change
/// the target holds. Returns how many changes were copied.
pub async fn copy_records(
    from: &dyn crate::records::RecordLog,
    to: &dyn crate::records::RecordLog,
) -> Result<u64, CopyError> {
    // The target's last change: everything up to it in the source was copied before.
    let mut last_held = None;
    let mut next = 1;
    loop {
        let page = to.read(next, PAGE).await.map_err(CopyError::Target)?;
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        last_held = Some(last.change.id);
    }
    let mut next = 1;
    if let Some(id) = last_held {
        let mut found = false;
        'search: loop {
            let page = from.read(next, PAGE).await.map_err(CopyError::Source)?;
            let Some(last) = page.last() else { break };
            next = last.position + 1;
            for stored in &page {
                if stored.change.id == id {
                    next = stored.position + 1;
                    found = true;
                    break 'search;
                }
            }
        }
        if !found {
            // The target's records are not a prefix of the source's (expired there, say):
            // copy everything; ids already held are not stored twice.
            next = 1;
        }
    }
    let mut copied = 0;
    loop {
        let page = from.read(next, PAGE).await.map_err(CopyError::Source)?;
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        copied += page.len() as u64;
        let changes = page.into_iter().map(|stored| stored.change).collect();
        to.publish(changes).await.map_err(CopyError::Target)?;
    }
    Ok(copied)
}

/// Copies the detail of every run whose outcome in `log` (the source's event log) commits to
/// one, from `from` to `to`, as it is (ids, versions and hashes), so the target's outcomes find
/// their detail. Detail already aged out of the source is not there to copy; a run the target
/// already holds is left as it is. Returns how many runs' detail was copied.
pub async fn copy_run_detail(
    log: &dyn EventStore,
    from: &dyn crate::run_detail::RunDetailLog,
    to: &dyn crate::run_detail::RunDetailLog,
) -> Result<u64, CopyError> {
    use domain::IntegrationEvent as E;
    let mut copied = 0;
    let mut next = 1;
    loop {
        let page = log.read_all(next, PAGE).await.map_err(CopyError::Source)?;
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        for event in &page {
            let sync_id = match event.decode::<E>() {
                Ok(Some(E::SyncCompleted(done))) if done.detail.is_some() => done.sync_id,
                Ok(Some(E::SyncFailed(failed))) if failed.detail.is_some() => failed.sync_id,
                _ => continue,
            };
            let detail = from.read(sync_id).await.map_err(CopyError::Source)?;
            if detail.is_empty() {
                continue;
            }
            to.import(sync_id, detail)
                .await
                .map_err(CopyError::Target)?;
            copied += 1;
        }
    }
    Ok(copied)
}
