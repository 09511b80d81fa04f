//! The embedded run-detail log: a sled database of its own (`<data-dir>/run-detail`).
//!
//! Keys:
//! - `R ‖ sync id (16 bytes) ‖ version (u64 BE)` → the event (JSON): one run's detail is one
//!   contiguous key range, read and removed as one;
//! - `T ‖ last append (µs, u64 BE) ‖ sync id` → (): the runs by the time they last grew, which
//!   [`RunDetailLog::expire`] walks from the oldest;
//! - `L ‖ sync id` → last append (µs, u64 BE): where the run's `T` key is.
//!
//! An append writes its events and moves the run's `T` key in one atomic batch, flushed before
//! it returns; an expiry removes a whole run (its events, `T` and `L`) in one atomic batch, so
//! a process killed while expiring leaves every run whole or absent.

use std::sync::Arc;

use super::*;

/// The embedded run-detail log.
#[derive(Clone)]
pub struct SledRunDetailLog {
    db: sled::Db,
    /// Appends are checked and written one at a time.
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for SledRunDetailLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledRunDetailLog").finish_non_exhaustive()
    }
}

fn run_prefix(sync_id: SyncId) -> Vec<u8> {
    let mut key = Vec::with_capacity(25);
    key.push(b'R');
    key.extend_from_slice(sync_id.0.as_bytes());
    key
}

fn event_key(sync_id: SyncId, version: u64) -> Vec<u8> {
    let mut key = run_prefix(sync_id);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn time_key(at: u64, sync_id: SyncId) -> Vec<u8> {
    let mut key = Vec::with_capacity(25);
    key.push(b'T');
    key.extend_from_slice(&at.to_be_bytes());
    key.extend_from_slice(sync_id.0.as_bytes());
    key
}

fn last_key(sync_id: SyncId) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(b'L');
    key.extend_from_slice(sync_id.0.as_bytes());
    key
}

fn micros(at: Timestamp) -> u64 {
    u64::try_from(at.unix_micros()).unwrap_or(0)
}

fn decode(bytes: &[u8]) -> Result<RecordedEvent, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        position: 0,
        reason: format!("a run-detail event does not decode: {error}"),
    })
}

impl SledRunDetailLog {
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, StoreError> {
        // Detail is written once and read back rarely (a resumed run, an audit): a small
        // cache. Every append flushes itself.
        let db = sled::Config::new()
            .path(path.as_ref())
            .cache_capacity(4 * 1024 * 1024)
            .flush_every_ms(None)
            .open()?;
        Ok(Self {
            db,
            writer: Arc::default(),
        })
    }

    /// Rewrites the data of run `sync_id`'s event at `version` with `edit` applied, behind
    /// the chain's back. For tamper-detection tests and incident drills; never called by the
    /// service.
    pub fn tamper(
        &self,
        sync_id: SyncId,
        version: u64,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<(), StoreError> {
        let key = event_key(sync_id, version);
        let bytes = self.db.get(&key)?.ok_or_else(|| StoreError::Corrupt {
            position: version,
            reason: "no such run-detail event".into(),
        })?;
        let mut event = decode(&bytes)?;
        let mut data = event.data()?;
        edit(&mut data);
        event.data_json = crate::chain::canonical_data(&data)?;
        let bytes = serde_json::to_vec(&event)
            .map_err(|error| StoreError::storage_from("encoding run detail", error))?;
        self.db.insert(key, bytes)?;
        self.db.flush()?;
        Ok(())
    }

    fn tip(&self, sync_id: SyncId) -> Result<DetailTip, StoreError> {
        match self.db.scan_prefix(run_prefix(sync_id)).next_back() {
            None => Ok(DetailTip::EMPTY),
            Some(entry) => {
                let (_, value) = entry?;
                Ok(DetailTip::after(&decode(&value)?))
            }
        }
    }

    /// Writes `events` of run `sync_id` and moves its place among the runs by age.
    async fn write(&self, sync_id: SyncId, events: &[RecordedEvent]) -> Result<(), StoreError> {
        let at = events
            .iter()
            .map(|event| micros(event.metadata.occurred_at))
            .max()
            .unwrap_or(0);
        let mut batch = sled::Batch::default();
        for event in events {
            let bytes = serde_json::to_vec(event)
                .map_err(|error| StoreError::storage_from("encoding run detail", error))?;
            batch.insert(event_key(sync_id, event.version), bytes);
        }
        if let Some(before) = self.db.get(last_key(sync_id))? {
            if let Ok(before) = <[u8; 8]>::try_from(before.as_ref()) {
                batch.remove(time_key(u64::from_be_bytes(before), sync_id));
            }
        }
        batch.insert(time_key(at, sync_id), &[][..]);
        batch.insert(last_key(sync_id), &at.to_be_bytes()[..]);
        self.db.apply_batch(batch)?;
        self.db.flush_async().await?;
        Ok(())
    }
}

#[async_trait]
impl RunDetailLog for SledRunDetailLog {
    async fn append(
        &self,
        sync_id: SyncId,
        after: DetailTip,
        events: Vec<NewEvent>,
    ) -> Result<DetailTip, StoreError> {
        let _writing = self.writer.lock().await;
        let tip = self.tip(sync_id)?;
        if !tip.same_end(&after) {
            return Err(conflict(sync_id, after, tip.version));
        }
        if events.is_empty() {
            return Ok(tip);
        }
        let (recorded, tip) = chain_after(sync_id, after, events, |version| version)?;
        self.write(sync_id, &recorded).await?;
        Ok(tip)
    }

    async fn read(&self, sync_id: SyncId) -> Result<Vec<RecordedEvent>, StoreError> {
        self.db
            .scan_prefix(run_prefix(sync_id))
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    async fn import(&self, sync_id: SyncId, events: Vec<RecordedEvent>) -> Result<(), StoreError> {
        let _writing = self.writer.lock().await;
        if events.is_empty() || self.tip(sync_id)?.version > 0 {
            return Ok(());
        }
        self.write(sync_id, &events).await
    }

    async fn expire(&self, cutoff: Timestamp) -> Result<u64, StoreError> {
        let cutoff = micros(cutoff);
        let mut removed = 0;
        loop {
            let _writing = self.writer.lock().await;
            let Some(entry) = self.db.scan_prefix([b'T']).next() else {
                break;
            };
            let (key, _) = entry?;
            let (Some(at), Some(id)) = (key.get(1..9), key.get(9..25)) else {
                return Err(StoreError::Corrupt {
                    position: 0,
                    reason: "a run-detail age key is cut short".into(),
                });
            };
            let at = u64::from_be_bytes(at.try_into().expect("eight bytes"));
            if at >= cutoff {
                break;
            }
            let sync_id = SyncId(uuid::Uuid::from_slice(id).map_err(|_| StoreError::Corrupt {
                position: 0,
                reason: "a run-detail age key names no run".into(),
            })?);
            let mut batch = sled::Batch::default();
            for entry in self.db.scan_prefix(run_prefix(sync_id)) {
                batch.remove(entry?.0);
            }
            batch.remove(key);
            batch.remove(last_key(sync_id));
            self.db.apply_batch(batch)?;
            removed += 1;
        }
        if removed > 0 {
            self.db.flush_async().await?;
        }
        Ok(removed)
    }
}
