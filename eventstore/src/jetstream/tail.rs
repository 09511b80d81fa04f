//! What this process knows of each stream's end (its tail) and of where its versions lie in
//! the log (marks), so that an append needs one round trip and a read starts near its version.

use super::reads::header_u64;
use super::*;

/// Marks kept per stream: every this many versions.
pub(super) const MARK_EVERY: u64 = 256;

/// What this process knows of a stream's end, so that an append needs one round trip.
#[derive(Clone, Debug)]
pub(super) struct Tail {
    pub(super) version: u64,
    /// The last sequence of any message on the stream's subjects (the one to expect).
    pub(super) last_seq: u64,
    pub(super) hash: ChainHash,
}

impl JetStreamEventStore {
    /// The last event of a stream (and the last sequence on its subjects), from the server.
    pub(super) async fn fetch_tail(&self, stream: &StreamName) -> Result<Option<Tail>, StoreError> {
        let filter = self.stream_filter(stream)?;
        #[derive(Serialize)]
        struct Request<'a> {
            last_by_subj: &'a str,
        }
        let body = serde_json::to_vec(&Request {
            last_by_subj: &filter,
        })
        .map_err(|error| StoreError::storage_from("encoding", error))?;
        let message = self
            .inner
            .client
            .request(
                format!("$JS.API.DIRECT.GET.{}", self.inner.stream),
                Bytes::from(body),
            )
            .await
            .map_err(|error| unavailable("reading a stream's end", error))?;
        if let Some(status) = message.status {
            if status.as_u16() == 404 {
                return Ok(None);
            }
            return Err(super::status_error(
                "reading a stream's end",
                status,
                message.description,
            ));
        }
        let seq = header_u64(&message, "Nats-Sequence")
            .ok_or_else(|| StoreError::storage("a direct get answered without Nats-Sequence"))?;
        let tail = match wire::decode(&message.payload, seq) {
            Ok(event) if event.stream == *stream => Tail {
                version: event.version,
                last_seq: seq,
                hash: event.hash,
            },
            _ => {
                // The last message is not one of ours (someone else published there): the
                // stream's end is its last readable event, and the sequence to expect is still
                // the foreign message's.
                tracing::warn!(%stream, seq, "skipping an undecodable message at the end of a stream");
                let events = self.read_stream(stream, 1, usize::MAX).await?;
                match events.last() {
                    Some(event) => Tail {
                        version: event.version,
                        last_seq: seq,
                        hash: event.hash,
                    },
                    None => Tail {
                        version: 0,
                        last_seq: seq,
                        hash: ChainHash::GENESIS,
                    },
                }
            }
        };
        Ok(Some(tail))
    }

    pub(super) fn cached_tail(&self, stream: &StreamName) -> Option<Tail> {
        self.inner
            .tails
            .lock()
            .expect("the tail cache lock is never poisoned")
            .get(stream)
            .cloned()
    }

    pub(super) fn remember_tail(&self, stream: &StreamName, tail: Tail) {
        let mut tails = self
            .inner
            .tails
            .lock()
            .expect("the tail cache lock is never poisoned");
        match tails.get(stream) {
            Some(known) if known.last_seq >= tail.last_seq => {}
            _ => {
                tails.insert(stream.clone(), tail);
            }
        }
    }

    pub(super) fn forget_tail(&self, stream: &StreamName) {
        self.inner
            .tails
            .lock()
            .expect("the tail cache lock is never poisoned")
            .remove(stream);
    }

    /// The highest version of `stream` this process knows it has: its own last append's, or
    /// one it was told of.
    pub(super) fn known_version(&self, stream: &StreamName) -> Option<u64> {
        let tail = self.cached_tail(stream).map(|tail| tail.version);
        let floor = self
            .inner
            .floors
            .lock()
            .expect("the floors lock is never poisoned")
            .get(stream)
            .copied();
        tail.max(floor)
    }

    pub(super) fn raise_floor(&self, stream: &StreamName, version: u64) {
        let mut floors = self
            .inner
            .floors
            .lock()
            .expect("the floors lock is never poisoned");
        let floor = floors.entry(stream.clone()).or_default();
        *floor = (*floor).max(version);
    }

    /// A read showed `stream` at `version` or later: a floor at or below it is met for good.
    pub(super) fn floor_reached(&self, stream: &StreamName, version: u64) {
        let mut floors = self
            .inner
            .floors
            .lock()
            .expect("the floors lock is never poisoned");
        if floors.get(stream).is_some_and(|floor| *floor <= version) {
            floors.remove(stream);
        }
    }

    pub(super) fn remember_mark(&self, stream: &StreamName, version: u64, seq: u64) {
        if !version.is_multiple_of(MARK_EVERY) {
            return;
        }
        self.inner
            .marks
            .lock()
            .expect("the marks lock is never poisoned")
            .entry(stream.clone())
            .or_default()
            .insert(version, seq);
    }

    /// The sequence to start reading `stream` at to find `version` and what follows.
    pub(super) fn start_for(&self, stream: &StreamName, version: u64) -> u64 {
        self.inner
            .marks
            .lock()
            .expect("the marks lock is never poisoned")
            .get(stream)
            .and_then(|marks| marks.range(..version).next_back())
            .map_or(1, |(_, seq)| seq + 1)
    }
}
