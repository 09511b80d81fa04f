//! The embedded backend: a log on sled with group commit.
//!
//! # Layout
//! One sled tree, `log`, holds three key spaces so that one atomic sled batch covers all of a
//! group commit:
//! - `E ‖ first position (u64 BE)` → a **chunk**: the records of up to [`CHUNK_EVENTS`]
//!   consecutive positions. A record is the event's version (u64 BE), its chain hash
//!   (32 bytes), then the rest of the event (postcard). Storing events in chunks rather than
//!   one sled entry each keeps sled's per-entry cost (its real bottleneck, on writes and on
//!   scans) off the per-event path, as Kafka does with record batches.
//! - `S ‖ stream ‖ 0x00 ‖ first version (u64 BE)` → first position (u64 BE) and count (u32 BE):
//!   one entry per append, which covers consecutive versions at consecutive positions (stream
//!   names never contain 0x00, so a stream's entries form one contiguous range).
//! - `I ‖ event id (16 bytes)` → position: the idempotency index, one entry per event.
//!
//! Snapshots live in a second tree, `snapshots`: they are derived data and need no atomicity
//! with the log.
//!
//! # Writes
//! Everything about an event that does not depend on the stream's head — its canonical JSON up
//! to the version, its encoded body — is computed by the appending task, in parallel with
//! others. A single writer thread owns every write. Appends are queued to it; it takes
//! everything queued (up to a bound), checks each append's expected version and idempotency
//! against the stream heads it caches, and writes all accepted appends in **one** sled batch.
//! A second thread, the flusher, calls `flush()` (an fsync) **once** for everything applied
//! since its last flush, and only then answers those callers: concurrent appends share one
//! fsync (group commit), the writer prepares the next group while the disk syncs the last
//! one, and an answer always means durable. Every answer goes through the flusher, an
//! idempotent retry's included, so none can overtake the flush of what it reports.
//!
//! Positions are assigned by that one writer, contiguously: a rejected append takes none, so
//! the log has **no gaps**.
//!
//! # Reads
//! Sled shows a batch to readers as soon as it is applied, before the flush. Readers therefore
//! never look past the *durable head* (the last position flushed), so nobody — a subscriber
//! least of all — sees an event that a crash could still take back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use domain::{EventId, Metadata, StreamName};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::chain::{canonical_data, link_parts, ChainHash};
use crate::error::StoreError;
use crate::types::{AppendResult, EventStream, ExpectedVersion, NewEvent, RecordedEvent, Snapshot};
use crate::EventStore;

const EVENT: u8 = b'E';
const STREAM: u8 = b'S';
const ID: u8 = b'I';

/// The most events one chunk holds.
const CHUNK_EVENTS: usize = 256;
/// A chunk is closed once it holds this many bytes. Sled writes a page larger than a quarter
/// of a segment as a separate blob file, and a leaf page holds up to 16 entries, so chunks
/// stay small enough that a full leaf of them is well under that (see `SEGMENT_BYTES`).
const CHUNK_BYTES: usize = 16 * 1024;
/// Sled's segment size: 2 MiB, so that pages up to 512 KiB stay inline in the log. Larger
/// segments cost more per flush (sled starts a fresh, zeroed buffer of this size).
const SEGMENT_BYTES: usize = 2 * 1024 * 1024;

/// How the sled log is opened.
#[derive(Clone, Debug)]
pub struct SledConfig {
    pub path: PathBuf,
    /// Sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// The most appends one group commit takes.
    pub max_group: usize,
}

impl SledConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_bytes: 1024 * 1024 * 1024,
            max_group: 4096,
        }
    }

    /// The sled configuration the log opens with; benchmarks open the raw engine with it too.
    pub fn sled(&self) -> sled::Config {
        sled::Config::new()
            .path(&self.path)
            .cache_capacity(self.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .segment_size(SEGMENT_BYTES)
            // Durability comes from the writer's explicit flush after every group; sled's own
            // timer would only add fsyncs.
            .flush_every_ms(None)
    }
}

/// The part of a record that follows the fixed header (version, hash).
#[derive(Serialize, Deserialize)]
struct StoredBody {
    id: EventId,
    stream: StreamName,
    event_type: String,
    schema: u32,
    data: String,
    metadata: Metadata,
}

const HEADER: usize = 8 + 32;

/// An event made ready by the appending task: only the version and the hash are left to the
/// writer.
struct PreparedEvent {
    id: EventId,
    /// Canonical bytes up to the version (see [`crate::chain::canonical_prefix`]).
    canonical_prefix: Vec<u8>,
    body: Vec<u8>,
}

