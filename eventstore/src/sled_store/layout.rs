//! The log's layout on disk: the three key spaces, chunks of records, and decoding them.

use super::*;

pub(super) const EVENT: u8 = b'E';

pub(super) const STREAM: u8 = b'S';

/// `I ‖ event id` → position: the id index of logs written before the time index (read only).
pub(super) const ID: u8 = b'I';
/// `W ‖ workspace ‖ 0x00 ‖ first position (u64 BE)` → count (u32 BE): a run of consecutive
/// positions holding the workspace's events.
pub(super) const WORKSPACE: u8 = b'W';
/// Present once every event of the log is in the workspace index.
pub(super) const WORKSPACE_INDEXED: &[u8] = b"Mworkspace-index";
/// The stream index holds every event at or before this position (u64 BE); the appends after
/// it are in the writer's window, and are read back from the log into it at open (ADR 008).
pub(super) const STREAM_INDEXED_THROUGH: &[u8] = b"Mstream-index-through";

/// The most events one chunk holds.
pub(super) const CHUNK_EVENTS: usize = 256;

/// A chunk is closed once it holds this many bytes. Sled writes a page larger than a quarter
/// of a segment as a separate blob file, and a leaf page holds up to 16 entries, so chunks
/// stay small enough that a full leaf of them is well under that (see `SEGMENT_BYTES`).
pub(super) const CHUNK_BYTES: usize = 16 * 1024;

/// The part of a record that follows the fixed header (version, hash).
#[derive(Serialize, Deserialize)]
pub(super) struct StoredBody {
    pub(super) id: EventId,
    pub(super) stream: StreamName,
    pub(super) event_type: String,
    pub(super) schema: u32,
    pub(super) data: String,
    pub(super) metadata: Metadata,
}

pub(super) const HEADER: usize = 8 + 32;

/// Chunk encoding: `count (u32 LE)`, `count` record lengths (u32 LE), then the records.
pub(super) mod chunk {
    pub(in crate::sled_store) fn encode(records: &[Vec<u8>]) -> Vec<u8> {
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
    pub(in crate::sled_store) fn ranges(bytes: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
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
    pub(in crate::sled_store) fn records(bytes: &[u8]) -> Option<Vec<&[u8]>> {
        Some(
            ranges(bytes)?
                .into_iter()
                .map(|range| &bytes[range])
                .collect(),
        )
    }

    pub(in crate::sled_store) fn count(bytes: &[u8]) -> Option<u64> {
        Some(u64::from(u32::from_le_bytes(
            bytes.get(..4)?.try_into().ok()?,
        )))
    }
}

pub(super) fn event_key(position: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = EVENT;
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

/// `tag ‖ name ‖ 0x00`: where the entries of one stream (or workspace) begin; names never
/// contain 0x00, so one name's entries form one contiguous range.
fn named_prefix(tag: u8, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 10);
    key.push(tag);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

/// `prefix ‖ n (u64 BE)`: an entry of a stream (from its version) or of a workspace (from its
/// position).
pub(super) fn entry_key(prefix: &[u8], n: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

pub(super) fn stream_prefix(stream: &StreamName) -> Vec<u8> {
    named_prefix(STREAM, stream.as_str())
}

pub(super) fn id_key(id: &EventId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = ID;
    key[1..].copy_from_slice(id.as_uuid().as_bytes());
    key
}

pub(super) fn read_u64(bytes: &[u8], position_hint: u64) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt {
            position: position_hint,
            reason: "index entry is too short".into(),
        })?;
    Ok(u64::from_be_bytes(array))
}

/// A run of a stream's events: `count` versions from `first_version` at as many consecutive
/// positions from `first_position`. An entry of the stream index holds one run or several
/// (a window's, ADR 008): `S ‖ stream ‖ 0x00 ‖ first version` → `(first position u64 BE,
/// count u32 BE)` per run, the versions of each run following the previous one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StreamRun {
    pub(super) first_version: u64,
    pub(super) first_position: u64,
    pub(super) count: u64,
}

/// The bytes of one run in an index entry.
const RUN_BYTES: usize = 12;

impl StreamRun {
    /// An index entry's value for `runs`, consecutive versions of one stream.
    pub(super) fn encode_all(runs: &[StreamRun]) -> Vec<u8> {
        let mut value = Vec::with_capacity(runs.len() * RUN_BYTES);
        for run in runs {
            value.extend_from_slice(&run.first_position.to_be_bytes());
            value.extend_from_slice(&(run.count as u32).to_be_bytes());
        }
        value
    }

