//! The embedded backend: a log on sled with group commit.
//!
//! # Layout
//! One sled tree, `log`, holds three key spaces so that one atomic sled batch covers all of an
//! append:
//! - `E ‖ position (u64 BE)` → the event record: version (u64 BE), chain hash (32 bytes), then
//!   the rest of the event (postcard);
//! - `S ‖ stream ‖ 0x00 ‖ version (u64 BE)` → position, the stream index (stream names never
//!   contain 0x00, so a stream's keys form one contiguous range);
//! - `I ‖ event id (16 bytes)` → position, the idempotency index.
//!
//! Snapshots live in a second tree, `snapshots`: they are derived data and need no atomicity
//! with the log.
//!
//! # Writes
//! Everything about an event that does not depend on the stream's head — its canonical JSON up
//! to the version, its encoded body — is computed by the appending task, in parallel with
//! others. A single writer thread owns every write. Appends are queued to it; it takes everything
//! queued (up to a bound), checks each append's expected version and idempotency against the
//! stream heads it caches, writes all accepted appends in **one** sled batch, calls
//! `flush()` (an fsync) **once**, and only then answers every caller. Concurrent appends thus
//! share one fsync (group commit), and an answer always means durable.
//!
//! Positions are assigned by that one writer, contiguously: a rejected append takes none, so
//! the log has **no gaps**.
//!
//! # Reads
//! Sled shows a batch to readers as soon as it is applied, before the flush. Readers therefore
//! never look past the *durable head* (the last position flushed), so nobody — a subscriber
//! least of all — sees an event that a crash could still take back.

use std::collections::HashMap;
use std::collections::VecDeque;
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
            cache_bytes: 256 * 1024 * 1024,
            max_group: 4096,
        }
    }
}

/// The part of a record under an `E` key that follows the fixed header (version, hash).
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

fn prepare_events(stream: &StreamName, events: Vec<NewEvent>) -> Result<Vec<PreparedEvent>, StoreError> {
    let mut prepared = Vec::with_capacity(events.len());
    let mut metadata_cache: Option<(Metadata, String)> = None;
    for event in events {
        let metadata_json = match &metadata_cache {
            Some((metadata, json)) if *metadata == event.metadata => json.clone(),
            _ => {
                let json = crate::chain::canonical_metadata(&event.metadata)?;
                metadata_cache = Some((event.metadata.clone(), json.clone()));
                json
            }
        };
        let data = canonical_data(&event.data)?;
        let canonical_prefix =
            crate::chain::canonical_prefix_with(&event.id, stream, &event.event_type, event.schema, &data, &metadata_json);
        let body = StoredBody {
            id: event.id,
            stream: stream.clone(),
            event_type: event.event_type,
            schema: event.schema,
            data,
            metadata: event.metadata,
        };
        let body = postcard::to_stdvec(&body).map_err(|error| StoreError::Storage(error.to_string()))?;
        prepared.push(PreparedEvent { id: event.id, canonical_prefix, body });
    }
    Ok(prepared)
}

struct AppendRequest {
    stream: StreamName,
    expected: ExpectedVersion,
    events: Vec<PreparedEvent>,
    reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

struct Shared {
    db: sled::Db,
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
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        position: position_hint,
        reason: "index entry is not 8 bytes".into(),
    })?;
    Ok(u64::from_be_bytes(array))
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