impl PreparedEvent {
    fn record(&self, version: u64, hash: &ChainHash) -> Vec<u8> {
        let mut record = Vec::with_capacity(HEADER + self.body.len());
        record.extend_from_slice(&version.to_be_bytes());
        record.extend_from_slice(&hash.0);
        record.extend_from_slice(&self.body);
        record
    }
}

fn prepare_events(
    stream: &StreamName,
    events: Vec<NewEvent>,
) -> Result<Vec<PreparedEvent>, StoreError> {
    let parts = crate::chain::canonical_batch(stream, &events)?;
    let mut prepared = Vec::with_capacity(events.len());
    for (
        event,
        crate::chain::CanonicalParts {
            data,
            prefix: canonical_prefix,
        },
    ) in events.into_iter().zip(parts)
    {
        let body = StoredBody {
            id: event.id,
            stream: stream.clone(),
            event_type: event.event_type,
            schema: event.schema,
            data,
            metadata: event.metadata,
        };
        let body =
            postcard::to_stdvec(&body).map_err(|error| StoreError::Storage(error.to_string()))?;
        prepared.push(PreparedEvent {
            id: event.id,
            canonical_prefix,
            body,
        });
    }
    Ok(prepared)
}

/// Chunk encoding: `count (u32 LE)`, `count` record lengths (u32 LE), then the records.
mod chunk {
    pub(super) fn encode(records: &[Vec<u8>]) -> Vec<u8> {
        let total: usize = records.iter().map(Vec::len).sum();
        let mut bytes = Vec::with_capacity(4 + 4 * records.len() + total);
        bytes.extend_from_slice(&(records.len() as u32).to_le_bytes());
        for record in records {
            bytes.extend_from_slice(&(record.len() as u32).to_le_bytes());
        }
        for record in records {
            bytes.extend_from_slice(record);
        }
        bytes
    }

    /// Where each record of a chunk lies in it, or `None` if its framing is broken.
    pub(super) fn ranges(bytes: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
        let count = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let lengths = bytes.get(4..4 + 4 * count)?;
        let mut offset = 4 + 4 * count;
        let mut ranges = Vec::with_capacity(count);
        for length in lengths.chunks_exact(4) {
            let length = u32::from_le_bytes(length.try_into().ok()?) as usize;
            bytes.get(offset..offset + length)?;
            ranges.push(offset..offset + length);
            offset += length;
        }
        Some(ranges)
    }

    /// The records of a chunk, or `None` if its framing is broken.
    pub(super) fn records(bytes: &[u8]) -> Option<Vec<&[u8]>> {
        Some(
            ranges(bytes)?
                .into_iter()
                .map(|range| &bytes[range])
                .collect(),
        )
    }

    pub(super) fn count(bytes: &[u8]) -> Option<u64> {
        Some(u64::from(u32::from_le_bytes(
            bytes.get(..4)?.try_into().ok()?,
        )))
    }
}

struct AppendRequest {
    stream: StreamName,
    expected: ExpectedVersion,
    events: Vec<PreparedEvent>,
    reply: Reply,
}

/// Where an append's outcome goes.
type Reply = oneshot::Sender<Result<AppendResult, StoreError>>;

/// What the flusher answers once the flush after it completes.
struct Flush {
    /// Whether the group wrote anything (otherwise it only waits for earlier flushes).
    wrote: bool,
    /// The last position applied by the group.
    last_position: u64,
    replies: Vec<(Reply, Result<AppendResult, StoreError>)>,
}

struct Shared {
    db: sled::Db,
    /// Set when a flush failed: what sled holds in memory may not be on disk, so nothing is
    /// acknowledged after it.
    poisoned: std::sync::Mutex<Option<String>>,
    log: sled::Tree,
    snapshots: sled::Tree,
    /// The last flushed position; readers never go past it.
    durable_head: AtomicU64,
    head_watch: watch::Sender<u64>,
    flushes: AtomicU64,
    appends: AtomicU64,
}

/// Counters of the writer, for metrics and for checking that group commit happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SledStats {
    /// Group commits made durable (one fsync each).
    pub flushes: u64,
    /// Appends acknowledged (including idempotent retries).
    pub appends: u64,
}

/// The embedded event log. Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Clone)]
pub struct SledEventStore {
    shared: Arc<Shared>,
    queue: mpsc::Sender<AppendRequest>,
    _writer: Arc<WriterHandle>,
}

impl std::fmt::Debug for SledEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledEventStore")
            .field(
                "durable_head",
                &self.shared.durable_head.load(Ordering::Acquire),
            )
            .finish_non_exhaustive()
    }
}

