//! `harmony bench eventstore`: the log's figures beside the raw engine underneath, measured in
//! the same run on the same machine with records of the same size.
//!
//! - `append_w1`, `append_w16`, `append_w256`: durable single-event appends by that many
//!   concurrent writers, each on its own stream. Raw: a sled insert and a flush per insert,
//!   from as many threads.
//! - `append_batch100`: appends of 100-event batches. Raw: 100 inserts and one flush.
//! - `replay`: `read_all` through the whole log, every event decoded. Raw: a scan of the same
//!   stored records, walked one by one without decoding.

pub mod jetstream;

use std::path::Path;
use std::time::Instant;

use domain::{Actor, EventId, IntegrationId, Metadata, StreamName, Timestamp, WorkspaceId};
use serde::Serialize;

use eventstore::{EventStore, ExpectedVersion, NewEvent, SledEventStore, StoreError};

/// One measured figure.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The raw engine doing the same work, where one was measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

impl Figure {
    /// A figure with nothing raw beside it (a latency, say), to the microsecond.
    pub fn alone(name: &str, value: f64, unit: &str) -> Self {
        Self {
            name: name.to_owned(),
            value: (value * 1000.0).round() / 1000.0,
            unit: unit.to_owned(),
            raw: None,
            ratio: None,
        }
    }

    pub fn against_raw(name: &str, value: f64, unit: &str, raw: f64) -> Self {
        let ratio = if raw > 0.0 {
            Some((value / raw * 1000.0).round() / 1000.0)
        } else {
            None
        };
        Self {
            name: name.to_owned(),
            value: value.round(),
            unit: unit.to_owned(),
            raw: Some(raw.round()),
            ratio,
        }
    }
}

/// The `p` quantile (0 to 1) of `sorted` latencies, in milliseconds to the microsecond.
pub fn percentile_ms(sorted: &[std::time::Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[index].as_secs_f64() * 1e6).round() / 1e3
}

/// A suite's figures, in the JSON shape DESIGN.md gives.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub suite: String,
    pub backend: String,
    pub machine: String,
    pub figures: Vec<Figure>,
}

/// "2 cores, 23 GiB, <cpu model>", read from /proc where it exists.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| format!(", {} GiB", kib / 1024 / 1024))
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| format!(", {}", m.trim()))
        })
        .unwrap_or_default();
    format!("{cores} cores{memory}{cpu}")
}

/// How much work each figure does. The raw engine does a quarter of the appends of the
/// concurrent figures: it is slower, and its rate settles as quickly.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Appends for `append_w1`, `append_w16` and `append_w256`.
    pub single_appends: [u64; 3],
    pub batches: u64,
    pub replay_events: u64,
}

impl Sizes {
    pub const FULL: Sizes = Sizes {
        single_appends: [5_000, 20_000, 60_000],
        batches: 1_000,
        replay_events: 1_000_000,
    };
    pub const QUICK: Sizes = Sizes {
        single_appends: [500, 2_000, 6_000],
        batches: 100,
        replay_events: 100_000,
    };
    /// JetStream's share: every message goes through a server, so fewer settle as well.
    pub const JETSTREAM_FULL: Sizes = Sizes {
        single_appends: [4_000, 16_000, 40_000],
        batches: 400,
        replay_events: 200_000,
    };
    pub const JETSTREAM_QUICK: Sizes = Sizes {
        single_appends: [400, 1_600, 4_000],
        batches: 40,
        replay_events: 20_000,
    };
}

fn metadata() -> Metadata {
    Metadata {
        workspace: WorkspaceId::try_from("bench".to_owned()).expect("valid workspace id"),
        owner: None,
        actor: Actor::System("benchmark".into()),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: None,
        occurred_at: Timestamp::now(),
    }
}

/// A sync-progress-sized event, the most common kind in a real log.
fn event(n: u64) -> NewEvent {
    NewEvent {
        id: EventId::new(),
        event_type: "SyncProgressed".into(),
        schema: 1,
        data: serde_json::json!({
            "sync_id": uuid::Uuid::now_v7(),
            "object": "contacts",
            "page": n,
            "counts": {"pulled": 100, "created": 3, "updated": 1, "deleted": 0},
            "cursor": format!("after-{n}"),
        }),
        metadata: metadata(),
    }
}

fn stream(n: u64) -> StreamName {
    StreamName::integration(IntegrationId(uuid::Uuid::from_u128(u128::from(n) + 1)))
}

/// The size of an encoded record as the log stores it, so raw inserts write as much.
async fn record_size(dir: &Path) -> Result<usize, StoreError> {
    let store = SledEventStore::open(dir.join("probe"))?;
    store
        .append(&stream(0), ExpectedVersion::Any, vec![event(1)])
        .await?;
    Ok(store.raw_record_len(1)?.unwrap_or(256))
}

