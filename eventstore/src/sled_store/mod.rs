//! The embedded backend: a log on sled with group commit.
//!
//! # Layout
//! One sled tree, `log`, holds these key spaces, so that one atomic sled batch covers all of a
//! group commit:
//! - `E ‖ first position (u64 BE)` → a **chunk**: the records of up to [`CHUNK_EVENTS`](layout::CHUNK_EVENTS)
//!   consecutive positions. A record is the event's version (u64 BE), its chain hash
//!   (32 bytes), then the rest of the event (postcard). Storing events in chunks rather than
//!   one sled entry each keeps sled's per-entry cost (its real bottleneck, on writes and on
//!   scans) off the per-event path, as Kafka does with record batches.
//! - `S ‖ stream ‖ 0x00 ‖ first version (u64 BE)` → runs of (first position u64 BE, count
//!   u32 BE), each covering consecutive versions at consecutive positions, the runs' versions
//!   following each other from the key's (stream names never contain 0x00, so a stream's
//!   entries form one contiguous range). The writer gathers a stream's runs over a window
//!   (100 ms) and writes them as one entry, with `Mstream-index-through` (every event at or
//!   before that position is indexed); readers take the writer's window with the index, and
//!   an open reads the events after the mark back into the window (ADR 008).
//! - `T ‖ second (u64 BE)` → the first position stored in that second: a coarse time index,
//!   at most one entry per second, for idempotency (below).
//! - `W ‖ workspace ‖ 0x00 ‖ first position (u64 BE)` → count: runs of a workspace's events.
//!
//! Idempotency needs no per-event entry (ADR 007): the writer keeps the ids stored in the last
//! seconds to minutes in memory, and an id made before what they cover (event ids are UUID v7
//! and carry their time) is looked for in the log from the time index's position for its time
//! on. Logs written before that kept `I ‖ event id` → position for every event; those entries
//! are still read for the events they cover, and no longer written.
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
use domain::{EventId, Metadata, StreamName, WorkspaceId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::chain::{canonical_data, link_parts, ChainHash};
use crate::error::StoreError;
use crate::types::{AppendResult, EventStream, ExpectedVersion, NewEvent, RecordedEvent, Snapshot};
use crate::EventStore;

mod layout;
mod reads;
mod recent;
mod writer;

use layout::*;
use recent::{time_key, Known, RecentIds, TIME};
use writer::*;

/// The writer's maps, hashed on its hot path: keys are event ids and stream names this
/// process stores, so a fast hasher with a per-process seed is enough.
type FastMap<K, V> = foldhash::HashMap<K, V>;
/// The stream runs not yet in the stream index, by stream (ADR 008).
type Window = FastMap<StreamName, Vec<StreamRun>>;
/// Streams' last versions and hashes.
type Heads = FastMap<StreamName, (u64, ChainHash)>;

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
    /// How long a stream's appends gather in the writer's window before their stream index
    /// entry is written (one entry per stream per window, ADR 008); zero writes every group's
    /// entries with the group.
    pub index_window: std::time::Duration,
}

impl SledConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_bytes: 1024 * 1024 * 1024,
            max_group: 4096,
            index_window: std::time::Duration::from_millis(100),
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
    /// The stream runs appended since the stream index was last written (ADR 008), by stream:
    /// readers take them together with the index. The writer adds a group's runs after
    /// applying it, before it becomes durable, and removes them after applying the group that
    /// wrote them to the index.
    window: std::sync::RwLock<Window>,
}

