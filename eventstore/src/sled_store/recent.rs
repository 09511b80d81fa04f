//! Idempotency without a per-event index: the ids stored lately, in memory, and a coarse
//! time index to search the log for older ones (see ADR 007).
//!
//! An event id is a UUID v7: it carries the time it was made, and an event is stored after it
//! is made (give or take [`CLOCK_SKEW`]). So an id made after the oldest moment the recent ids
//! still cover can only have been stored since, and the recent ids answer for it exactly. An
//! older id (a retry after a restart, a copy of an old log resuming) is looked for in the log
//! itself, from the time index's position for its time on, and in the id index that logs
//! written before the time index kept.

use super::*;

/// How far an id's time may run ahead of the moment the log stores it.
pub(super) const CLOCK_SKEW_MS: u64 = 2_000;

/// `T ‖ second (u64 BE)` → the first position stored in that second (u64 BE), by the writer's
/// clock kept monotonic: at most one entry per second.
pub(super) const TIME: u8 = b'T';

/// Ids stored less than this long ago are always kept.
const KEEP_AT_LEAST_MS: u64 = 5_000;
/// Beyond that, no more than this many ids are kept…
const KEEP_AT_MOST_IDS: usize = 250_000;
/// …and none older than this.
const KEEP_AT_MOST_MS: u64 = 10 * 60 * 1000;

pub(super) fn time_key(second: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = TIME;
    key[1..].copy_from_slice(&second.to_be_bytes());
    key
}

/// What the recent ids know of an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Known {
    /// Stored at this position.
    Stored(u64),
    /// Certainly not stored.
    New,
    /// Made before what the recent ids cover: the log must be searched.
    Unknown,
}

/// The ids stored lately and where, with the moment from which they are complete.
#[derive(Debug)]
pub(super) struct RecentIds {
    positions: FastMap<EventId, u64>,
    /// Per group commit, oldest first: when it was stored (ms) and its ids.
    groups: VecDeque<(u64, Vec<EventId>)>,
    /// Every id stored at or after this moment (ms) is in `positions`…
    complete_since: u64,
    /// …as is every id stored at or after this position.
    complete_from: u64,
    /// The last moment handed out by [`RecentIds::now`], so time never runs backwards here.
    last_now: u64,
}

fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time an id was made (ms), if it is a UUID v7.
fn made_at(id: &EventId) -> Option<u64> {
    let (secs, nanos) = id.as_uuid().get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

impl RecentIds {
    /// Nothing stored yet as far as memory goes: complete from now.
    #[cfg(test)]
    pub(super) fn new() -> Self {
        let now = unix_ms(std::time::SystemTime::now());
        Self {
            positions: FastMap::default(),
            groups: VecDeque::new(),
            complete_since: now,
            complete_from: 1,
            last_now: now,
        }
    }

    /// The ids of `log` (up to `head`) stored in its last second or so before the clock skew
    /// reaches back from now: what an append made just before this process opened the log
    /// may have to be told apart from.
    pub(super) fn load(log: &sled::Tree, head: u64) -> Result<Self, StoreError> {
        let last_indexed = match log.scan_prefix([TIME]).next_back() {
            Some(entry) => read_u64(&entry?.0[1..], 0)?,
            None => 0,
        };
        let now = unix_ms(std::time::SystemTime::now()).max(last_indexed * 1000);
        let mut recent = Self {
            positions: FastMap::default(),
            groups: VecDeque::new(),
            complete_since: now,
            complete_from: head + 1,
            last_now: now,
        };
        let reach = time_key(now.saturating_sub(CLOCK_SKEW_MS) / 1000);
        let from = match log.range(time_key(0)..=reach).next_back() {
            Some(entry) => Some(entry?),
            None => log.scan_prefix([TIME]).next().transpose()?,
        };
        // No time index: an empty log, or one whose events all came before this version and
        // hence before now.
        let Some((second, position)) = from else {
            return Ok(recent);
        };
        let (second, first) = (read_u64(&second[1..], 0)?, read_u64(&position, 0)?);
        let mut reader = ChunkReader::new(log);
        let mut ids = Vec::new();
        for position in first..=head {
            let event = reader.indexed_event(position, "the time index")?;
            ids.push((event.id, position));
        }
        recent.complete_since = second * 1000;
        recent.complete_from = first;
        recent.committed(now, ids.into_iter());
        Ok(recent)
    }

    /// The writer's clock (ms), never going backwards.
    pub(super) fn now(&mut self) -> u64 {
        self.last_now = self.last_now.max(unix_ms(std::time::SystemTime::now()));
        self.last_now
    }

    pub(super) fn known(&self, id: &EventId) -> Known {
        if let Some(position) = self.positions.get(id) {
            return Known::Stored(*position);
        }
        match made_at(id) {
            Some(made) if made >= self.complete_since.saturating_add(CLOCK_SKEW_MS) => Known::New,
            _ => Known::Unknown,
        }
    }

    /// Notes a group committed at `now` (from [`RecentIds::now`]) and forgets what is too old.
    pub(super) fn committed(&mut self, now: u64, ids: impl Iterator<Item = (EventId, u64)>) {
        let mut group = Vec::new();
        for (id, position) in ids {
            self.positions.insert(id, position);
            group.push(id);
        }
        if !group.is_empty() {
            self.groups.push_back((now, group));
        }
        while let Some((stored, _)) = self.groups.front() {
            let age = now.saturating_sub(*stored);
            let forget = age > KEEP_AT_MOST_MS
                || (age > KEEP_AT_LEAST_MS && self.positions.len() > KEEP_AT_MOST_IDS);
            if !forget {
                break;
            }
            let (stored, ids) = self.groups.pop_front().expect("front exists");
            for id in ids {
                if let Some(position) = self.positions.remove(&id) {
                    self.complete_from = self.complete_from.max(position + 1);
                }
            }
            // Ids stored after this group are all still here.
            self.complete_since = self.complete_since.max(stored + 1);
        }
    }

    /// The first position from which every stored id is known here: a search of the log for
    /// older ids ends before it.
    pub(super) fn complete_from(&self) -> u64 {
        self.complete_from
    }

    /// The earliest moment (ms) a stored copy of `id` can have been stored; 0 if unknown.
    pub(super) fn earliest_store(id: &EventId) -> u64 {
        made_at(id).map_or(0, |made| made.saturating_sub(CLOCK_SKEW_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_since_the_complete_moment_are_answered_from_memory_and_older_ones_are_not() {
        let mut recent = RecentIds::new();
        let now = recent.now();
        let stored = EventId::new();
        recent.committed(now, [(stored, 7)].into_iter());
        assert_eq!(recent.known(&stored), Known::Stored(7));
        // Made after the moment memory is complete from, plus the skew: certainly new.
        let later = EventId(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (now + CLOCK_SKEW_MS + 1000) / 1000,
            0,
        )));
        assert_eq!(recent.known(&later), Known::New);
        // Made before the store opened: it might be in the log.
        let old = EventId(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            now / 1000 - 3600,
            0,
        )));
        assert_eq!(recent.known(&old), Known::Unknown);
        // Not a UUID v7: no time to go by.
        assert_eq!(
            recent.known(&EventId(uuid::Uuid::from_u128(42))),
            Known::Unknown
        );
    }

    #[test]
    fn forgetting_a_group_moves_the_complete_moment_past_it() {
        let mut recent = RecentIds::new();
        let start = recent.now();
        let old = EventId::new();
        recent.committed(start, [(old, 1)].into_iter());
        // Ten minutes and more later, the old group goes.
        let later = start + KEEP_AT_MOST_MS + 1;
        recent.committed(later, [(EventId::new(), 2)].into_iter());
        assert_eq!(recent.known(&old), Known::Unknown);
        assert!(recent.complete_since > start);
    }
}