    /// The runs of one index entry.
    pub(super) fn decode_all(
        prefix_len: usize,
        key: &[u8],
        value: &[u8],
    ) -> Result<Vec<Self>, StoreError> {
        let mut version = read_u64(&key[prefix_len..], 0)?;
        if value.is_empty() || !value.len().is_multiple_of(RUN_BYTES) {
            return Err(StoreError::Corrupt {
                position: 0,
                reason: format!(
                    "a stream index entry of {} bytes is not a list of runs",
                    value.len()
                ),
            });
        }
        let mut runs = Vec::with_capacity(value.len() / RUN_BYTES);
        for run in value.chunks_exact(RUN_BYTES) {
            let first_position = read_u64(run, 0)?;
            let count = u64::from(u32::from_be_bytes(
                run[8..].try_into().expect("a run is twelve bytes"),
            ));
            if count == 0 {
                return Err(StoreError::Corrupt {
                    position: first_position,
                    reason: "a stream index entry holds an empty run".into(),
                });
            }
            runs.push(Self {
                first_version: version,
                first_position,
                count,
            });
            version += count;
        }
        Ok(runs)
    }

    pub(super) fn last_version(&self) -> u64 {
        self.first_version + self.count - 1
    }

    pub(super) fn last_position(&self) -> u64 {
        self.first_position + self.count - 1
    }

    /// The last version of this run stored at or before `head`, if any.
    pub(super) fn last_version_through(&self, head: u64) -> Option<u64> {
        (self.first_position <= head)
            .then(|| self.first_version + (self.count - 1).min(head - self.first_position))
    }

    /// Adds `next` to `runs`, extending the last run when `next` continues it in both
    /// version and position.
    pub(super) fn push(runs: &mut Vec<StreamRun>, next: StreamRun) {
        if let Some(last) = runs.last_mut() {
            if last.last_version() + 1 == next.first_version
                && last.last_position() + 1 == next.first_position
                && last.count + next.count <= u64::from(u32::MAX)
            {
                last.count += next.count;
                return;
            }
        }
        runs.push(next);
    }
}

pub(super) fn decode(position: u64, bytes: &[u8]) -> Result<RecordedEvent, StoreError> {
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
pub(super) struct ChunkReader<'a> {
    log: &'a sled::Tree,
    /// The chunk's first position, its bytes, and where each of its records lies.
    current: Option<(u64, sled::IVec, Vec<std::ops::Range<usize>>)>,
}

impl<'a> ChunkReader<'a> {
    pub(super) fn new(log: &'a sled::Tree) -> Self {
        Self { log, current: None }
    }

    /// The raw record at `position`, if stored.
    pub(super) fn record(&mut self, position: u64) -> Result<Option<&[u8]>, StoreError> {
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

    /// The event at `position`, which `what` (an index) says is stored: its absence is
    /// corruption.
    pub(super) fn indexed_event(
        &mut self,
        position: u64,
        what: &str,
    ) -> Result<RecordedEvent, StoreError> {
        self.event(position)?.ok_or_else(|| StoreError::Corrupt {
            position,
            reason: format!("{what} points to a missing event"),
        })
    }

    pub(super) fn event(&mut self, position: u64) -> Result<Option<RecordedEvent>, StoreError> {
        match self.record(position)? {
            Some(record) => decode(position, record).map(Some),
            None => Ok(None),
        }
    }
}

pub(super) fn workspace_prefix(workspace: &str) -> Vec<u8> {
    named_prefix(WORKSPACE, workspace)
}

/// Runs of consecutive positions by workspace, as the workspace index keeps them.
#[derive(Debug, Default)]
pub(super) struct WorkspaceRuns {
    runs: Vec<(String, u64, u32)>,
}

impl WorkspaceRuns {
    /// The event at `position` belongs to `workspace`.
    pub(super) fn add(&mut self, workspace: &str, position: u64) {
        if let Some((last, first, count)) = self.runs.last_mut() {
            if last == workspace && *first + u64::from(*count) == position {
                *count += 1;
                return;
            }
        }
        self.runs.push((workspace.to_owned(), position, 1));
    }

    /// The index entries for these runs.
    pub(super) fn write_to(&self, batch: &mut sled::Batch) {
        for (workspace, first, count) in &self.runs {
            batch.insert(
                entry_key(&workspace_prefix(workspace), *first),
                &count.to_be_bytes(),
            );
        }
    }
}