impl Shared {
    /// The window's runs of `stream`.
    fn window_runs(&self, stream: &StreamName) -> Vec<StreamRun> {
        self.window
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(stream)
            .cloned()
            .unwrap_or_default()
    }
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
            window: std::sync::RwLock::new(FastMap::default()),
        });
        let (window, heads) = reopen_window(&shared, head)?;
        let (queue, requests) = mpsc::channel(16_384);
        let indexed_second = match shared.log.scan_prefix([TIME]).next_back() {
            Some(entry) => read_u64(&entry?.0[1..], 0)?,
            None => 0,
        };
        let recent = RecentIds::load(&shared.log, head)?;
        let window_opened = (!window.is_empty()).then(std::time::Instant::now);
        let window_len = window.values().map(Vec::len).sum();
        *shared
            .window
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = window;
        let writer = Writer {
            shared: shared.clone(),
            heads,
            index_window: config.index_window,
            window_opened,
            window_len,
            next_position: head + 1,
            recent,
            indexed_second,
            group_start: head + 1,
            legacy_ids: shared.log.scan_prefix([ID]).next().is_some(),
        };
        let max_group = config.max_group.max(1);
        let thread = std::thread::Builder::new()
            .name("eventstore-writer".into())
            .spawn(move || writer.run(requests, max_group))
            .map_err(|error| StoreError::storage_from("cannot start the writer thread", error))?;
        let handle = WriterHandle {
            thread: std::sync::Mutex::new(Some(thread)),
        };
        let store = Self {
            shared,
            queue,
            _writer: Arc::new(handle),
        };
        store.index_workspaces()?;
        Ok(store)
    }

    /// Builds the workspace index of a log written before it existed: once, at open, before
    /// any append.
    fn index_workspaces(&self) -> Result<(), StoreError> {
        if self.shared.log.get(WORKSPACE_INDEXED)?.is_some() {
            return Ok(());
        }
        const PAGE: usize = 65_536;
        let mut from = 1;
        loop {
            let page = self.read_all_sync(from, PAGE)?;
            let Some(last) = page.last().map(|event| event.position) else {
                break;
            };
            let mut runs = WorkspaceRuns::default();
            for event in &page {
                runs.add(event.metadata.workspace.as_str(), event.position);
            }
            let mut batch = sled::Batch::default();
            runs.write_to(&mut batch);
            self.shared.log.apply_batch(batch)?;
            from = last + 1;
        }
        self.shared.log.insert(WORKSPACE_INDEXED, &[1u8])?;
        self.shared.db.flush()?;
        Ok(())
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
            .map_err(|_| StoreError::unavailable("the event log writer has stopped"))?;
        answer
            .await
            .map_err(|_| StoreError::unavailable("the event log writer has stopped"))?
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

    async fn read_workspace(
        &self,
        workspace: &WorkspaceId,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_workspace_sync(workspace.as_str(), from_position, limit)
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        Ok(self.durable_head())
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        let head = self.durable_head();
        // The window first: its runs are the stream's newest (and taken before the index, a
        // run moving from one to the other in between is seen in one of them).
        let window = self.shared.window_runs(stream);
        // Skip appends applied by a group that is not flushed yet.
        if let Some(version) = window
            .iter()
            .rev()
            .find_map(|r| r.last_version_through(head))
        {
            return Ok(Some(version));
        }
        let prefix = stream_prefix(stream);
        for entry in self.shared.log.scan_prefix(&prefix).rev() {
            let (key, value) = entry?;
            let runs = StreamRun::decode_all(prefix.len(), &key, &value)?;
            if let Some(version) = runs.iter().rev().find_map(|r| r.last_version_through(head)) {
                return Ok(Some(version));
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

/// The writer's window as the log holds it at open: every event after the stream index's
/// "indexed through" position, by stream, with the heads of those streams. A log without
/// the mark (written when every append had its own entry) is indexed through its head, and
/// the mark is written before anything else.
fn reopen_window(shared: &Shared, head: u64) -> Result<(Window, Heads), StoreError> {
    let mut window = Window::default();
    let mut heads = Heads::default();
    let through = match shared.log.get(STREAM_INDEXED_THROUGH)? {
        Some(value) => read_u64(&value, 0)?,
        None => {
            shared
                .log
                .insert(STREAM_INDEXED_THROUGH, &head.to_be_bytes())?;
            shared.db.flush()?;
            head
        }
    };
    let mut reader = ChunkReader::new(&shared.log);
    for position in through + 1..=head {
        let event = reader.indexed_event(position, "the log's head")?;
        StreamRun::push(
            window.entry(event.stream.clone()).or_default(),
            StreamRun {
                first_version: event.version,
                first_position: position,
                count: 1,
            },
        );
        heads.insert(event.stream, (event.version, event.hash));
    }
    Ok((window, heads))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, Backend};

    #[tokio::test]
    async fn a_log_written_before_the_workspace_index_is_indexed_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledEventStore::open(dir.path()).unwrap();
        for n in 0..10 {
            store
                .append(
                    &conformance::stream(&format!("s{}", n % 3)),
                    ExpectedVersion::Any,
                    vec![conformance::event(n)],
                )
                .await
                .unwrap();
        }
        // The log as an older version left it: no index, no mark.
        let stale: Vec<sled::IVec> = store
            .shared
            .log
            .scan_prefix([WORKSPACE])
            .keys()
            .map(Result::unwrap)
            .collect();
        assert!(!stale.is_empty());
        for key in stale {
            store.shared.log.remove(key).unwrap();
        }
        store.shared.log.remove(WORKSPACE_INDEXED).unwrap();
        store.shared.db.flush().unwrap();
        drop(store);

        let reopened = SledEventStore::open(dir.path()).unwrap();
        let acme = conformance::metadata().workspace;
        let events = reopened.read_workspace(&acme, 1, 100).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.position).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
    }

    /// An event whose id was made `ago` before now, as a copy of an old log carries.
    fn made_ago(n: u64, ago: std::time::Duration) -> NewEvent {
        let made = std::time::SystemTime::now() - ago;
        let since = made.duration_since(std::time::UNIX_EPOCH).unwrap();
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
        NewEvent {
            id: EventId(uuid::Uuid::new_v7(ts)),
            ..conformance::event(n)
        }
    }

    #[tokio::test]
    async fn retries_are_recognized_from_memory_and_after_a_restart_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledEventStore::open(dir.path()).unwrap();
        let hour = std::time::Duration::from_secs(3600);
        // A batch made an hour ago (a copy resuming), a fresh one, and others around them.
        let old = vec![made_ago(1, hour), made_ago(2, hour)];
        let fresh = vec![conformance::event(3)];
        let noise = conformance::stream("noise");
        store
            .append(&noise, ExpectedVersion::Any, vec![conformance::event(0)])
            .await
            .unwrap();
        let s = conformance::stream("retried");
        let first = store
            .append(&s, ExpectedVersion::NoStream, old.clone())
            .await
            .unwrap();
        let second = store
            .append(&s, ExpectedVersion::Exact(2), fresh.clone())
            .await
            .unwrap();
        store
            .append(&noise, ExpectedVersion::Any, vec![conformance::event(4)])
            .await
            .unwrap();
        // In the same process: from memory.
        let again = store.append(&s, ExpectedVersion::Any, old.clone()).await;
        assert_eq!(again.unwrap(), first);
        // As if the first three events had been stored an hour ago and the rest a minute ago:
        // a restart then remembers the last minute, and finds the old batch in the log.
        let times: Vec<(sled::IVec, sled::IVec)> = store
            .shared
            .log
            .scan_prefix([TIME])
            .map(Result::unwrap)
            .collect();
        let now = read_u64(&times[0].0[1..], 0).unwrap();
        for (key, _) in times {
            store.shared.log.remove(key).unwrap();
        }
        let at = |position: u64| position.to_be_bytes();
        store
            .shared
            .log
            .insert(time_key(now - 3600), &at(1))
            .unwrap();
        store
            .shared
            .log
            .insert(time_key(now - 60), &at(first.last_position + 1))
            .unwrap();
        store.shared.db.flush().unwrap();
        drop(store);

        // After a restart memory is empty: both are found in the log, and nothing is written.
        let store = SledEventStore::open(dir.path()).unwrap();
        let head = store.head_position().await.unwrap();
        let again = store.append(&s, ExpectedVersion::Any, old.clone()).await;
        assert_eq!(again.unwrap(), first);
        let again = store
            .append(&s, ExpectedVersion::NoStream, fresh.clone())
            .await;
        assert_eq!(again.unwrap(), second);
        // Part of a stored batch with a new event is refused, as is a stored id elsewhere.
        let mixed = vec![old[1].clone(), conformance::event(5)];
        assert_eq!(
            store.append(&s, ExpectedVersion::Any, mixed).await,
            Err(StoreError::IdempotencyMismatch { id: old[1].id })
        );
        assert_eq!(
            store
                .append(&noise, ExpectedVersion::Any, fresh.clone())
                .await,
            Err(StoreError::IdempotencyMismatch { id: fresh[0].id })
        );
        assert_eq!(store.head_position().await.unwrap(), head);
        // No per-event index entry was written: one time entry for the whole second or two.
        assert_eq!(store.shared.log.scan_prefix([ID]).count(), 0);
        assert!(store.shared.log.scan_prefix([TIME]).count() <= 3);
    }

    #[tokio::test]
    async fn a_log_written_with_an_id_index_still_recognizes_its_retries() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledEventStore::open(dir.path()).unwrap();
        let s = conformance::stream("legacy");
        let batch = vec![conformance::event(1), conformance::event(2)];
        let first = store
            .append(&s, ExpectedVersion::NoStream, batch.clone())
            .await
            .unwrap();
        // As an older version left it: an id index entry per event, no time index.
        for (offset, event) in batch.iter().enumerate() {
            let position = first.first_position + offset as u64;
            store
                .shared
                .log
                .insert(id_key(&event.id), &position.to_be_bytes())
                .unwrap();
        }
        let times: Vec<sled::IVec> = store
            .shared
            .log
            .scan_prefix([TIME])
            .keys()
            .map(Result::unwrap)
            .collect();
        for key in times {
            store.shared.log.remove(key).unwrap();
        }
        store.shared.db.flush().unwrap();
        drop(store);

        let store = SledEventStore::open(dir.path()).unwrap();
        let again = store
            .append(&s, ExpectedVersion::NoStream, batch.clone())
            .await;
        assert_eq!(again.unwrap(), first);
        // New appends go on from there, indexed by time.
        let next = store
            .append(&s, ExpectedVersion::Exact(2), vec![conformance::event(3)])
            .await
            .unwrap();
        assert_eq!(next.first_version, 3);
        assert_eq!(store.read_stream(&s, 1, 10).await.unwrap().len(), 3);
        assert_eq!(store.shared.log.scan_prefix([TIME]).count(), 1);
    }

    /// Each store in its own temporary directory, removed with the backend, opened with
    /// `index_window` (the default's, unless a test wants another).
    struct Sled {
        dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
        index_window: std::time::Duration,
    }

    fn sled() -> Sled {
        Sled {
            dirs: std::sync::Mutex::new(Vec::new()),
            index_window: SledConfig::new("").index_window,
        }
    }

    #[async_trait]
    impl Backend for Sled {
        type Store = SledEventStore;
        async fn fresh(&self) -> SledEventStore {
            let dir = tempfile::tempdir().unwrap();
            let store = windowed(dir.path(), self.index_window);
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

    /// The whole contract again with a window that never closes by age: every read of a
    /// stream's recent events goes through the writer's window.
    mod windowed {
        use super::*;

        crate::conformance_tests!(Sled {
            index_window: std::time::Duration::from_secs(3600),
            ..sled()
        });
    }

    fn windowed(dir: &Path, window: std::time::Duration) -> SledEventStore {
        SledEventStore::open_with(SledConfig {
            index_window: window,
            ..SledConfig::new(dir)
        })
        .unwrap()
    }

    /// The appends of a window that was never written to the index (the process stopped
    /// first) are read back from the log at open: every stream reads whole, its version is
    /// right, its chain continues and verifies; and once the window is written, the same.
    #[tokio::test]
    async fn a_window_never_written_to_the_index_is_read_back_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let hour = std::time::Duration::from_secs(3600);
        let streams: Vec<StreamName> = (0..5)
            .map(|n| conformance::stream(&format!("w{n}")))
            .collect();
        {
            let store = windowed(dir.path(), hour);
            for round in 0..4u64 {
                for s in &streams {
                    store
                        .append(s, ExpectedVersion::Any, vec![conformance::event(round)])
                        .await
                        .unwrap();
                }
            }
            assert!(
                store.shared.log.scan_prefix([STREAM]).next().is_none(),
                "the window is not written yet"
            );
            assert_eq!(store.stream_version(&streams[0]).await.unwrap(), Some(4));
        }
        // Reopened, still with a window that never closes by age.
        {
            let store = windowed(dir.path(), hour);
            for s in &streams {
                assert_eq!(store.read_stream(s, 1, 100).await.unwrap().len(), 4);
                assert_eq!(store.read_stream(s, 3, 100).await.unwrap().len(), 2);
                assert_eq!(store.stream_version(s).await.unwrap(), Some(4));
                store
                    .append(s, ExpectedVersion::Exact(4), vec![conformance::event(9)])
                    .await
                    .unwrap();
                assert!(crate::verify_stream(&store, s).await.unwrap().is_intact());
            }
        }
        // Reopened with a window of no length: the next group writes it all to the index.
        let store = windowed(dir.path(), std::time::Duration::ZERO);
        store
            .append(
                &streams[0],
                ExpectedVersion::Exact(5),
                vec![conformance::event(10)],
            )
            .await
            .unwrap();
        assert!(
            store.shared.window_runs(&streams[1]).is_empty(),
            "written out"
        );
        let entries = store
            .shared
            .log
            .scan_prefix(stream_prefix(&streams[1]))
            .count();
        assert_eq!(entries, 1, "one entry for the stream's whole window");
        for (n, s) in streams.iter().enumerate() {
            let events = store.read_stream(s, 1, 100).await.unwrap();
            let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
            let expected: Vec<u64> = (1..=if n == 0 { 6 } else { 5 }).collect();
            assert_eq!(versions, expected);
            assert!(crate::verify_stream(&store, s).await.unwrap().is_intact());
        }
    }

    /// A log written when every append had its own index entry (no "indexed through" mark)
    /// opens as fully indexed, and reads and appends as before.
    #[tokio::test]
    async fn a_log_without_the_indexed_through_mark_is_indexed_through_its_head() {
        let dir = tempfile::tempdir().unwrap();
        let s = conformance::stream("old");
        {
            let store = windowed(dir.path(), std::time::Duration::ZERO);
            for n in 0..3 {
                store
                    .append(&s, ExpectedVersion::Any, vec![conformance::event(n)])
                    .await
                    .unwrap();
            }
            store.shared.log.remove(STREAM_INDEXED_THROUGH).unwrap();
            store.shared.db.flush().unwrap();
        }
        let store = SledEventStore::open(dir.path()).unwrap();
        let head = store.head_position().await.unwrap();
        let mark = store
            .shared
            .log
            .get(STREAM_INDEXED_THROUGH)
            .unwrap()
            .unwrap();
        assert_eq!(read_u64(&mark, 0).unwrap(), head);
        assert_eq!(store.read_stream(&s, 1, 10).await.unwrap().len(), 3);
        store
            .append(&s, ExpectedVersion::Exact(3), vec![conformance::event(3)])
            .await
            .unwrap();
        assert!(crate::verify_stream(&store, &s).await.unwrap().is_intact());
    }

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