/// `total` single-event appends by `writers` concurrent writers, each on its own stream.
async fn ours_single<S: EventStore + Clone>(
    store: &S,
    writers: u64,
    total: u64,
) -> Result<f64, StoreError> {
    let per_writer = (total / writers).max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = stream(writer + 1000 * writers);
            for i in 0..per_writer {
                store
                    .append(&s, ExpectedVersion::Any, vec![event(i)])
                    .await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| StoreError::storage(e.to_string()))??;
    }
    Ok((per_writer * writers) as f64 / started.elapsed().as_secs_f64())
}

fn raw_single(
    db: &sled::Db,
    tree: &sled::Tree,
    writers: u64,
    total: u64,
    record: &[u8],
) -> Result<f64, StoreError> {
    let per_writer = (total / writers).max(1);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|writer| {
                scope.spawn(move || -> Result<(), sled::Error> {
                    for i in 0..per_writer {
                        let key =
                            [writer.to_be_bytes(), i.to_be_bytes(), writers.to_be_bytes()].concat();
                        tree.insert(key, record)?;
                        db.flush()?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| StoreError::storage("raw writer panicked"))?
                .map_err(StoreError::from)
        })
    })?;
    Ok((per_writer * writers) as f64 / started.elapsed().as_secs_f64())
}

/// Runs the eventstore suite on sled under `dir` (which should be on the disk to measure).
pub async fn run(
    dir: &Path,
    sizes: Sizes,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report, StoreError> {
    let record = vec![0x5a_u8; record_size(dir).await?];
    let store = SledEventStore::open(dir.join("log"))?;
    let raw_db = eventstore::SledConfig::new(dir.join("raw")).sled().open()?;
    let raw_tree = raw_db.open_tree("raw")?;
    let mut figures = Vec::new();

    for (writers, total) in [1u64, 16, 256].into_iter().zip(sizes.single_appends) {
        progress(&format!("append_w{writers}: {total} durable appends"));
        let ours = ours_single(&store, writers, total).await?;
        progress(&format!("append_w{writers}: the raw engine"));
        let raw = raw_single(
            &raw_db,
            &raw_tree,
            writers,
            total / if writers == 1 { 1 } else { 4 },
            &record,
        )?;
        figures.push(Figure::against_raw(
            &format!("append_w{writers}"),
            ours,
            "events/s",
            raw,
        ));
    }

    progress(&format!("append_batch100: {} batches", sizes.batches));
    let started = Instant::now();
    for batch in 0..sizes.batches {
        let events = (0..100).map(|i| event(batch * 100 + i)).collect();
        store
            .append(&stream(batch % 64 + 5000), ExpectedVersion::Any, events)
            .await?;
    }
    let ours = (sizes.batches * 100) as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for batch in 0..sizes.batches {
        for i in 0..100u64 {
            raw_tree.insert(
                [b"b".as_slice(), &batch.to_be_bytes(), &i.to_be_bytes()].concat(),
                record.as_slice(),
            )?;
        }
        raw_db.flush()?;
    }
    let raw = (sizes.batches * 100) as f64 / started.elapsed().as_secs_f64();
    figures.push(Figure::against_raw(
        "append_batch100",
        ours,
        "events/s",
        raw,
    ));

    // Top the log up to the replay size with large batches, then read it all back.
    top_up(&store, sizes.replay_events, 1000, progress).await?;
    progress("replay: reading everything back");
    let head = store.head_position().await?;
    // Alternate, twice, and keep the best of each: neither side gets only the cold cache.
    let (mut ours, mut raw) = (0f64, 0f64);
    for _ in 0..2 {
        raw = raw.max(raw_scan(&store)?);
        ours = ours.max(replay(&store, head).await?);
    }
    figures.push(Figure::against_raw("replay", ours, "events/s", raw));

    Ok(Report {
        suite: "eventstore".into(),
        backend: "sled".into(),
        machine: machine(),
        figures,
    })
}

/// Appends batches of `batch` events to `store` until its head reaches `events`.
async fn top_up(
    store: &dyn EventStore,
    events: u64,
    batch: u64,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), StoreError> {
    let head = store.head_position().await?;
    if head >= events {
        return Ok(());
    }
    progress(&format!("replay: loading {} events", events - head));
    let mut left = events - head;
    let mut n = 0;
    while left > 0 {
        let size = left.min(batch);
        let batch_events = (0..size).map(|i| event(n + i)).collect();
        store
            .append(
                &stream(n / batch % 1000 + 10_000),
                ExpectedVersion::Any,
                batch_events,
            )
            .await?;
        n += size;
        left -= size;
    }
    Ok(())
}

async fn replay(store: &SledEventStore, head: u64) -> Result<f64, StoreError> {
    let started = Instant::now();
    let mut from = 1;
    let mut count = 0u64;
    loop {
        let page = store.read_all(from, 4096).await?;
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        count += page.len() as u64;
    }
    debug_assert_eq!(count, head);
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn raw_scan(store: &SledEventStore) -> Result<f64, StoreError> {
    let started = Instant::now();
    let (count, bytes) = store.raw_scan()?;
    std::hint::black_box(bytes);
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
