//! The write path: appends prepared by their callers, one writer thread batching them into
//! one sled batch per group, and the flusher answering each group after its fsync.

use super::*;

/// An event made ready by the appending task: only the version and the hash are left to the
/// writer.
pub(super) struct PreparedEvent {
    id: EventId,
    /// Canonical bytes up to the version (see [`crate::chain::canonical_prefix`]).
    canonical_prefix: Vec<u8>,
    body: Vec<u8>,
    /// The workspace it belongs to, for the workspace index.
    workspace: String,
}

impl PreparedEvent {
    pub(super) fn record(&self, version: u64, hash: &ChainHash) -> Vec<u8> {
        let mut record = Vec::with_capacity(HEADER + self.body.len());
        record.extend_from_slice(&version.to_be_bytes());
        record.extend_from_slice(&hash.0);
        record.extend_from_slice(&self.body);
        record
    }
}

pub(super) fn prepare_events(
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
        let workspace = event.metadata.workspace.as_str().to_owned();
        let body = StoredBody {
            id: event.id,
            stream: stream.clone(),
            event_type: event.event_type,
            schema: event.schema,
            data,
            metadata: event.metadata,
        };
        let body = postcard::to_stdvec(&body)
            .map_err(|error| StoreError::storage_from("encoding", error))?;
        prepared.push(PreparedEvent {
            id: event.id,
            canonical_prefix,
            body,
            workspace,
        });
    }
    Ok(prepared)
}

pub(super) struct AppendRequest {
    pub(super) stream: StreamName,
    pub(super) expected: ExpectedVersion,
    pub(super) events: Vec<PreparedEvent>,
    pub(super) reply: Reply,
}

/// Where an append's outcome goes.
pub(super) type Reply = oneshot::Sender<Result<AppendResult, StoreError>>;

/// What the flusher answers once the flush after it completes.
pub(super) struct Flush {
    /// Whether the group wrote anything (otherwise it only waits for earlier flushes).
    wrote: bool,
    /// The last position applied by the group.
    last_position: u64,
    replies: Vec<(Reply, Result<AppendResult, StoreError>)>,
}

/// State owned by the writer thread.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    /// Stream heads (version, last hash), loaded from the index on first use.
    pub(super) heads: FastMap<StreamName, (u64, ChainHash)>,
    pub(super) next_position: u64,
    /// The ids stored lately, for idempotency (see [`super::recent`]).
    pub(super) recent: RecentIds,
    /// The last second the time index has an entry for.
    pub(super) indexed_second: u64,
    /// The first position of the group being prepared: everything before it is applied.
    pub(super) group_start: u64,
    /// Whether the log holds id index entries (it was written before the time index).
    pub(super) legacy_ids: bool,
    /// How long the window gathers runs before they are written to the stream index.
    pub(super) index_window: std::time::Duration,
    /// When the window's first run came (`None`: empty).
    pub(super) window_opened: Option<std::time::Instant>,
    /// How many runs the window holds.
    pub(super) window_len: usize,
}

/// The most runs the window holds before it is written out whatever its age: a bound on its
/// memory and on what a reopen reads back.
const MAX_WINDOW_RUNS: usize = 65_536;

impl Shared {
    pub(super) fn poisoned(&self) -> Option<String> {
        self.poisoned
            .lock()
            .map_or_else(|_| Some("the log's state is unknown".into()), |p| p.clone())
    }

    pub(super) fn poison(&self, reason: String) {
        tracing::error!(%reason, "event log stopped accepting appends");
        if let Ok(mut poisoned) = self.poisoned.lock() {
            poisoned.get_or_insert(reason);
        }
    }

