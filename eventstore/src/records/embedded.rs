//! The embedded records log: a sled database of its own, written in chunks.

use super::*;

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
