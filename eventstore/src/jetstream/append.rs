//! Appending: one atomic batch per command, checked against the stream's last sequence, and
//! a retry past the duplicate window answered from the log instead of stored twice.

use super::*;

/// A JetStream API answer to a publish.
#[derive(Debug, Deserialize)]
pub(super) struct PubAck {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ApiError {
    /// The HTTP-like status of the error: 503 while the stream has no leader.
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// JetStream error codes the log acts on.
mod codes {
    /// `Nats-Expected-Last-Subject-Sequence` did not hold.
    pub(super) const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// The same, as a clustered stream's leader words it (without the sequence it holds).
    pub(super) const WRONG_LAST_SEQUENCE_CONSTANT: u64 = 10164;
    /// A re-sent atomic batch: one of its message ids is already stored.
    pub(super) const BATCH_DUPLICATE_MSG_ID: u64 = 10201;
    /// The server holds only part of a batch (the rest went to a connection that dropped, or
    /// the batch timed out); nothing of it is stored.
    pub(super) const BATCH_INCOMPLETE: u64 = 10176;
    /// Too many batches in flight on the server right now.
    pub(super) const BATCH_TOO_MANY_INFLIGHT: u64 = 10211;
    /// The JetStream system is between leaders ("temporarily unavailable").
    pub(super) const CLUSTER_NOT_AVAILABLE: u64 = 10008;
    /// The server asked cannot handle the request now ("cluster can not handle request").
    pub(super) const CLUSTER_NOT_LEADER: u64 = 10009;
    /// The stream's replicas are not in contact ("stream is offline").
    pub(super) const STREAM_OFFLINE: u64 = 10118;
}

pub(super) enum Published {
    Stored { last_seq: u64 },
    Duplicate { seq: u64 },
    WrongLastSequence,
    BatchHasStoredIds,
}

/// How far the server's clock may be behind the clock that minted an event id.
pub(super) const CLOCK_SKEW: Duration = Duration::from_secs(10);

/// A single append retries internally (for `Any`, or after a stale cached tail) this often.
pub(super) const MAX_ATTEMPTS: usize = 16;

impl JetStreamEventStore {
    /// [`EventStore::append`]: one atomic batch, checked against the stream's last sequence.
    pub(super) async fn append_events(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend);
        }
        let filter = self.stream_filter(stream)?;
        // Everything that does not depend on the stream's end, computed once.
        let parts = crate::chain::canonical_batch(stream, &events)?;
        let subjects = events
            .iter()
            .map(|event| self.subject_for(stream, &event.event_type, &event.metadata))
            .collect::<Result<Vec<_>, _>>()?;
        if events.len() > 1
            && events
                .iter()
                .map(|e| e.id)
                .collect::<HashSet<EventId>>()
                .len()
                != events.len()
        {
            return Err(StoreError::InvalidData(
                "a batch repeats an event id".into(),
            ));
        }
        // Ids older than the duplicate window may be a retry the server no longer recognizes.
        let window_start = std::time::SystemTime::now()
            .checked_sub(
                self.inner
                    .config
                    .duplicate_window
                    .saturating_sub(CLOCK_SKEW),
            )
            .unwrap_or(std::time::UNIX_EPOCH);
        let old = events.iter().any(|event| {
            event.id.0.get_timestamp().is_none_or(|ts| {
                let (secs, nanos) = ts.to_unix();
                std::time::UNIX_EPOCH + Duration::new(secs, nanos) < window_start
            })
        });
        if old {
            if let Some(result) = self.original_result(stream, &events).await? {
                return Ok(result);
            }
        }