/// Joins the writer thread when the last store handle goes, so that reopening the same
/// directory right after a drop never races the old writer for sled's file lock.
/// The handle is the last field of the store, so the queue's sender is already gone (and the
/// writer's loop ending) when it is dropped.
struct WriterHandle {
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        if let Ok(mut thread) = self.thread.lock() {
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn event_key(position: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = EVENT;
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

fn stream_prefix(stream: &StreamName) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.as_str().len() + 10);
    key.push(STREAM);
    key.extend_from_slice(stream.as_str().as_bytes());
    key.push(0);
    key
}

fn stream_key(prefix: &[u8], version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn id_key(id: &EventId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = ID;
    key[1..].copy_from_slice(id.as_uuid().as_bytes());
    key
}

fn read_u64(bytes: &[u8], position_hint: u64) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt {
            position: position_hint,
            reason: "index entry is too short".into(),
        })?;
    Ok(u64::from_be_bytes(array))
}

/// One entry of the stream index: an append of `count` events, versions from the key's,
/// positions from `first_position`.
#[derive(Clone, Copy, Debug)]
struct StreamRun {
    first_version: u64,
    first_position: u64,
    count: u64,
}

impl StreamRun {
    fn encode(first_position: u64, count: u64) -> [u8; 12] {
        let mut value = [0u8; 12];
        value[..8].copy_from_slice(&first_position.to_be_bytes());
        value[8..].copy_from_slice(&(count as u32).to_be_bytes());
        value
    }

    fn decode(prefix_len: usize, key: &[u8], value: &[u8]) -> Result<Self, StoreError> {
        let first_version = read_u64(&key[prefix_len..], 0)?;
        let first_position = read_u64(value, 0)?;
        let count = value
            .get(8..12)
            .and_then(|b| b.try_into().ok())
            .map(|b: [u8; 4]| u64::from(u32::from_be_bytes(b)))
            .ok_or_else(|| StoreError::Corrupt {
                position: first_position,
                reason: "stream index entry is too short".into(),
            })?;
        Ok(Self {
            first_version,
            first_position,
            count,
        })
    }

    fn last_version(&self) -> u64 {
        self.first_version + self.count - 1
    }

    fn last_position(&self) -> u64 {
        self.first_position + self.count - 1
    }
}

fn decode(position: u64, bytes: &[u8]) -> Result<RecordedEvent, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    if bytes.len() < HEADER {
        return Err(corrupt("record shorter than its header".into()));
    }
    let version = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    let hash = ChainHash(bytes[8..HEADER].try_into().expect("32 bytes"));
    let body: StoredBody =
        postcard::from_bytes(&bytes[HEADER..]).map_err(|error| corrupt(error.to_string()))?;
    Ok(RecordedEvent {
        id: body.id,
        stream: body.stream,
        version,
        position,
        event_type: body.event_type,
        schema: body.schema,
        data_json: body.data,
        metadata: body.metadata,
        hash,
    })
}

/// Reads records by position, keeping the last chunk it fetched, framed once.
struct ChunkReader<'a> {
    log: &'a sled::Tree,
    /// The chunk's first position, its bytes, and where each of its records lies.
    current: Option<(u64, sled::IVec, Vec<std::ops::Range<usize>>)>,
}

impl<'a> ChunkReader<'a> {
    fn new(log: &'a sled::Tree) -> Self {
        Self { log, current: None }
    }

    /// The raw record at `position`, if stored.
    fn record(&mut self, position: u64) -> Result<Option<&[u8]>, StoreError> {
        let cached = self.current.as_ref().is_some_and(|(first, _, ranges)| {
            position >= *first && position - first < ranges.len() as u64
        });
        if !cached {
            let found = self
                .log
                .range(event_key(0)..=event_key(position))
                .next_back()
                .transpose()?;
            let Some((key, chunk)) = found else {
                return Ok(None);
            };
            let first = read_u64(&key[1..], position)?;
            let ranges = chunk::ranges(&chunk).ok_or_else(|| StoreError::Corrupt {
                position: first,
                reason: "chunk framing is broken".into(),
            })?;
            self.current = Some((first, chunk, ranges));
        }
        let (first, chunk, ranges) = self.current.as_ref().expect("set above");
        Ok(ranges
            .get((position - first) as usize)
            .map(|range| &chunk[range.clone()]))
    }

    fn event(&mut self, position: u64) -> Result<Option<RecordedEvent>, StoreError> {
        match self.record(position)? {
            Some(record) => decode(position, record).map(Some),
            None => Ok(None),
        }
    }
}