impl SledEventStore {
    /// Opens (or creates) the log in `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(SledConfig::new(path.as_ref()))
    }

    pub fn open_with(config: SledConfig) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // Durability comes from the writer's explicit flush after every group; sled's own
            // timer would only add fsyncs.
            .flush_every_ms(None)
            .open()?;
        let log = db.open_tree("log")?;
        let snapshots = db.open_tree("snapshots")?;
        let head = match log.scan_prefix([EVENT]).next_back() {
            Some(entry) => {
                let (key, _) = entry?;
                read_u64(&key[1..], 0)?
            }
            None => 0,
        };
        let (head_watch, _) = watch::channel(head);
        let shared = Arc::new(Shared {
            db,
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
            poisoned: None,
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
        let end = event_key(head);
        let mut events = Vec::with_capacity(limit.min((head - from + 1) as usize));
        for entry in self.shared.log.range(event_key(from)..=end).take(limit) {
            let (key, value) = entry?;
            let position = read_u64(&key[1..], from)?;
            events.push(decode(position, &value)?);
        }
        Ok(events)
    }

    fn read_stream_sync(
        &self,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let head = self.durable_head();
        let prefix = stream_prefix(stream);
        let start = stream_key(&prefix, from_version.max(1));
        let end = stream_key(&prefix, u64::MAX);
        let mut events = Vec::new();
        for entry in self.shared.log.range(start..=end).take(limit) {
            let (_, value) = entry?;
            let position = read_u64(&value, 0)?;
            if position > head {
                break;
            }
            let record =
                self.shared
                    .log
                    .get(event_key(position))?
                    .ok_or_else(|| StoreError::Corrupt {
                        position,
                        reason: format!("stream {stream} indexes a missing event"),
                    })?;
            events.push(decode(position, &record)?);
        }
        Ok(events)
    }

    /// The encoded size of the record at `position`, for benchmarks that write raw records
    /// of the same size.
    pub fn raw_record_len(&self, position: u64) -> Result<Option<usize>, StoreError> {
        Ok(self.shared.log.get(event_key(position))?.map(|record| record.len()))
    }

    /// Scans every event record without decoding it: the raw engine's replay, for benchmarks.
    /// Returns the number of records and of bytes seen.
    pub fn raw_scan(&self) -> Result<(u64, u64), StoreError> {
        let (mut count, mut bytes) = (0u64, 0u64);
        for entry in self.shared.log.range(event_key(1)..=event_key(self.durable_head())) {
            let (_, value) = entry?;
            count += 1;
            bytes += value.len() as u64;
        }
        Ok((count, bytes))
    }

    /// Rewrites the stored record at `position` with `edit` applied, behind the chain's back.
    /// For tamper-detection tests and incident drills; never called by the service.
    pub fn tamper(
        &self,
        position: u64,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<(), StoreError> {
        let key = event_key(position);
        let record = self.shared.log.get(key)?.ok_or(StoreError::Corrupt {
            position,
            reason: "no such event".into(),
        })?;
        if record.len() < HEADER {
            return Err(StoreError::Corrupt { position, reason: "record shorter than its header".into() });
        }
        let mut body: StoredBody = postcard::from_bytes(&record[HEADER..])
            .map_err(|error| StoreError::Corrupt { position, reason: error.to_string() })?;
        let mut data: serde_json::Value = serde_json::from_str(&body.data)
            .map_err(|error| StoreError::InvalidData(error.to_string()))?;
        edit(&mut data);
        body.data = canonical_data(&data)?;
        let mut bytes = record[..HEADER].to_vec();
        bytes.extend(postcard::to_stdvec(&body).map_err(|error| StoreError::Storage(error.to_string()))?);
        self.shared.log.insert(key, bytes)?;
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
    /// Set when a flush failed: what sled holds in memory may not be on disk, so the writer
    /// refuses everything after rather than acknowledge on top of it.
    poisoned: Option<String>,
}

/// What one append of a group will write, before the group is flushed.
struct Prepared {
    result: AppendResult,
    head: (u64, ChainHash),
}

impl Writer {
    fn run(mut self, mut requests: mpsc::Receiver<AppendRequest>, max_group: usize) {
        let mut group = Vec::with_capacity(max_group);
        while let Some(first) = requests.blocking_recv() {
            group.push(first);
            while group.len() < max_group {
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut group);
        }
        let _ = self.shared.db.flush();
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
        let version = read_u64(&key[prefix.len()..], 0)?;
        let position = read_u64(&value, 0)?;
        let record =
            self.shared
                .log
                .get(event_key(position))?
                .ok_or_else(|| StoreError::Corrupt {
                    position,
                    reason: "stream head points to a missing event".into(),
                })?;
        let event = decode(position, &record)?;
        let head = (version, event.hash);
        self.heads.insert(stream.clone(), head);
        Ok(Some(head))
    }

    /// If the batch was stored before, the original result. An id stored as part of some other
    /// batch is an error rather than a silent partial append.
    fn previous_result(
        &self,
        request: &AppendRequest,
        group_ids: &HashMap<EventId, (StreamName, u64, u64)>,
    ) -> Result<Option<AppendResult>, StoreError> {
        let lookup =
            |id: &EventId| -> Result<Option<(StreamName, u64, u64)>, StoreError> {
                if let Some(found) = group_ids.get(id) {
                    return Ok(Some(found.clone()));
                }
                let Some(position) = self.shared.log.get(id_key(id))? else {
                    return Ok(None);
                };
                let position = read_u64(&position, 0)?;
                let record = self.shared.log.get(event_key(position))?.ok_or_else(|| {
                    StoreError::Corrupt {
                        position,
                        reason: "id index points to a missing event".into(),
                    }
                })?;
                let event = decode(position, &record)?;
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
        batch: &mut sled::Batch,
        group_heads: &mut HashMap<StreamName, (u64, ChainHash)>,
        group_ids: &mut HashMap<EventId, (StreamName, u64, u64)>,
    ) -> Result<Prepared, StoreError> {
        if request.events.is_empty() {
            return Err(StoreError::EmptyAppend);
        }
        let mut ids = std::collections::HashSet::with_capacity(request.events.len());
        if let Some(repeated) = request.events.iter().find(|event| !ids.insert(event.id)) {
            return Err(StoreError::IdempotencyMismatch { id: repeated.id });
        }
        let head = match group_heads.get(&request.stream) {
            Some(head) => Some(*head),
            None => self.stream_head(&request.stream)?,
        };
        if let Some(result) = self.previous_result(request, group_ids)? {
            let head = head.expect("a stream with stored events has a head");
            return Ok(Prepared { result, head });
        }
        request
            .expected
            .check(&request.stream, head.map(|(version, _)| version))?;
        let (mut version, mut hash) = head.unwrap_or((0, ChainHash::GENESIS));
        let first_version = version + 1;
        let first_position = self.next_position;
        let prefix = stream_prefix(&request.stream);
        let mut writes = Vec::with_capacity(request.events.len());
        for (offset, event) in request.events.iter().enumerate() {
            version += 1;
            let position = first_position + offset as u64;
            hash = link_parts(&hash, &event.canonical_prefix, version);
            writes.push((position, version, event.id, event.record(version, &hash)));
        }
        for (position, version, id, record) in writes {
            batch.insert(&event_key(position), record);
            batch.insert(stream_key(&prefix, version), &position.to_be_bytes());
            batch.insert(&id_key(&id), &position.to_be_bytes());
            group_ids.insert(id, (request.stream.clone(), version, position));
        }
        let count = request.events.len() as u64;
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

    fn commit_group(&mut self, group: &mut Vec<AppendRequest>) {
        if let Some(reason) = &self.poisoned {
            for request in group.drain(..) {
                let _ = request
                    .reply
                    .send(Err(StoreError::Unavailable(reason.clone())));
            }
            return;
        }
        let mut batch = sled::Batch::default();
        let mut group_heads = HashMap::new();
        let mut group_ids = HashMap::new();
        let start_position = self.next_position;
        let mut outcomes = Vec::with_capacity(group.len());
        for request in group.iter() {
            let outcome = self.prepare(request, &mut batch, &mut group_heads, &mut group_ids);
            if let Ok(prepared) = &outcome {
                group_heads.insert(request.stream.clone(), prepared.head);
            }
            outcomes.push(outcome.map(|prepared| prepared.result));
        }
        let wrote = self.next_position > start_position;
        let committed = if wrote {
            self.shared
                .log
                .apply_batch(batch)
                .and_then(|()| self.shared.db.flush().map(|_| ()))
        } else {
            Ok(())
        };
        match committed {
            Ok(()) => {
                if wrote {
                    self.shared.flushes.fetch_add(1, Ordering::Relaxed);
                }
                let acknowledged = outcomes.iter().filter(|outcome| outcome.is_ok()).count() as u64;
                self.shared
                    .appends
                    .fetch_add(acknowledged, Ordering::Relaxed);
                self.heads.extend(group_heads);
                let head = self.next_position - 1;
                self.shared.durable_head.store(head, Ordering::Release);
                self.shared.head_watch.send_replace(head);
                for (request, outcome) in group.drain(..).zip(outcomes) {
                    let _ = request.reply.send(outcome);
                }
            }
            Err(error) => {
                let reason = format!("the log could not be made durable: {error}");
                tracing::error!(%reason, "event log writer stopped accepting appends");
                self.poisoned = Some(reason.clone());
                for request in group.drain(..) {
                    let _ = request
                        .reply
                        .send(Err(StoreError::Unavailable(reason.clone())));
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
            // Skip index entries of a group applied but not yet flushed.
            if read_u64(&value, 0)? <= head {
                return Ok(Some(read_u64(&key[prefix.len()..], 0)?));
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
        // A snapshot that does not decode is as good as none: it is rebuilt from the log.
        Ok(postcard::from_bytes(&bytes).ok())
    }

    async fn save_snapshot(
        &self,
        stream: &StreamName,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(&snapshot)
            .map_err(|error| StoreError::Storage(error.to_string()))?;
        self.shared
            .snapshots
            .insert(stream.as_str().as_bytes(), bytes)?;
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
        async fn tamper(&self, store: &SledEventStore, position: u64) {
            store
                .tamper(position, |data| data["n"] = serde_json::json!(999))
                .unwrap();
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