        let mut fresh = false;
        for _ in 0..MAX_ATTEMPTS {
            let tail = match self.cached_tail(stream) {
                Some(tail) if !fresh => Some(tail),
                _ => {
                    fresh = true;
                    let tail = self.fetch_tail(stream).await?;
                    if let Some(tail) = &tail {
                        self.remember_tail(stream, tail.clone());
                    }
                    tail
                }
            };
            let actual = tail.as_ref().map(|t| t.version).filter(|v| *v > 0);
            if let Err(conflict) = expected.check(stream, actual) {
                if !fresh {
                    fresh = true;
                    continue;
                }
                return match self.original_result(stream, &events).await? {
                    Some(result) => Ok(result),
                    None => Err(conflict),
                };
            }
            let (mut version, last_seq, mut hash) =
                tail.as_ref().map_or((0, 0, ChainHash::GENESIS), |t| {
                    (t.version, t.last_seq, t.hash)
                });
            let first_version = version + 1;
            // Each message is built right before it is sent, so the server stores the first
            // ones of a batch while the rest are being encoded.
            let mut chain = (version, hash);
            let build = |index: usize| -> Result<(String, HeaderMap, Bytes), StoreError> {
                let (event, parts) = (&events[index], &parts[index]);
                chain.0 += 1;
                chain.1 = link_parts(&chain.1, &parts.prefix, chain.0);
                let body = wire::encode(EventParts {
                    id: &event.id,
                    stream,
                    version: chain.0,
                    event_type: &event.event_type,
                    schema: event.schema,
                    canonical_data: &parts.data,
                    metadata: &event.metadata,
                    hash: &chain.1,
                })?;
                let mut headers = HeaderMap::new();
                let id = event.id.to_string();
                headers.insert("Nats-Msg-Id", id.as_str());
                headers.insert(wire::HEADER_EVENT_ID, id.as_str());
                headers.insert(wire::HEADER_EVENT_TYPE, event.event_type.as_str());
                headers.insert(wire::HEADER_EVENT_SCHEMA, event.schema.to_string().as_str());
                headers.insert("Content-Type", wire::CONTENT_TYPE);
                if index == 0 {
                    headers.insert(
                        "Nats-Expected-Last-Subject-Sequence",
                        last_seq.to_string().as_str(),
                    );
                    headers.insert(
                        "Nats-Expected-Last-Subject-Sequence-Subject",
                        filter.as_str(),
                    );
                }
                Ok((subjects[index].clone(), headers, Bytes::from(body)))
            };
            let outcome = self.publish(events.len(), build).await;
            (version, hash) = chain;
            match outcome {
                Ok(Published::Stored { last_seq }) => {
                    let count = events.len() as u64;
                    let first_position = last_seq + 1 - count;
                    self.remember_tail(
                        stream,
                        Tail {
                            version,
                            last_seq,
                            hash,
                        },
                    );
                    for (offset, v) in (first_version..=version).enumerate() {
                        self.remember_mark(stream, v, first_position + offset as u64);
                    }
                    return Ok(AppendResult {
                        first_version,
                        last_version: version,
                        first_position,
                        last_position: last_seq,
                    });
                }
                Ok(Published::Duplicate { seq }) => {
                    // A single event the server already has: answer with the stored one.
                    let stored = self.event_at(seq).await?.ok_or_else(|| {
                        StoreError::storage(format!("duplicate of sequence {seq}, not readable"))
                    })?;
                    if stored.stream != *stream || stored.id != events[0].id {
                        return Err(StoreError::IdempotencyMismatch { id: events[0].id });
                    }
                    return Ok(AppendResult {
                        first_version: stored.version,
                        last_version: stored.version,
                        first_position: seq,
                        last_position: seq,
                    });
                }
                Ok(Published::BatchHasStoredIds) => {
                    return match self.original_result(stream, &events).await? {
                        Some(result) => Ok(result),
                        None => Err(StoreError::storage(
                            "JetStream called the batch a duplicate, but none of its ids is stored",
                        )),
                    };
                }
                Ok(Published::WrongLastSequence) => {
                    // Someone else appended: look again. `Any` simply retries; an exact
                    // expectation is checked against the fresh end above.
                    self.forget_tail(stream);
                    fresh = false;
                    if matches!(expected, ExpectedVersion::Any) {
                        continue;
                    }
                    let tail = self.fetch_tail(stream).await?;
                    if let Some(tail) = &tail {
                        self.remember_tail(stream, tail.clone());
                    }
                    fresh = true;
                    let actual = tail.as_ref().map(|t| t.version).filter(|v| *v > 0);
                    if let Err(conflict) = expected.check(stream, actual) {
                        return match self.original_result(stream, &events).await? {
                            Some(result) => Ok(result),
                            None => Err(conflict),
                        };
                    }
                }
                Err(error) => {
                    self.forget_tail(stream);
                    return Err(error);
                }
            }
        }
        Err(StoreError::unavailable(format!(
            "{stream} kept moving: no append after {MAX_ATTEMPTS} attempts"
        )))
    }