    /// The flusher: one fsync for everything queued, then the answers.
    pub(super) fn run_flusher(&self, flushes: std::sync::mpsc::Receiver<Flush>) {
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
                        Some(reason) => Err(StoreError::unavailable(reason.clone())),
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
pub(super) struct Prepared {
    result: AppendResult,
    head: (u64, ChainHash),
}

/// The writes of one group commit, gathered before they go to sled in one batch.
#[derive(Default)]
pub(super) struct GroupWrites {
    batch: sled::Batch,
    /// Records in position order, from the group's first position.
    records: Vec<Vec<u8>>,
    heads: FastMap<StreamName, (u64, ChainHash)>,
    ids: FastMap<EventId, (StreamName, u64, u64)>,
    workspaces: WorkspaceRuns,
    /// The group's appends, for the stream index (through the window).
    runs: Vec<(StreamName, StreamRun)>,
}

impl Writer {
    pub(super) fn run(mut self, mut requests: mpsc::Receiver<AppendRequest>, max_group: usize) {
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
                    let _ = request
                        .reply
                        .send(Err(StoreError::unavailable("the event log has no flusher")));
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

    pub(super) fn stream_head(
        &mut self,
        stream: &StreamName,
    ) -> Result<Option<(u64, ChainHash)>, StoreError> {
        if let Some(head) = self.heads.get(stream) {
            return Ok(Some(*head));
        }
        let run = match self.shared.window_runs(stream).last() {
            Some(run) => *run,
            None => {
                let prefix = stream_prefix(stream);
                let Some(entry) = self.shared.log.scan_prefix(&prefix).next_back() else {
                    return Ok(None);
                };
                let (key, value) = entry?;
                *StreamRun::decode_all(prefix.len(), &key, &value)?
                    .last()
                    .expect("an index entry holds at least one run")
            }
        };
        let event = ChunkReader::new(&self.shared.log)
            .indexed_event(run.last_position(), "the stream head")?;
        let head = (run.last_version(), event.hash);
        self.heads.insert(stream.clone(), head);
        Ok(Some(head))
    }

    /// If the batch was stored before, the original result. An id stored as part of some other
    /// batch is an error rather than a silent partial append.
    pub(super) fn previous_result(
        &self,
        request: &AppendRequest,
        group: &GroupWrites,
    ) -> Result<Option<AppendResult>, StoreError> {
        let mut reader = ChunkReader::new(&self.shared.log);
        let mut found: Vec<Option<(StreamName, u64, u64)>> =
            Vec::with_capacity(request.events.len());
        let mut unknown = Vec::new();
        for event in &request.events {
            if let Some(stored) = group.ids.get(&event.id) {
                found.push(Some(stored.clone()));
                continue;
            }
            match self.recent.known(&event.id) {
                Known::New => found.push(None),
                Known::Stored(position) => {
                    let event = reader.indexed_event(position, "a recent id")?;
                    found.push(Some((event.stream, event.version, position)));
                }
                Known::Unknown => {
                    unknown.push((found.len(), event.id));
                    found.push(None);
                }
            }
        }
        if !unknown.is_empty() {
            let ids: Vec<EventId> = unknown.iter().map(|(_, id)| *id).collect();
            let mut stored = self.search(&ids)?;
            for (index, id) in unknown {
                found[index] = stored.remove(&id);
            }
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

    /// Looks for `ids` in the log itself: in the id index of events stored before the time
    /// index, then in every event stored since the earliest moment one of them can have been
    /// stored. Slow, and rare: only ids older than the recent ones come here.
    fn search(
        &self,
        ids: &[EventId],
    ) -> Result<HashMap<EventId, (StreamName, u64, u64)>, StoreError> {
        let mut reader = ChunkReader::new(&self.shared.log);
        let mut found = HashMap::new();
        let mut wanted: HashSet<EventId> = HashSet::new();
        for id in ids {
            let indexed = if self.legacy_ids {
                self.shared.log.get(id_key(id))?
            } else {
                None
            };
            match indexed {
                Some(position) => {
                    let position = read_u64(&position, 0)?;
                    let event = reader.indexed_event(position, "the id index")?;
                    found.insert(*id, (event.stream, event.version, position));
                }
                None => {
                    wanted.insert(*id);
                }
            }
        }
        let Some(earliest) = wanted.iter().map(RecentIds::earliest_store).min() else {
            return Ok(found);
        };
        let second = time_key(earliest / 1000);
        let from = match self.shared.log.range(time_key(0)..=second).next_back() {
            Some(entry) => Some(entry?),
            // Older than the time index: from its first entry (what came before is in the
            // id index).
            None => self.shared.log.scan_prefix([TIME]).next().transpose()?,
        };
        let Some((_, from)) = from else {
            return Ok(found);
        };
        // What memory holds needs no reading.
        let end = self.group_start.min(self.recent.complete_from());
        let mut position = read_u64(&from, 0)?;
        while position < end && !wanted.is_empty() {
            let event = reader.indexed_event(position, "the time index")?;
            if wanted.remove(&event.id) {
                found.insert(event.id, (event.stream, event.version, position));
            }
            position += 1;
        }
        Ok(found)
    }

    pub(super) fn prepare(
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
            group.workspaces.add(&event.workspace, position);
            group
                .ids
                .insert(event.id, (request.stream.clone(), version, position));
        }
        let count = request.events.len() as u64;
        group.runs.push((
            request.stream.clone(),
            StreamRun {
                first_version,
                first_position,
                count,
            },
        ));
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

    /// After a group is applied: the window emptied if the group wrote it to the index, or
    /// the group's runs added to it. (Before the group's flush, so that a reader bounded by
    /// the durable head finds every run it may read, in the window or in the index.)
    fn update_window(&mut self, indexed: bool, runs: &[(StreamName, StreamRun)]) {
        // A panic elsewhere cannot leave the map half-changed: its updates are single calls.
        let mut window = self
            .shared
            .window
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if indexed {
            window.clear();
            self.window_opened = None;
            self.window_len = 0;
            return;
        }
        for (stream, run) in runs {
            // The stream's name is copied only for its first run of the window.
            match window.get_mut(stream) {
                Some(runs) => {
                    let before = runs.len();
                    StreamRun::push(runs, *run);
                    self.window_len += runs.len() - before;
                }
                None => {
                    window.insert(stream.clone(), vec![*run]);
                    self.window_len += 1;
                }
            }
        }
        if self.window_len > 0 {
            self.window_opened
                .get_or_insert_with(std::time::Instant::now);
        }
    }

    /// Applies a group to sled and returns what the flusher must answer once it is durable.
    pub(super) fn commit_group(&mut self, group: &mut Vec<AppendRequest>) -> Flush {
        if let Some(reason) = self.shared.poisoned() {
            let replies = group
                .drain(..)
                .map(|r| (r.reply, Err(StoreError::unavailable(reason.clone()))))
                .collect();
            return Flush {
                wrote: false,
                last_position: 0,
                replies,
            };
        }
        let mut writes = GroupWrites::default();
        let start_position = self.next_position;
        self.group_start = start_position;
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
        writes.workspaces.write_to(&mut writes.batch);
        // The stream index: the group's runs join the window, which is written out (one entry
        // per stream, with the "indexed through" mark) once it is old or large enough.
        let index_now = wrote
            && (self.index_window.is_zero()
                || self.window_len + writes.runs.len() >= MAX_WINDOW_RUNS
                || self
                    .window_opened
                    .is_some_and(|opened| opened.elapsed() >= self.index_window));
        if index_now {
            let mut entries = self
                .shared
                .window
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            for (stream, run) in &writes.runs {
                StreamRun::push(entries.entry(stream.clone()).or_default(), *run);
            }
            for (stream, runs) in &entries {
                writes.batch.insert(
                    entry_key(&stream_prefix(stream), runs[0].first_version),
                    StreamRun::encode_all(runs),
                );
            }
            writes.batch.insert(
                STREAM_INDEXED_THROUGH,
                &(self.next_position - 1).to_be_bytes(),
            );
        }
        let now = self.recent.now();
        let second = now / 1000;
        if wrote && second > self.indexed_second {
            writes
                .batch
                .insert(&time_key(second), &start_position.to_be_bytes());
        }
        let applied = if wrote {
            self.shared.log.apply_batch(writes.batch)
        } else {
            Ok(())
        };
        match applied {
            Ok(()) => {
                if wrote {
                    self.indexed_second = self.indexed_second.max(second);
                }
                self.update_window(index_now, &writes.runs);
                self.recent.committed(
                    now,
                    writes
                        .ids
                        .into_iter()
                        .map(|(id, (_, _, position))| (id, position)),
                );
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
                    .map(|r| (r.reply, Err(StoreError::unavailable(reason.clone()))))
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
