//! Reading messages back: batched direct gets (server 2.11+) and single events by sequence.

use super::*;

impl JetStreamEventStore {
    /// Up to `batch` events from sequence `from` (or from `start_time`) on `filter`.
    /// Undecodable messages come back as errors in place.
    pub(super) async fn direct_batch(
        &self,
        from: Option<u64>,
        start_time: Option<time::OffsetDateTime>,
        filter: &str,
        batch: usize,
    ) -> Result<Vec<(u64, Result<RecordedEvent, StoreError>)>, StoreError> {
        let raw = direct_batch(
            &self.inner.client,
            &self.inner.stream,
            self.inner.config.request_timeout,
            DirectBatch {
                from,
                start_time,
                filter,
                batch,
            },
        )
        .await?;
        Ok(raw
            .into_iter()
            .map(|(seq, payload)| (seq, wire::decode(&payload, seq)))
            .collect())
    }

    /// Up to `limit` events on `filter` from sequence `from_position`, in order; undecodable
    /// messages are skipped with a warning.
    pub(super) async fn read_filtered(
        &self,
        filter: &str,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        const PAGE: usize = 1024;
        let mut seq = from_position.max(1);
        let mut out = Vec::new();
        while out.len() < limit {
            let want = (limit - out.len()).min(PAGE);
            let page = self.direct_batch(Some(seq), None, filter, want).await?;
            let len = page.len();
            for (at, event) in page {
                seq = at + 1;
                match event {
                    Ok(event) => out.push(event),
                    Err(error) => tracing::warn!(%error, "skipping an undecodable message"),
                }
            }
            if len < want {
                break;
            }
        }
        Ok(out)
    }

    /// [`EventStore::read_stream`] as the replica answering it has the stream.
    pub(super) async fn read_stream_once(
        &self,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        const PAGE: usize = 1024;
        let filter = self.stream_filter(stream)?;
        let from_version = from_version.max(1);
        let mut seq = self.start_for(stream, from_version);
        let mut out = Vec::new();
        while out.len() < limit {
            let page = self.direct_batch(Some(seq), None, &filter, PAGE).await?;
            let len = page.len();
            for (at, event) in page {
                seq = at + 1;
                match event {
                    Ok(event) if event.stream == *stream => {
                        self.remember_mark(stream, event.version, at);
                        if event.version >= from_version && out.len() < limit {
                            out.push(event);
                        }
                    }
                    Ok(event) => tracing::warn!(
                        %stream, position = at, other = %event.stream,
                        "skipping an event of another stream on this stream's subject"
                    ),
                    Err(error) => {
                        tracing::warn!(%stream, %error, "skipping an undecodable message")
                    }
                }
            }
            if len < PAGE {
                break;
            }
        }
        Ok(out)
    }

    /// Reads one stored message by sequence.
    pub(super) async fn event_at(&self, seq: u64) -> Result<Option<RecordedEvent>, StoreError> {
        let page = self
            .direct_batch(Some(seq), None, &self.inner.config.events_subjects(), 1)
            .await?;
        Ok(page
            .into_iter()
            .find(|(s, _)| *s == seq)
            .and_then(|(_, event)| event.ok()))
    }
}

/// What a batched direct get asks for: up to `batch` messages on `filter` from sequence
/// `from`, or from `start_time`.
pub(crate) struct DirectBatch<'a> {
    pub(crate) from: Option<u64>,
    pub(crate) start_time: Option<time::OffsetDateTime>,
    pub(crate) filter: &'a str,
    pub(crate) batch: usize,
}

/// The messages a batched direct get (server 2.11+) returns from `stream`: (sequence,
/// payload), in order, in one request.
pub(crate) async fn direct_batch(
    client: &async_nats::Client,
    stream: &str,
    timeout: Duration,
    ask: DirectBatch<'_>,
) -> Result<Vec<(u64, Bytes)>, StoreError> {
    #[derive(Serialize)]
    struct Request<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(
            skip_serializing_if = "Option::is_none",
            with = "time::serde::rfc3339::option"
        )]
        start_time: Option<time::OffsetDateTime>,
        next_by_subj: &'a str,
        batch: usize,
    }
    let request = serde_json::to_vec(&Request {
        seq: ask.from,
        start_time: ask.start_time,
        next_by_subj: ask.filter,
        batch: ask.batch,
    })
    .map_err(|error| StoreError::storage_from("encoding", error))?;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|error| unavailable("subscribing for a read", error))?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            Bytes::from(request),
        )
        .await
        .map_err(|error| unavailable("requesting a read", error))?;
    let mut out = Vec::with_capacity(ask.batch.min(1024));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let message = tokio::time::timeout_at(deadline, replies.next())
            .await
            .map_err(|_| {
                StoreError::unavailable("reading the log timed out; the server may be away")
            })?
            .ok_or_else(|| StoreError::unavailable("the connection closed mid-read"))?;
        if let Some(status) = message.status {
            // 404: nothing (more) to read; 204 EOB: the end of the batch.
            if status.as_u16() == 404 || status.as_u16() == 204 {
                break;
            }
            return Err(super::status_error(
                "reading the log",
                status,
                message.description,
            ));
        }
        let Some(seq) = header_u64(&message, "Nats-Sequence") else {
            // An empty message without a sequence ends the batch.
            break;
        };
        out.push((seq, message.payload));
        if out.len() >= ask.batch {
            break;
        }
    }
    let _ = replies.unsubscribe().await;
    Ok(out)
}

pub(super) fn header_u64(message: &Message, name: &str) -> Option<u64> {
    message
        .headers
        .as_ref()?
        .get(name)
        .and_then(|value| value.as_str().parse().ok())
}