impl SledEventStore {
    /// Opens (or creates) the log in `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(SledConfig::new(path.as_ref()))
    }

    pub fn open_with(config: SledConfig) -> Result<Self, StoreError> {
        let db = config.sled().open()?;
        let log = db.open_tree("log")?;
        let snapshots = db.open_tree("snapshots")?;
        let head = match log.scan_prefix([EVENT]).next_back() {
            Some(entry) => {
                let (key, chunk) = entry?;
                let first = read_u64(&key[1..], 0)?;
                let count = chunk::count(&chunk).ok_or_else(|| StoreError::Corrupt {
                    position: first,
                    reason: "chunk framing is broken".into(),
                })?;
                first + count - 1
            }
            None => 0,
        };
        let (head_watch, _) = watch::channel(head);
        let shared = Arc::new(Shared {
            db,
            poisoned: std::sync::Mutex::new(None),
            log,
            snapshots,
            durable_head: AtomicU64::new(head),
            head_watch,
            flushes: AtomicU64::new(0),
            appends: AtomicU64::new(0),
        });
        let (queue, requests) = mpsc::channel(16_384);
        let writer = Writer {
            shared: shared.clone(),
            heads: HashMap::new(),
            next_position: head + 1,
        };
        let max_group = config.max_group.max(1);
        let thread = std::thread::Builder::new()
            .name("eventstore-writer".into())
            .spawn(move || writer.run(requests, max_group))
            .map_err(|error| {
                StoreError::Storage(format!("cannot start the writer thread: {error}"))
            })?;
        let handle = WriterHandle {
            thread: std::sync::Mutex::new(Some(thread)),
        };
        Ok(Self {
            shared,
            queue,
            _writer: Arc::new(handle),
        })
    }

    pub fn stats(&self) -> SledStats {
        SledStats {
            flushes: self.shared.flushes.load(Ordering::Relaxed),
            appends: self.shared.appends.load(Ordering::Relaxed),
        }
    }

    fn durable_head(&self) -> u64 {
        self.shared.durable_head.load(Ordering::Acquire)
    }

    fn read_all_sync(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let head = self.durable_head();
        let from = from_position.max(1);
        if from > head || limit == 0 {
            return Ok(Vec::new());
        }
        let first_chunk = match self
            .shared
            .log
            .range(event_key(0)..=event_key(from))
            .next_back()
        {
            Some(entry) => read_u64(&entry?.0[1..], from)?,
            None => from,
        };
        let mut events = Vec::with_capacity(limit.min((head - from + 1) as usize));
        for entry in self
            .shared
            .log
            .range(event_key(first_chunk)..=event_key(head))
        {
            let (key, chunk) = entry?;
            let first = read_u64(&key[1..], from)?;
            let records = chunk::records(&chunk).ok_or_else(|| StoreError::Corrupt {
                position: first,
                reason: "chunk framing is broken".into(),
            })?;
            for (offset, record) in records.into_iter().enumerate() {
                let position = first + offset as u64;
                if position < from {
                    continue;
                }
                if position > head || events.len() == limit {
                    return Ok(events);
                }
                events.push(decode(position, record)?);
            }
        }
        Ok(events)
    }

    /// The stream index entries that cover versions from `from_version` on.
    fn stream_runs(
        &self,
        stream: &StreamName,
        from_version: u64,
    ) -> Result<impl Iterator<Item = Result<StreamRun, StoreError>> + '_, StoreError> {
        let prefix = stream_prefix(stream);
        let from = from_version.max(1);
        let covering = self
            .shared
            .log
            .range(stream_key(&prefix, 0)..=stream_key(&prefix, from))
            .next_back()
            .transpose()?;
        let start = covering.map_or_else(|| stream_key(&prefix, from), |(key, _)| key.to_vec());
        let end = stream_key(&prefix, u64::MAX);
        let prefix_len = prefix.len();
        Ok(self.shared.log.range(start..=end).map(move |entry| {
            let (key, value) = entry?;
            StreamRun::decode(prefix_len, &key, &value)
        }))
    }

    fn read_stream_sync(
        &self,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let head = self.durable_head();
        let from = from_version.max(1);
        let mut reader = ChunkReader::new(&self.shared.log);
        let mut events = Vec::new();
        for run in self.stream_runs(stream, from)? {
            let run = run?;
            for version in run.first_version.max(from)..=run.last_version() {
                let position = run.first_position + (version - run.first_version);
                if position > head || events.len() == limit {
                    return Ok(events);
                }
                let event = reader.event(position)?.ok_or_else(|| StoreError::Corrupt {
                    position,
                    reason: format!("stream {stream} indexes a missing event"),
                })?;
                events.push(event);
            }
        }
        Ok(events)
    }

    /// The encoded size of the record at `position`, for benchmarks that write raw records
    /// of the same size.
    pub fn raw_record_len(&self, position: u64) -> Result<Option<usize>, StoreError> {
        Ok(ChunkReader::new(&self.shared.log)
            .record(position)?
            .map(|record| record.len()))
    }

    /// Scans every stored record without decoding it: the raw engine's replay, for
    /// benchmarks. Walks each chunk's framing to every record and reads its first byte.
    /// Returns the number of records and a checksum of the bytes read.
    pub fn raw_scan(&self) -> Result<(u64, u64), StoreError> {
        let (mut count, mut checksum) = (0u64, 0u64);
        for entry in self
            .shared
            .log
            .range(event_key(0)..=event_key(self.durable_head()))
        {
            let (key, chunk) = entry?;
            let records = chunk::records(&chunk).ok_or_else(|| StoreError::Corrupt {
                position: read_u64(&key[1..], 0).unwrap_or(0),
                reason: "chunk framing is broken".into(),
            })?;
            for record in records {
                count += 1;
                checksum = checksum.wrapping_add(u64::from(record.first().copied().unwrap_or(0)));
            }
        }
        Ok((count, checksum))
    }

    /// Rewrites the data of the stored event at `position` with `edit` applied, behind the
    /// chain's back. For tamper-detection tests and incident drills; never called by the
    /// service.
    pub fn tamper(
        &self,
        position: u64,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<(), StoreError> {
        let no_event = || StoreError::Corrupt {
            position,
            reason: "no such event".into(),
        };
        let (key, chunk) = self
            .shared
            .log
            .range(event_key(0)..=event_key(position))
            .next_back()
            .ok_or_else(no_event)??;
        let first = read_u64(&key[1..], position)?;
        let mut records: Vec<Vec<u8>> = chunk::records(&chunk)
            .ok_or_else(no_event)?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let record = records
            .get_mut((position - first) as usize)
            .ok_or_else(no_event)?;
        if record.len() < HEADER {
            return Err(StoreError::Corrupt {
                position,
                reason: "record shorter than its header".into(),
            });
        }
        let mut body: StoredBody =
            postcard::from_bytes(&record[HEADER..]).map_err(|error| StoreError::Corrupt {
                position,
                reason: error.to_string(),
            })?;
        let mut data: serde_json::Value = serde_json::from_str(&body.data)
            .map_err(|error| StoreError::InvalidData(error.to_string()))?;
        edit(&mut data);
        body.data = canonical_data(&data)?;
        record.truncate(HEADER);
        record.extend(
            postcard::to_stdvec(&body).map_err(|error| StoreError::Storage(error.to_string()))?,
        );
        self.shared.log.insert(key, chunk::encode(&records))?;
        self.shared.db.flush()?;
        Ok(())
    }
}