    /// Sends `count` messages made by `build`: one publish, or an atomic batch. A message that
    /// cannot be built stops the batch before its commit, so the server stores none of it.
    pub(super) async fn publish(
        &self,
        count: usize,
        mut build: impl FnMut(usize) -> Result<(String, HeaderMap, Bytes), StoreError>,
    ) -> Result<Published, StoreError> {
        let client = &self.inner.client;
        let batch_id = (count > 1).then(|| uuid::Uuid::now_v7().simple().to_string());
        let mut reply = None;
        for index in 0..count {
            let (subject, mut headers, body) = build(index)?;
            if let Some(batch_id) = &batch_id {
                headers.insert("Nats-Batch-Id", batch_id.as_str());
                headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
            }
            if index + 1 < count {
                client
                    .publish_with_headers(subject, headers, body)
                    .await
                    .map_err(|error| unavailable("publishing an event", error))?;
            } else {
                if batch_id.is_some() {
                    headers.insert("Nats-Batch-Commit", "1");
                }
                reply = Some(
                    client
                        .request_with_headers(subject, headers, body)
                        .await
                        .map_err(|error| match error.kind() {
                            async_nats::RequestErrorKind::NoResponders => StoreError::unavailable(
                                format!("no JetStream stream {} answers", self.inner.stream),
                            ),
                            _ => unavailable("appending events", error),
                        })?,
                );
            }
        }
        let reply = reply.expect("an append has at least one event");
        if let Some(status) = reply.status {
            // A status instead of an acknowledgement (503: the stream is not there right now,
            // as while a server restarts): nothing was stored.
            return Err(StoreError::unavailable(format!(
                "JetStream answered the append with status {status}"
            )));
        }
        let ack: PubAck = serde_json::from_slice(&reply.payload).map_err(|error| {
            StoreError::unavailable(format!(
                "an append was answered without an acknowledgement: {error}"
            ))
        })?;
        if let Some(error) = ack.error {
            return match error.err_code {
                codes::WRONG_LAST_SEQUENCE | codes::WRONG_LAST_SEQUENCE_CONSTANT => {
                    Ok(Published::WrongLastSequence)
                }
                codes::BATCH_DUPLICATE_MSG_ID => Ok(Published::BatchHasStoredIds),
                // Nothing was stored: the same append may be tried again.
                codes::BATCH_INCOMPLETE
                | codes::BATCH_TOO_MANY_INFLIGHT
                | codes::CLUSTER_NOT_AVAILABLE
                | codes::CLUSTER_NOT_LEADER
                | codes::STREAM_OFFLINE => Err(StoreError::unavailable(format!(
                    "JetStream did not take the batch, nothing was stored: {} (error {})",
                    error.description, error.err_code
                ))),
                _ if error.code == 503 => Err(StoreError::unavailable(format!(
                    "JetStream cannot take the append now: {} (error {})",
                    error.description, error.err_code
                ))),
                code => Err(StoreError::storage(format!(
                    "JetStream refused the append: {} (error {code})",
                    error.description
                ))),
            };
        }
        if ack.duplicate {
            return Ok(Published::Duplicate { seq: ack.seq });
        }
        if let Some(stored) = ack.count {
            if stored != count as u64 {
                return Err(StoreError::storage(format!(
                    "JetStream stored {stored} of a batch of {count}"
                )));
            }
        }
        Ok(Published::Stored { last_seq: ack.seq })
    }

    /// The stored events with these ids, looked up in the log from the ids' time on.
    pub(super) async fn find_stored(
        &self,
        ids: &[EventId],
    ) -> Result<HashMap<EventId, RecordedEvent>, StoreError> {
        let wanted: HashSet<EventId> = ids.iter().copied().collect();
        let oldest = ids
            .iter()
            .filter_map(|id| id.0.get_timestamp())
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                time::OffsetDateTime::UNIX_EPOCH + time::Duration::new(secs as i64, nanos as i32)
            })
            .min()
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            - CLOCK_SKEW;
        let filter = self.inner.config.events_subjects();
        let mut found = HashMap::new();
        let mut from: Option<u64> = None;
        const PAGE: usize = 1024;
        loop {
            let page = if let Some(seq) = from {
                self.direct_batch(Some(seq), None, &filter, PAGE).await?
            } else {
                self.direct_batch(None, Some(oldest), &filter, PAGE).await?
            };
            let len = page.len();
            for (seq, event) in page {
                from = Some(seq + 1);
                if let Ok(event) = event {
                    if wanted.contains(&event.id) {
                        found.insert(event.id, event);
                    }
                }
            }
            if found.len() == wanted.len() || len < PAGE {
                return Ok(found);
            }
        }
    }

    /// The original result of a batch whose ids may already be stored: `Some` if every one is,
    /// as one batch of `stream`; `None` if none is; a mismatch otherwise.
    pub(super) async fn original_result(
        &self,
        stream: &StreamName,
        events: &[NewEvent],
    ) -> Result<Option<AppendResult>, StoreError> {
        let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
        let found = self.find_stored(&ids).await?;
        if found.is_empty() {
            return Ok(None);
        }
        let stored: Option<Vec<&RecordedEvent>> = ids.iter().map(|id| found.get(id)).collect();
        let first_found = ids
            .iter()
            .find(|id| found.contains_key(id))
            .copied()
            .expect("found is not empty");
        let Some(stored) = stored else {
            return Err(StoreError::IdempotencyMismatch { id: first_found });
        };
        let one_batch = stored.iter().all(|e| e.stream == *stream)
            && stored
                .windows(2)
                .all(|w| w[1].version == w[0].version + 1 && w[1].position == w[0].position + 1);
        if !one_batch {
            return Err(StoreError::IdempotencyMismatch { id: first_found });
        }
        let (first, last) = (stored[0], stored[stored.len() - 1]);
        Ok(Some(AppendResult {
            first_version: first.version,
            last_version: last.version,
            first_position: first.position,
            last_position: last.position,
        }))
    }
}