/// State owned by the writer thread.
struct Writer {
    shared: Arc<Shared>,
    /// Stream heads (version, last hash), loaded from the index on first use.
    heads: HashMap<StreamName, (u64, ChainHash)>,
    next_position: u64,
}

impl Shared {
    fn poisoned(&self) -> Option<String> {
        self.poisoned
            .lock()
            .map_or_else(|_| Some("the log's state is unknown".into()), |p| p.clone())
    }

    fn poison(&self, reason: String) {
        tracing::error!(%reason, "event log stopped accepting appends");
        if let Ok(mut poisoned) = self.poisoned.lock() {
            poisoned.get_or_insert(reason);
        }
    }

    /// The flusher: one fsync for everything queued, then the answers.
    fn run_flusher(&self, flushes: std::sync::mpsc::Receiver<Flush>) {
        while let Ok(first) = flushes.recv() {
            let mut items = vec![first];
            items.extend(flushes.try_iter());
            let wrote = items.iter().any(|item| item.wrote);
            let flushed = if wrote {
                self.db.flush().map(|_| ())
            } else {
                Ok(())
            };
            let failure = match flushed {
                Err(error) => {
                    let reason = format!("the log could not be made durable: {error}");
                    self.poison(reason.clone());
                    Some(reason)
                }
                Ok(()) => self.poisoned(),
            };
            if failure.is_none() {
                if wrote {
                    self.flushes.fetch_add(1, Ordering::Relaxed);
                }
                let head = items
                    .iter()
                    .map(|item| item.last_position)
                    .max()
                    .unwrap_or(0);
                if head > self.durable_head.load(Ordering::Acquire) {
                    self.durable_head.store(head, Ordering::Release);
                    self.head_watch.send_replace(head);
                }
            }
            for item in items {
                for (reply, outcome) in item.replies {
                    let outcome = match &failure {
                        Some(reason) => Err(StoreError::Unavailable(reason.clone())),
                        None => outcome,
                    };
                    if outcome.is_ok() {
                        self.appends.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = reply.send(outcome);
                }
            }
        }
        let _ = self.db.flush();
    }
}

/// What one append of a group will write, before the group is flushed.
struct Prepared {
    result: AppendResult,
    head: (u64, ChainHash),
}

/// The writes of one group commit, gathered before they go to sled in one batch.
#[derive(Default)]
struct GroupWrites {
    batch: sled::Batch,
    /// Records in position order, from the group's first position.
    records: Vec<Vec<u8>>,
    heads: HashMap<StreamName, (u64, ChainHash)>,
    ids: HashMap<EventId, (StreamName, u64, u64)>,
}

impl Writer {
    fn run(mut self, mut requests: mpsc::Receiver<AppendRequest>, max_group: usize) {
        // Bounded, so a slow disk holds the writer back rather than letting it run ahead.
        let (flushes, pending) = std::sync::mpsc::sync_channel::<Flush>(64);
        let shared = self.shared.clone();
        let flusher = std::thread::Builder::new()
            .name("eventstore-flusher".into())
            .spawn(move || shared.run_flusher(pending));
        let flusher = match flusher {
            Ok(flusher) => flusher,
            Err(error) => {
                self.shared
                    .poison(format!("cannot start the flusher thread: {error}"));
                while let Some(request) = requests.blocking_recv() {
                    let _ = request.reply.send(Err(StoreError::Unavailable(
                        "the event log has no flusher".into(),
                    )));
                }
                return;
            }
        };
        let mut group = Vec::with_capacity(max_group);
        while let Some(first) = requests.blocking_recv() {
            group.push(first);
            while group.len() < max_group {
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            let flush = self.commit_group(&mut group);
            if flushes.send(flush).is_err() {
                break;
            }
        }
        drop(flushes);
        let _ = flusher.join();
    }

    fn stream_head(&mut self, stream: &StreamName) -> Result<Option<(u64, ChainHash)>, StoreError> {
        if let Some(head) = self.heads.get(stream) {
            return Ok(Some(*head));
        }
        let prefix = stream_prefix(stream);
        let Some(entry) = self.shared.log.scan_prefix(&prefix).next_back() else {
            return Ok(None);
        };
        let (key, value) = entry?;
        let run = StreamRun::decode(prefix.len(), &key, &value)?;
        let event = ChunkReader::new(&self.shared.log)
            .event(run.last_position())?
            .ok_or_else(|| StoreError::Corrupt {
                position: run.last_position(),
                reason: "stream head points to a missing event".into(),
            })?;
        let head = (run.last_version(), event.hash);
        self.heads.insert(stream.clone(), head);
        Ok(Some(head))
    }

    /// If the batch was stored before, the original result. An id stored as part of some other
    /// batch is an error rather than a silent partial append.
    fn previous_result(
        &self,
        request: &AppendRequest,
        group: &GroupWrites,
    ) -> Result<Option<AppendResult>, StoreError> {
        let mut reader = ChunkReader::new(&self.shared.log);
        let mut lookup = |id: &EventId| -> Result<Option<(StreamName, u64, u64)>, StoreError> {
            if let Some(found) = group.ids.get(id) {
                return Ok(Some(found.clone()));
            }
            let Some(position) = self.shared.log.get(id_key(id))? else {
                return Ok(None);
            };
            let position = read_u64(&position, 0)?;
            let event = reader.event(position)?.ok_or_else(|| StoreError::Corrupt {
                position,
                reason: "id index points to a missing event".into(),
            })?;
            Ok(Some((event.stream, event.version, position)))
        };
        let mut found = Vec::with_capacity(request.events.len());
        for event in &request.events {
            found.push(lookup(&event.id)?);
        }
        if found.iter().all(Option::is_none) {
            return Ok(None);
        }
        let stored: Vec<_> = found.iter().flatten().collect();
        let first = stored[0];
        let same_batch = stored.len() == request.events.len()
            && stored
                .iter()
                .enumerate()
                .all(|(i, (stream, version, position))| {
                    *stream == request.stream
                        && *version == first.1 + i as u64
                        && *position == first.2 + i as u64
                });
        if !same_batch {
            let id = request
                .events
                .iter()
                .zip(&found)
                .find(|(_, found)| found.is_some())
                .map(|(event, _)| event.id)
                .expect("at least one id was found");
            return Err(StoreError::IdempotencyMismatch { id });
        }
        let last = stored[stored.len() - 1];
        Ok(Some(AppendResult {
            first_version: first.1,
            last_version: last.1,
            first_position: first.2,
            last_position: last.2,
        }))
    }

    fn prepare(
        &mut self,
        request: &AppendRequest,
        group: &mut GroupWrites,
    ) -> Result<Prepared, StoreError> {
        if request.events.is_empty() {
            return Err(StoreError::EmptyAppend);
        }
        if request.events.len() > 1 {
            let mut ids = HashSet::with_capacity(request.events.len());
            if let Some(repeated) = request.events.iter().find(|event| !ids.insert(event.id)) {
                return Err(StoreError::IdempotencyMismatch { id: repeated.id });
            }
        }
        let head = match group.heads.get(&request.stream) {
            Some(head) => Some(*head),
            None => self.stream_head(&request.stream)?,
        };
        if let Some(result) = self.previous_result(request, group)? {
            let head = head.expect("a stream with stored events has a head");
            return Ok(Prepared { result, head });
        }
        request
            .expected
            .check(&request.stream, head.map(|(version, _)| version))?;
        let (mut version, mut hash) = head.unwrap_or((0, ChainHash::GENESIS));
        let first_version = version + 1;
        let first_position = self.next_position;
        for (offset, event) in request.events.iter().enumerate() {
            version += 1;
            let position = first_position + offset as u64;
            hash = link_parts(&hash, &event.canonical_prefix, version);
            group.records.push(event.record(version, &hash));
            group
                .batch
                .insert(&id_key(&event.id), &position.to_be_bytes());
            group
                .ids
                .insert(event.id, (request.stream.clone(), version, position));
        }
        let count = request.events.len() as u64;
        let prefix = stream_prefix(&request.stream);
        group.batch.insert(
            stream_key(&prefix, first_version),
            &StreamRun::encode(first_position, count),
        );
        self.next_position += count;
        Ok(Prepared {
            result: AppendResult {
                first_version,
                last_version: version,
                first_position,
                last_position: first_position + count - 1,
            },
            head: (version, hash),
        })
    }

    /// Applies a group to sled and returns what the flusher must answer once it is durable.
    fn commit_group(&mut self, group: &mut Vec<AppendRequest>) -> Flush {
        if let Some(reason) = self.shared.poisoned() {
            let replies = group
                .drain(..)
                .map(|r| (r.reply, Err(StoreError::Unavailable(reason.clone()))))
                .collect();
            return Flush {
                wrote: false,
                last_position: 0,
                replies,
            };
        }
        let mut writes = GroupWrites::default();
        let start_position = self.next_position;
        let mut outcomes = Vec::with_capacity(group.len());
        for request in group.iter() {
            let outcome = self.prepare(request, &mut writes);
            if let Ok(prepared) = &outcome {
                writes.heads.insert(request.stream.clone(), prepared.head);
            }
            outcomes.push(outcome.map(|prepared| prepared.result));
        }
        let wrote = self.next_position > start_position;
        let mut chunk_first = start_position;
        let mut chunk_start = 0;
        let mut chunk_bytes = 0;
        for (index, record) in writes.records.iter().enumerate() {
            chunk_bytes += record.len();
            let full = index + 1 - chunk_start == CHUNK_EVENTS || chunk_bytes >= CHUNK_BYTES;
            if full || index + 1 == writes.records.len() {
                writes.batch.insert(
                    &event_key(chunk_first),
                    chunk::encode(&writes.records[chunk_start..=index]),
                );
                chunk_first = start_position + index as u64 + 1;
                chunk_start = index + 1;
                chunk_bytes = 0;
            }
        }
        let applied = if wrote {
            self.shared.log.apply_batch(writes.batch)
        } else {
            Ok(())
        };
        match applied {
            Ok(()) => {
                self.heads.extend(writes.heads);
                let replies = group
                    .drain(..)
                    .map(|request| request.reply)
                    .zip(outcomes)
                    .collect();
                Flush {
                    wrote,
                    last_position: self.next_position - 1,
                    replies,
                }
            }
            Err(error) => {
                let reason = format!("the log could not apply a group: {error}");
                self.shared.poison(reason.clone());
                let replies = group
                    .drain(..)
                    .map(|r| (r.reply, Err(StoreError::Unavailable(reason.clone()))))
                    .collect();
                Flush {
                    wrote: false,
                    last_position: 0,
                    replies,
                }
            }
        }
    }
}

#[async_trait]
impl EventStore for SledEventStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend);
        }
        let events = prepare_events(stream, events)?;
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            stream: stream.clone(),
            expected,
            events,
            reply,
        };
        self.queue
            .send(request)
            .await
            .map_err(|_| StoreError::Unavailable("the event log writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the event log writer has stopped".into()))?
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_stream_sync(stream, from_version, limit)
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_all_sync(from_position, limit)
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        Ok(self.durable_head())
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        let head = self.durable_head();
        let prefix = stream_prefix(stream);
        for entry in self.shared.log.scan_prefix(&prefix).rev() {
            let (key, value) = entry?;
            let run = StreamRun::decode(prefix.len(), &key, &value)?;
            // Skip an append applied by a group that is not flushed yet.
            if run.last_position() <= head {
                return Ok(Some(run.last_version()));
            }
        }
        Ok(None)
    }

    fn subscribe(&self, from_position: u64) -> EventStream {
        const PAGE: usize = 1024;
        struct State {
            store: SledEventStore,
            next: u64,
            buffer: VecDeque<RecordedEvent>,
            heads: watch::Receiver<u64>,
            failed: bool,
        }
        let state = State {
            store: self.clone(),
            next: from_position.max(1),
            buffer: VecDeque::new(),
            heads: self.shared.head_watch.subscribe(),
            failed: false,
        };
        Box::pin(futures::stream::unfold(state, |mut state| async move {
            if state.failed {
                return None;
            }
            loop {
                if let Some(event) = state.buffer.pop_front() {
                    state.next = event.position + 1;
                    return Some((Ok(event), state));
                }
                // Mark the current head as seen before reading, so an append that lands
                // after the read wakes the wait below.
                state.heads.borrow_and_update();
                match state.store.read_all_sync(state.next, PAGE) {
                    Ok(events) if !events.is_empty() => state.buffer.extend(events),
                    Ok(_) => {
                        if state.heads.changed().await.is_err() {
                            return None;
                        }
                    }
                    Err(error) => {
                        state.failed = true;
                        return Some((Err(error), state));
                    }
                }
            }
        }))
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, StoreError> {
        let Some(bytes) = self.shared.snapshots.get(stream.as_str().as_bytes())? else {
            return Ok(None);
        };
        Ok(Snapshot::decode(stream, &bytes))
    }

    async fn save_snapshot(
        &self,
        stream: &StreamName,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        self.shared
            .snapshots
            .insert(stream.as_str().as_bytes(), snapshot.encode()?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, Backend};

    /// Each store in its own temporary directory, removed with the backend.
    struct Sled {
        dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
    }

    fn sled() -> Sled {
        Sled {
            dirs: std::sync::Mutex::new(Vec::new()),
        }
    }

    #[async_trait]
    impl Backend for Sled {
        type Store = SledEventStore;
        async fn fresh(&self) -> SledEventStore {
            let dir = tempfile::tempdir().unwrap();
            let store = SledEventStore::open(dir.path()).unwrap();
            self.dirs.lock().unwrap().push(dir);
            store
        }
        async fn tamper(
            &self,
            store: &SledEventStore,
            stream: &StreamName,
            position: u64,
        ) -> conformance::Tampered {
            let version = store
                .read_all(position, 1)
                .await
                .unwrap()
                .into_iter()
                .find(|e| e.position == position && e.stream == *stream)
                .unwrap()
                .version;
            store
                .tamper(position, |data| data["n"] = serde_json::json!(999))
                .unwrap();
            conformance::Tampered {
                version,
                position,
                intact_before: version - 1,
            }
        }
    }

    crate::conformance_tests!(sled());

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledEventStore::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for writer in 0..256u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let s = conformance::stream(&format!("w{writer}"));
                for i in 0..4 {
                    store
                        .append(&s, ExpectedVersion::Any, vec![conformance::event(i)])
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let stats = store.stats();
        assert_eq!(stats.appends, 1024);
        assert!(
            stats.flushes < 512,
            "1024 concurrent appends took {} fsyncs",
            stats.flushes
        );
    }

    #[tokio::test]
    async fn acknowledged_events_survive_reopening_and_positions_continue() {
        let dir = tempfile::tempdir().unwrap();
        let s = conformance::stream("durable");
        let (first, hash) = {
            let store = SledEventStore::open(dir.path()).unwrap();
            let first = store
                .append(
                    &s,
                    ExpectedVersion::NoStream,
                    vec![conformance::event(1), conformance::event(2)],
                )
                .await
                .unwrap();
            let hash = store.read_stream(&s, 2, 1).await.unwrap()[0].hash;
            (first, hash)
        };
        let store = SledEventStore::open(dir.path()).unwrap();
        assert_eq!(store.head_position().await.unwrap(), first.last_position);
        let events = store.read_stream(&s, 1, 10).await.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].hash, hash);
        // The chain continues from the stored head after a restart.
        let next = store
            .append(&s, ExpectedVersion::Exact(2), vec![conformance::event(3)])
            .await
            .unwrap();
        assert_eq!(next.first_position, first.last_position + 1);
        assert!(crate::verify_stream(&store, &s).await.unwrap().is_intact());
    }

    #[tokio::test]
    async fn a_bad_event_rejects_its_batch_without_taking_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledEventStore::open(dir.path()).unwrap();
        let s = conformance::stream("bad");
        store
            .append(&s, ExpectedVersion::Any, vec![conformance::event(1)])
            .await
            .unwrap();
        let repeated = conformance::event(2);
        let error = store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![repeated.clone(), repeated.clone()],
            )
            .await
            .unwrap_err();
        assert_eq!(error, StoreError::IdempotencyMismatch { id: repeated.id });
        let next = store
            .append(&s, ExpectedVersion::Exact(1), vec![conformance::event(3)])
            .await
            .unwrap();
        assert_eq!(next.first_position, 2, "positions have no gaps");
    }
}
